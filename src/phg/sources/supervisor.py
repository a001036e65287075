"""`phg run`'s sources, side by side under one supervisor.

A source is anything with a `name` and `async run(intake, stop)`: it collects until `stop` is set,
hands every reading to the Intake (and acknowledges its device or peer only after that), and then
returns. The supervisor runs each configured source in its own task. A source that raises is logged
(its type and message: sources keep measurement values out of their messages) and started again after
a backoff that doubles up to `max_backoff` (and starts over after a run that lasted longer than
`max_backoff`); one source's trouble never stops another. When `stop` is set the supervisor waits for
every source to return: what a source handed over is durable by then.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from phg.intake import Intake

if TYPE_CHECKING:
    from phg.config import Config

log = logging.getLogger(__name__)


class Source(Protocol):
    name: str

    async def run(self, intake: Intake, stop: asyncio.Event) -> None: ...


async def supervise(sources: Sequence[Source], intake: Intake, stop: asyncio.Event, *, min_backoff: float = 1.0,
                    max_backoff: float = 60.0) -> None:
    """Run every source until `stop` is set, restarting one that fails or returns early (see above)."""
    tasks = [asyncio.create_task(_keep_running(s, intake, stop, min_backoff, max_backoff), name=f"source-{s.name}")
             for s in sources]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _keep_running(source: Source, intake: Intake, stop: asyncio.Event, min_backoff: float,
                        max_backoff: float) -> None:
    loop = asyncio.get_running_loop()
    backoff = min_backoff
    while not stop.is_set():
        started = loop.time()
        try:
            await source.run(intake, stop)
            if stop.is_set():
                break
            log.warning("source %s stopped on its own: starting it again in %.0f s", source.name, backoff)
        except Exception as exc:  # noqa: BLE001 - any failure of one source is that source's alone
            log.error("source %s failed: %s: %s; starting it again in %.0f s", source.name, type(exc).__name__,
                      exc, backoff)
        if loop.time() - started > max_backoff:
            backoff = min_backoff
        try:
            await asyncio.wait_for(stop.wait(), backoff * random.uniform(0.9, 1.1))
        except TimeoutError:
            pass
        backoff = min(backoff * 2, max_backoff)
    log.info("source %s stopped", source.name)


def configured_sources(config: Config, *, ble_backend: Any = None) -> list[Source]:
    """The sources `config` turns on: Bluetooth ([ble] allow / pair_new), the 11073 TCP listener
    ([ieee11073] listen) and the 11073 USB PHDC agent ([usb] enabled). `ble_backend`: bleak backend
    classes (None: the platform's; the emulated radio's in tests and demos)."""
    sources: list[Source] = []
    if config.ble_enabled:
        from phg.sources.ble.session import BleSettings, BleSource

        assert config.patient is not None  # load_config insists on a [patient] for every source
        sources.append(BleSource(BleSettings(allow=config.ble_allow, pair_new=config.ble_pair_new,
                                             patient=config.patient, scan_seconds=config.ble_scan_seconds,
                                             user=config.ble_user),
                                 backend=ble_backend))
    if config.ieee11073_listen is not None or config.usb_enabled:
        from phg.sources.ieee11073.configs import FileConfigStore, MemoryConfigStore
        from phg.sources.ieee11073.tcp import ManagerSettings

        assert config.patient is not None
        store = FileConfigStore(config.ieee11073_configs) if config.ieee11073_configs else MemoryConfigStore()
        settings = ManagerSettings(config.patient, utc_offset=_local_utc_offset(), store=store,
                                   max_connections=config.ieee11073_max_connections)
        if config.ieee11073_listen is not None:
            from phg.sources.ieee11073.tcp import TcpSource

            sources.append(TcpSource(settings, *config.ieee11073_listen))
        if config.usb_enabled:
            from phg.sources.ieee11073.usb import UsbSource

            sources.append(UsbSource(settings, config.usb_vendor_id, config.usb_product_id))
    return sources


def _local_utc_offset() -> timedelta:
    """This computer's UTC offset now (11073 agents give local time without a zone)."""
    return datetime.now().astimezone().utcoffset() or timedelta(0)
