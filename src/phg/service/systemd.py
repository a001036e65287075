"""Telling systemd how the gateway is doing (sd_notify(3)), without libsystemd: a datagram to the socket
systemd names in $NOTIFY_SOCKET.

`phg run` under the unit in packaging/phg.service (Type=notify, WatchdogSec=) sends READY=1 once it
collects and delivers, STOPPING=1 when it is told to stop, and WATCHDOG=1 from its event loop every half
watchdog period (sd_watchdog_enabled(3) recommends half): a loop that hangs stops the pings and systemd
restarts the service. Outside systemd (no $NOTIFY_SOCKET, no $WATCHDOG_USEC) every call does nothing.
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


async def watchdog(stop: asyncio.Event, env: Mapping[str, str] = os.environ) -> None:
    """Ping systemd's watchdog from the event loop until `stop` is set."""
    interval = watchdog_interval(env)
    if interval is None:
        return
    while not stop.is_set():
        notify("WATCHDOG=1", env)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass


async def lifecycle(stop: asyncio.Event, started: Callable[[], bool], env: Mapping[str, str] = os.environ) -> None:
    """`phg run` under systemd: READY=1 once `started()` holds (checked every 50 ms: every delivery worker
    runs), the watchdog until `stop` is set, then STOPPING=1. Nothing at all outside systemd."""
    if not env.get("NOTIFY_SOCKET"):
        return
    while not started() and not stop.is_set():
        await asyncio.sleep(0.05)
    notify("READY=1", env)
    await watchdog(stop, env)
    notify("STOPPING=1", env)
