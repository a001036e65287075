"""The durable store-and-forward queue between sources and delivery.

Per destination an item moves queued -> inflight (leased until a deadline) -> delivered, or
-> dead with the reason; a transient failure puts it back to queued with a later next attempt.
The queue stores opaque payloads (the canonical reading JSON) and knows nothing of FHIR.
One interface (`Queue`, phg.outbox.queue), two engines: SQLite (`phg.outbox.sqlite.Outbox`), the
embedded default, and NATS JetStream (`phg.outbox.jetstream.JetStreamQueue`, hub mode, imported only
when configured: it needs the `hub` extra). `open_queue(config)` opens the configured one.
"""

from __future__ import annotations

from phg.outbox.sqlite import DEAD, DELIVERED, INFLIGHT, QUEUED, STATES, Item, Outbox

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from phg.config import Config
    from phg.outbox.queue import Queue

__all__ = ["DEAD", "DELIVERED", "INFLIGHT", "QUEUED", "STATES", "Item", "Outbox", "Queue", "open_queue"]


def __getattr__(name: str) -> type:
    """PEP 562: `Queue`, imported when first asked for (its Protocol imports typing, which queueing a reading
    with `phg send` does without: issue 16)."""
    if name != "Queue":
        raise AttributeError(f"module 'phg.outbox' has no attribute {name!r}")
    from phg.outbox.queue import Queue

    globals()["Queue"] = Queue
    return Queue


def open_queue(config: Config) -> Queue:
    """The queue `[queue] engine` names, open; use it as a context manager (`with open_queue(config) as q:`)
    or close() it. "sqlite": the outbox file of [outbox]; "jetstream": JetStream at [queue] servers
    (ConfigError when nats-py is not installed; StorageError when JetStream cannot be reached)."""
    if config.queue.engine == "jetstream":
        try:
            from phg.outbox.jetstream import JetStreamQueue
        except ImportError as exc:
            from phg.errors import ConfigError

            raise ConfigError(f"{config.queue.source}: [queue] engine = \"jetstream\" needs nats-py: "
                              f"pip install 'phg[hub]' ({exc})") from None
        return JetStreamQueue(config.queue)
    return Outbox(config.outbox_path, keep_delivered=config.keep_delivered)
