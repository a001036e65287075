"""The durable store-and-forward queue between sources and delivery.

Per destination an item moves queued -> inflight (leased until a deadline) -> delivered, or
-> dead with the reason; a transient failure puts it back to queued with a later next attempt.
The outbox stores opaque payloads (the canonical reading JSON) and knows nothing of FHIR.
SQLite (`phg.outbox.sqlite`) is the embedded default.
"""

from phg.outbox.sqlite import DEAD, DELIVERED, INFLIGHT, QUEUED, STATES, Item, Outbox

__all__ = ["DEAD", "DELIVERED", "INFLIGHT", "QUEUED", "STATES", "Item", "Outbox"]
