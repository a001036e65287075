"""Each destination's live status, kept by its delivery worker and read by the service (status page,
/readyz, /metrics). Plain data, updated in the event loop's thread only.

A worker sets BACKING_OFF when the destination cannot be reached (the circuit), when the server asked to
wait (Retry-After) or when the outbox cannot be written, and DELIVERING again once the wait is over;
STOPPED on an AuthError or a destination's ConfigError, with the error's text (what to fix) as `reason`.
The text never holds a token: phg's errors name settings and endpoints, never credentials."""

from __future__ import annotations

from collections.abc import Iterable
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
    reason: str | None = None  # why it waits (BACKING_OFF) or stopped (STOPPED): printable, no secrets
    last_delivered: float | None = None  # wall-clock time of the last Delivered outcome


def status_line(statuses: Iterable[DestinationStatus]) -> str:
    """One line for systemd's STATUS= (sd_notify(3): one line, `systemctl status` shows it): each destination not
    delivering, with its state and why; else how many destinations deliver."""
    statuses = list(statuses)
    trouble = [f"{s.name} {s.state}: {s.reason or 'no reason given'}" for s in statuses if s.state != DELIVERING]
    if trouble:
        line = "; ".join(trouble)
    elif statuses:
        line = f"delivering to {', '.join(s.name for s in statuses)}"
    else:
        line = "no delivery in this process"
    return " ".join(line.split())[:500]
