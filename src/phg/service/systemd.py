"""Telling systemd how the gateway is doing (sd_notify(3)), without libsystemd: a datagram to the socket
systemd names in $NOTIFY_SOCKET.

`phg run` under the unit in packaging/phg.service (Type=notify, WatchdogSec=) sends READY=1 once it collects and
delivers, STOPPING=1 when it is told to stop, and WATCHDOG=1 from its event loop every half watchdog period
(sd_watchdog_enabled(3) recommends half): a loop that hangs stops the pings and systemd restarts the service. STATUS=
says which destinations are not delivering, and why (phg.delivery.status.status_line). Outside systemd (no
$NOTIFY_SOCKET, no $WATCHDOG_USEC) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping


def notify(state: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS=...") to systemd; False when not
    run by systemd. A socket path starting with "@" is in the abstract namespace (sd_notify(3))."""
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between watchdog pings: half of $WATCHDOG_USEC, when it is set and $WATCHDOG_PID (if set)
    is this process (sd_watchdog_enabled(3)); None when no watchdog is asked for."""
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


STATUS_EVERY = 5.0  # seconds: how often STATUS= is looked at, at most


async def watchdog(stop: asyncio.Event, env: Mapping[str, str] = os.environ,
                   status: Callable[[], str] | None = None) -> None:
    """Until `stop` is set: ping systemd's watchdog from the event loop (when one is asked for), and send
    STATUS=`status()` whenever that line changes (looked at every STATUS_EVERY seconds; `systemctl status`
    shows it: a destination stopped, and why, is seen there without reading the journal)."""
    interval = watchdog_interval(env)
    if interval is None and status is None:
        return
    wait = min(interval or STATUS_EVERY, STATUS_EVERY) if status is not None else interval
    shown = None
    while not stop.is_set():
        if interval is not None:
            notify("WATCHDOG=1", env)
        if status is not None and (line := status()) != shown:
            notify(f"STATUS={line}", env)
            shown = line
        try:
            await asyncio.wait_for(stop.wait(), timeout=wait)
        except TimeoutError:
            pass


async def lifecycle(stop: asyncio.Event, started: Callable[[], bool], env: Mapping[str, str] = os.environ,
                    status: Callable[[], str] | None = None) -> None:
    """`phg run` under systemd: READY=1 once `started()` holds (checked every 50 ms: every delivery worker
    runs), the watchdog and STATUS= (`watchdog`) until `stop` is set, then STOPPING=1. Nothing at all
    outside systemd."""
    if not env.get("NOTIFY_SOCKET"):
        return
    while not started() and not stop.is_set():
        await asyncio.sleep(0.05)
    notify("READY=1", env)
    await watchdog(stop, env, status)
    notify("STOPPING=1", env)
