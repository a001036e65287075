"""Delivery: one worker per destination takes due batches from the outbox and sends them.

A destination (registry.py maps each type to its opener: fhir.open_fhir; hl7.Hl7Destination over an
MLLP, HTTP or SOAP exchange) is opened as an async context manager, turns a batch of readings into
requests and says, per reading, Delivered, Rejected or Deferred (outcome.py); or raises
TransientDeliveryError (retry the batch later; reached=False: the destination is down),
PermanentDeliveryError (the batch as a whole was refused: split it to find the reading at fault)
or AuthError (stop; the queue stays intact). The worker (worker.py) does the rest, the same for
every destination. tls.py is the one TLS policy of every client.
"""

from phg.delivery.outcome import Deferred, Delivered, Destination, Outcome, Rejected
from phg.delivery.worker import DeliveryWorker, Summary

__all__ = ["Deferred", "Delivered", "Destination", "DeliveryWorker", "Outcome", "Rejected", "Summary"]
