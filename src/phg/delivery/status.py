"""Each destination's live status, kept by its delivery worker and read by the service (status page,
/readyz, /metrics). Plain data, updated in the event loop's thread only."""

from __future__ import annotations

from dataclasses import dataclass

DELIVERING = "delivering"  # sending, or idle and ready to send
BACKING_OFF = "backing-off"  # waiting until `until` (server unreachable, Retry-After)
STOPPED = "stopped"  # a configuration or authorization problem: `reason` says what to fix


@dataclass
class DestinationStatus:
    name: str
    type: str
    state: str = DELIVERING
    until: float | None = None  # wall-clock time the back-off ends (BACKING_OFF)
    reason: str | None = None  # why it stopped (STOPPED), printable, no secrets
    last_delivered: float | None = None  # wall-clock time of the last Delivered outcome
