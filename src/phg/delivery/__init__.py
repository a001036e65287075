"""Delivery: one worker per destination takes due batches from the outbox and sends them.

A destination (fhir.FhirDestination; later MLLP/HTTP for HL7 v2) turns a batch of readings into one
request and says, per reading, Delivered or Rejected; or raises TransientDeliveryError (retry the
batch later), PermanentDeliveryError (the batch as a whole was refused: split it to find the reading
at fault) or AuthError (stop; the queue stays intact). The worker (worker.py) does the rest.
"""

from phg.delivery.outcome import Deferred, Delivered, Destination, Outcome, Rejected
from phg.delivery.worker import DeliveryWorker, Summary

__all__ = ["Deferred", "Delivered", "Destination", "DeliveryWorker", "Outcome", "Rejected", "Summary"]
