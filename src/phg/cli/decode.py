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
    except GattError as exc:
        fail(str(exc), EXIT_INPUT)
    out: dict[str, Any] = {"characteristic": f"0x{char.uuid16:04X} {char.name}", "decoded": jsonable(decoded)}
    received = datetime.now(timezone(offset)) if isinstance(offset, timedelta) else datetime.now().astimezone()
    try:
        out["metrics"] = [_metric_document(m) for m in to_metrics(decoded, utc_offset=offset, received=received)]
    except MappingError as exc:  # CGM records: placed in time by a Session Start Time no single value carries
        out |= {"metrics": [], "note": str(exc)}
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


def parse_config_id(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """--config-id: a dev-config-id, hexadecimal (0x05DC) or decimal (1500), 0..0xFFFF."""
    if value is None:
        return None
    try:
        config_id = int(value, 0)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number (write 0x05DC or 1500)") from None
    if not 0 <= config_id <= 0xFFFF:
        raise click.BadParameter(f"{value!r} is not a dev-config-id (0..0xFFFF)")
    return config_id


@click.command("11073")
@click.argument("hex_text", metavar="HEX", nargs=-1, required=True)
@click.option("--config-id", "config_id", default=None, metavar="ID", callback=parse_config_id,
              help="The agent's dev-config-id when it is a standard configuration "
                   "(0x0190, 0x02BC, 0x0320, 0x05DC, 0x06A4): what a fixed-format scan report needs.")
@click.option("--config", "config_hex", default=None,
              help="Hex of the agent's configuration report APDU (for an extended configuration).")
@utc_offset_option("The UTC offset of the agent's local clock (default: this machine's current offset).")
def decode_11073(hex_text: tuple[str, ...], config_id: int | None, config_hex: str | None,
                 utc_offset: timedelta | None) -> None:
    """Decode an IEEE 11073-20601 APDU (HEX) and print it as JSON. With the agent's configuration (a
    standard one by its --config-id, or the --config report the agent sent) a scan report's values are
    read and the readings they become are shown, as `phg 11073 listen` would queue them."""
    from phg.sources.ieee11073.apdu import Aarq, ApduError, EventReport, Prst, decode, decode_config_report
    from phg.sources.ieee11073.configs import STANDARD_NAMES, Configuration, standard
    from phg.sources.ieee11073.describe import describe, metrics, specialization, standard_ids

    if config_id is not None and config_hex is not None:
        raise click.UsageError("give --config-id or --config, not both")
    try:
        data = bytes.fromhex(re.sub(r"[\s:]", "", "".join(hex_text)))
    except ValueError:
        fail(f"{''.join(hex_text)!r} is not hex", EXIT_INPUT)
    config = None
    try:
        if config_id is not None:
            config = standard(config_id)
            if config is None:
                raise ApduError(f"0x{config_id:04X} is not a standard configuration phg knows ({standard_ids()}); "
                                "give the agent's configuration report with --config")
        if config_hex:
            apdu = decode(bytes.fromhex("".join(config_hex.split())))
            if not (isinstance(apdu, Prst) and isinstance(apdu.message, EventReport)):
                raise ApduError("--config must be a configuration event report")
            report = decode_config_report(apdu.message.info)
            config = standard(report.config_id) if not report.objects else Configuration.from_report(report)
        out = describe(data, config)
        if config is not None:
            offset = utc_offset if utc_offset is not None else datetime.now().astimezone().utcoffset() or timedelta(0)
            out["configuration"] = {"config-id": f"0x{config.config_id:04X}",
                                    "standard": STANDARD_NAMES.get(config.config_id) if config.profile else None,
                                    "specialization": specialization(config)}
            out["readings"] = [{"metrics": [_metric_document(m) for m in reading]}
                               for reading in metrics(data, config, offset, datetime.now(timezone(offset)))]
        else:
            apdu = decode(data)
            ids = [p.info.dev_config_id for p in apdu.protocols if not isinstance(p.info, bytes)] \
                if isinstance(apdu, Aarq) else []
            if ids and ids[0] in STANDARD_NAMES:  # what to give --config-id for this agent's reports
                out["configuration"] = {"config-id": f"0x{ids[0]:04X}", "standard": STANDARD_NAMES[ids[0]]}
    except (ApduError, ValueError) as exc:
        fail(str(exc), EXIT_INPUT)
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))
