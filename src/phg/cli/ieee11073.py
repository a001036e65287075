"""`phg 11073 listen`: the IEEE 11073-20601 manager. Loaded lazily by the CLI."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from phg.cli.common import EXIT_CONFIG, fail, queue_name
from phg.cli.options import patient_option, utc_offset_option

if TYPE_CHECKING:
    from phg.model import PatientRef


def _legacy_patient_system(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """`--patient-system S --patient V`, the old two-flag form: kept as an alias of `--patient S|V`
    (eager, so it is known when --patient is parsed)."""
    if value:
        ctx.meta["patient_system"] = value
        click.echo("warning: --patient-system is deprecated: give --patient SYSTEM|VALUE", err=True)


@click.group("11073")
def ieee11073() -> None:
    """IEEE 11073-20601 manager (agents over TCP or USB PHDC)."""


@ieee11073.command("listen")
@click.option("--tcp", "port", type=int, required=True, help="TCP port to accept agents on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@patient_option()
@click.option("--patient-system", hidden=True, is_eager=True, expose_value=False, callback=_legacy_patient_system,
              help="Deprecated: give --patient SYSTEM|VALUE.")
@click.option("--outbox", "outbox_path", type=click.Path(path_type=Path), default=None,
              help="Outbox file (default: the configured queue, [queue] engine).")
@click.option("--configs", "configs_path", type=click.Path(path_type=Path), default=None,
              help="JSON file remembering agents' extended configurations.")
@utc_offset_option("The UTC offset of the agents' local clocks (default: this computer's current offset).")
@click.option("--max-connections", type=click.IntRange(1), default=32, show_default=True,
              help="Agent connections served at once; more are closed when accepted (the agent retries).")
@click.pass_context
def listen(ctx: click.Context, port: int, host: str, patient: PatientRef | None, outbox_path: Path | None,
           configs_path: Path | None, utc_offset: timedelta | None, max_connections: int) -> None:
    """Run the manager: accept agents on TCP PORT and queue their readings."""
    from phg.intake import Intake
    from phg.outbox import Outbox, open_queue
    from phg.sources.ieee11073.configs import FileConfigStore, MemoryConfigStore
    from phg.sources.ieee11073.tcp import ManagerSettings, run_tcp_manager
    from phg.viewstore import open_view

    obj = ctx.find_root().obj
    config = obj.config() if obj is not None and hasattr(obj, "config") else None
    patient = patient or (config.patient if config is not None else None)
    if patient is None:
        raise click.UsageError("whose readings are these? give --patient SYSTEM|VALUE or set [patient] in the config")
    if outbox_path is None and config is None:
        raise click.UsageError("give --outbox (or run as `phg 11073 listen` with a config)")
    from phg.transport import is_loopback

    if not is_loopback(host):
        click.echo(f"warning: agents on {host} are not authenticated (IEEE 11073-20601 has no authentication): "
                   "anyone who can reach this port can queue readings for this patient", err=True)
    offset = utc_offset if utc_offset is not None else datetime.now().astimezone().utcoffset()
    settings = ManagerSettings(patient, utc_offset=offset or timedelta(0),
                               store=FileConfigStore(configs_path) if configs_path else MemoryConfigStore(),
                               max_connections=max_connections)
    destinations = config.destination_names if config is not None else ["fhir"]
    with Outbox(outbox_path) if outbox_path is not None else open_queue(config) as outbox:
        click.echo(f"listening for IEEE 11073-20601 agents on {host}:{port}; their readings queue in "
                   f"{outbox_path or queue_name(config)} (Ctrl-C stops)", err=True)
        try:
            view = open_view(config.view) if config is not None else None
            routes = config.routes if config is not None else ()
            asyncio.run(run_tcp_manager(Intake(outbox, destinations, view=view, routes=routes), settings, port, host))
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_CONFIG)
