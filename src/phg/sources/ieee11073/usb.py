"""IEEE 11073-20601 over USB PHDC (USB Device Class Definition for Personal Healthcare Devices 1.0).

A PHDC agent exposes an interface of class 0x0F with one bulk IN and one bulk OUT endpoint (plus an
optional interrupt IN for low-latency data, not used here). Without the optional metadata feature (the
common case, and what phg supports) the endpoints carry plain 20601 APDUs; an APDU longer than the
endpoint's max packet size spans several transfers, so bytes go to the Manager, which frames APDUs by
their own header. This module only moves bytes: it reads the IN endpoint, feeds the sans-I/O Manager,
writes what the manager has to send to the OUT endpoint, and stores readings before acknowledging them.

The endpoints are behind a two-method protocol (`read(size, timeout_ms) -> bytes`, `write(data) -> int`)
so tests use a fake; `open_phdc()` finds a real device with pyusb (needs libusb and, on Linux, access to
the device node, e.g. a udev rule for the agent's vendor id).

    link = open_phdc(vendor_id=0x0483)         # or any object with read/write
    run_usb_manager(link, intake, ManagerSettings(patient=...), stop=threading.Event())

`UsbSource` is this manager as a source of `phg run` (phg.sources.supervisor).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from phg.intake import Intake
from phg.sources.ieee11073.manager import Aborted, Configured, Measurements, Released
from phg.sources.ieee11073.tcp import Association, ManagerSettings

log = logging.getLogger(__name__)

PHDC_INTERFACE_CLASS = 0x0F


class BulkLink(Protocol):
    """The PHDC bulk pipe pair. `read` returns b"" when nothing arrived within the timeout."""

    def read(self, size: int, timeout_ms: int) -> bytes: ...

    def write(self, data: bytes) -> int: ...


class PyUsbLink:
    """A PHDC interface of a pyusb device (bulk IN/OUT endpoints)."""

    def __init__(self, ep_in, ep_out):
        self.ep_in, self.ep_out = ep_in, ep_out

    def read(self, size: int, timeout_ms: int) -> bytes:
        import usb.core

        try:
            return bytes(self.ep_in.read(size, timeout=timeout_ms))
        except usb.core.USBTimeoutError:
            return b""

    def write(self, data: bytes) -> int:
        return self.ep_out.write(data)


def open_phdc(vendor_id: int | None = None, product_id: int | None = None) -> PyUsbLink:
    """Find the first USB device with a PHDC interface (optionally by vendor/product id) and claim it."""
    import usb.core
    import usb.util

    def is_phdc(dev) -> bool:
        if vendor_id is not None and dev.idVendor != vendor_id or product_id is not None and dev.idProduct != product_id:
            return False
        return any(i.bInterfaceClass == PHDC_INTERFACE_CLASS for cfg in dev for i in cfg)

    dev = usb.core.find(custom_match=is_phdc)
    if dev is None:
        raise LookupError("no USB PHDC device found")
    cfg = dev.get_active_configuration()
    intf = next(i for i in cfg if i.bInterfaceClass == PHDC_INTERFACE_CLASS)
    try:
        if dev.is_kernel_driver_active(intf.bInterfaceNumber):
            dev.detach_kernel_driver(intf.bInterfaceNumber)
    except (NotImplementedError, usb.core.USBError):
        pass
    usb.util.claim_interface(dev, intf.bInterfaceNumber)

    def endpoint(direction: int):
        return usb.util.find_descriptor(intf, custom_match=lambda e: (
            usb.util.endpoint_direction(e.bEndpointAddress) == direction
            and usb.util.endpoint_type(e.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK))

    ep_in, ep_out = endpoint(usb.util.ENDPOINT_IN), endpoint(usb.util.ENDPOINT_OUT)
    if ep_in is None or ep_out is None:
        raise LookupError("PHDC interface without bulk IN/OUT endpoints")
    return PyUsbLink(ep_in, ep_out)


def run_usb_manager(link: BulkLink, intake: Intake, settings: ManagerSettings, stop: threading.Event | None = None,
                    poll_ms: int = 200, until_released: bool = False) -> None:
    """Serve one USB agent until `stop` is set (or, with until_released, until its association ends).
    Blocking: run it in a thread. Readings are stored before the agent's report is acknowledged."""
    assoc = Association(settings, "usb")
    manager = assoc.manager
    stop = stop or threading.Event()
    while not stop.is_set():
        data = link.read(65536, poll_ms)
        now = time.monotonic()
        events = manager.receive_data(data, now) if data else manager.tick(now)
        reports = assoc.readings_for(events)
        _write(link, manager.data_to_send())
        if any(isinstance(e, Configured) for e in events):
            settings.store.flush()
        assoc.store_and_ack(intake, reports)
        _write(link, manager.data_to_send())
        if until_released and any(isinstance(e, Released | Aborted) for e in events):
            break
    log.info("11073 usb: stopped at %s", datetime.now(UTC).isoformat())


@dataclass(frozen=True)
class UsbSource:
    """The first USB PHDC agent (optionally by vendor/product id) as a source of `phg run` ([usb] enabled).
    Without such a device plugged in, `run` raises LookupError: the supervisor tries again later."""

    settings: ManagerSettings
    vendor_id: int | None = None
    product_id: int | None = None
    name: str = "11073-usb"

    async def run(self, intake: Intake, stop: asyncio.Event) -> None:
        link = await asyncio.to_thread(open_phdc, self.vendor_id, self.product_id)
        stopped = threading.Event()
        relay = asyncio.create_task(stop.wait())
        relay.add_done_callback(lambda _: stopped.set())
        try:
            await asyncio.to_thread(run_usb_manager, link, intake, self.settings, stopped)
        finally:
            stopped.set()
            relay.cancel()


def _write(link: BulkLink, data: bytes) -> None:
    while data:
        n = link.write(data)
        data = data[n:]


__all__ = ["BulkLink", "Measurements", "PyUsbLink", "UsbSource", "open_phdc", "run_usb_manager"]
