"""`phg ble scan` and `phg ble fetch ADDRESS`. bleak (and Bumble, for --emulated) are imported
inside the commands so that `phg --help` stays instant."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

from phg.cli.commands import Group
from phg.cli.common import EXIT_CONFIG, EXIT_INPUT, EXIT_TEMPFAIL, Context, fail
from phg.cli.options import patient_option

if TYPE_CHECKING:
    from phg.model import PatientRef


async def _on_radio(emulated: bool, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `work(backend)` on the platform's Bluetooth (backend None) or on the emulated devices."""
    if not emulated:
        return await work(None)
    from phg.demo.emulator import EmulatedLink, demo_devices

    async with EmulatedLink(demo_devices()) as radio:
        return await work(radio.backend)


def _with_radio(emulated: bool, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """`_on_radio`, run; a platform without a usable Bluetooth stack ends in one line saying what is
    missing (on Linux bleak talks to BlueZ over the D-Bus system bus), not a traceback."""
    try:
        return asyncio.run(_on_radio(emulated, work))
    except OSError as exc:  # the D-Bus socket is absent or refuses: no BlueZ to talk to
        fail(f"Bluetooth: the system's Bluetooth service is not reachable ({exc.strerror or exc}); on Linux "
             "phg needs BlueZ: install it and start dbus and bluetoothd (or try --emulated)", EXIT_CONFIG)
    except Exception as exc:
        if type(exc).__name__ == "DBusError" and "ServiceUnknown" in str(getattr(exc, "type", "")):
            fail("Bluetooth: BlueZ (bluetoothd) is not running; start it (systemctl start bluetooth) or try "
                 "--emulated", EXIT_CONFIG)
        raise


_EMULATED = click.option("--emulated", is_flag=True,
                         help="Use the built-in emulated devices on a virtual link (no radio needed; demos).")


@click.group(cls=Group)
def ble() -> None:
    """Bluetooth LE health devices (glucose meter, BP cuff, scale, thermometer, pulse oximeter)."""


@ble.command()
@click.option("--seconds", default=5.0, show_default=True, help="How long to listen.")
@click.option("--all", "show_all", is_flag=True, help="List every advertising device, not only health devices.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_EMULATED
def scan(seconds: float, show_all: bool, as_json: bool, emulated: bool) -> None:
    """List the devices around, with their services."""
    from bleak.exc import BleakError

    from phg.sources.ble.session import scan as ble_scan

    try:
        entries = _with_radio(emulated, lambda b: ble_scan(seconds, backend=b, health_only=not show_all))
    except BleakError as exc:
        fail(f"Bluetooth: {exc}", EXIT_TEMPFAIL)
    if as_json:
        click.echo(json.dumps([vars(e) for e in entries], indent=2))
        return
    if not entries:
        click.echo("no health devices found" if not show_all else "no devices found")
    for e in entries:
        what = ", ".join(e.profiles) or ", ".join(u[4:8] if u.endswith("-0000-1000-8000-00805f9b34fb") else u
                                                  for u in e.services) or "-"
        click.echo(f"{e.address}  {e.rssi:>4} dBm  {e.name or '(no name)':<24} {what}")


@ble.command()
@click.argument("address")
@patient_option()
@click.option("--timeout", default=20.0, show_default=True, help="Seconds to find and connect to the device.")
@click.option("--no-pair", is_flag=True, help="Do not pair, even if the device asks for it.")
@_EMULATED
@click.pass_obj
def fetch(obj: Context, address: str, patient: PatientRef | None, timeout: float, no_pair: bool, emulated: bool) -> None:
    """Download new readings from the device at ADDRESS once and queue them (`phg run` delivers)."""
    from bleak.exc import BleakError

    from phg.intake import Intake
    from phg.sources.ble.session import DeviceNotFound
    from phg.sources.ble.session import fetch as ble_fetch
    from phg.viewstore import open_view

    config = obj.config()
    patient = patient or config.patient
    if patient is None:
        raise click.UsageError("whose readings are these? give --patient SYSTEM|VALUE or set [patient] in the config")
    outbox = obj.queue(config)
    try:
        result = _with_radio(emulated, lambda b: ble_fetch(
            address, intake=Intake(outbox, config.destination_names, view=open_view(config.view), routes=config.routes),
            patient=patient, backend=b, pair=not no_pair, timeout=timeout, user=config.ble_user))
    except DeviceNotFound as exc:
        fail(f"{exc}; is it advertising (press its button / take a measurement)?", EXIT_TEMPFAIL)
    except LookupError as exc:
        fail(str(exc), EXIT_INPUT)
    except BleakError as exc:
        fail(f"Bluetooth {address}: {exc}; what arrived before is queued", EXIT_TEMPFAIL)
    finally:
        outbox.close()
    status = "" if result.complete else " (incomplete: the next fetch resumes)"
    skipped = f", {result.skipped} malformed value(s) skipped" if result.skipped else ""
    click.echo(f"{result.profile} {result.address}: queued {result.readings} reading(s){skipped}{status}")
