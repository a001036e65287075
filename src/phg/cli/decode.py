"""`phg decode ble CHAR HEX` and `phg decode 11073 HEX`: decode one device payload and show what it
becomes, as JSON."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

import click

from phg.cli.common import EXIT_INPUT, fail
from phg.cli.options import utc_offset_option
from phg.errors import MappingError
from phg.model import _metric_document
from phg.sources.ble.gatt.numbers import Bits, DateTime, GattError
from phg.sources.ble.gatt.readings import to_metrics
from phg.sources.ble.gatt.registry import lookup


def local_offset(wall: datetime) -> timedelta:
    """This machine's offset at a wall-clock time (its own zone rules, DST included)."""
    try:
        return wall.astimezone().utcoffset() or timedelta(0)
    except (OverflowError, OSError, ValueError):  # far outside what the platform's time functions know
        return datetime.now().astimezone().utcoffset() or timedelta(0)


def jsonable(value: Any) -> Any:
    """Decoded dataclasses as JSON: Decimals as strings (digits kept), specials by name, bit fields
    as {"raw", "bits"}, Date Time with its ISO text, bytes as hex."""
    if isinstance(value, DateTime):
        return dataclasses.asdict(value) | {"iso": value.iso}
    if isinstance(value, Bits):
        return {"raw": value.raw, "bits": list(value.names)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Decimal):
        return format(value, "f")  # 1.2E+2 -> "120"; 0.00120 keeps its digits
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    return value


@click.command("ble")
@click.argument("characteristic", metavar="CHAR")
@click.argument("payload", metavar="HEX")
@utc_offset_option("The UTC offset of the device's local clock (default: this machine's zone).")
def decode_ble(characteristic: str, payload: str, utc_offset: timedelta | None) -> None:
    """Decode a Bluetooth characteristic value: CHAR is a 16-bit UUID (2A18 or 0x2A18) or the
    128-bit form, HEX the value as sent (spaces and colons allowed)."""
    try:
        char = lookup(characteristic)
    except KeyError as exc:
        fail(str(exc.args[0]), EXIT_INPUT)
    try:
        data = bytes.fromhex(re.sub(r"[\s:]", "", payload))
    except ValueError:
        fail(f"{payload!r} is not hex", EXIT_INPUT)
    offset: timedelta | Callable[[datetime], timedelta] = local_offset if utc_offset is None else utc_offset
    try:
        decoded = char.decode(data)
        received = datetime.now(timezone(offset)) if isinstance(offset, timedelta) else datetime.now().astimezone()
        metrics = to_metrics(decoded, utc_offset=offset, received=received)
    except (GattError, MappingError) as exc:
        fail(str(exc), EXIT_INPUT)
    click.echo(json.dumps({
        "characteristic": f"0x{char.uuid16:04X} {char.name}",
        "decoded": jsonable(decoded),
        "metrics": [_metric_document(m) for m in metrics],
    }, indent=2, ensure_ascii=False))


@click.command("11073")
@click.argument("hex_text", metavar="HEX", nargs=-1, required=True)
@click.option("--config", "config_hex", default=None,
              help="Hex of the agent's configuration report APDU (for fixed-format scan reports).")
def decode_11073(hex_text: tuple[str, ...], config_hex: str | None) -> None:
    """Print an IEEE 11073-20601 APDU (hex) decoded, as JSON."""
    from phg.sources.ieee11073.apdu import ApduError, EventReport, Prst, decode, decode_config_report
    from phg.sources.ieee11073.configs import Configuration, standard
    from phg.sources.ieee11073.describe import describe_hex

    config = None
    try:
        if config_hex:
            apdu = decode(bytes.fromhex("".join(config_hex.split())))
            if not (isinstance(apdu, Prst) and isinstance(apdu.message, EventReport)):
                raise ApduError("--config must be a configuration event report")
            report = decode_config_report(apdu.message.info)
            config = standard(report.config_id) if not report.objects else Configuration.from_report(report)
        text = "".join(hex_text)
        click.echo(json.dumps(describe_hex(text, config), indent=2, ensure_ascii=False))
    except (ApduError, ValueError) as exc:
        fail(str(exc), EXIT_INPUT)
