"""`phg render`, `phg send`, `phg simulate` and `phg run`: readings in, queued, delivered.

Exit codes (phg.cli): 0 done; 1 bad input or readings dead-lettered; 3 configuration or
authorization problem (the queue is intact); 74 the outbox or the view store could not be written; 75
readings still queued for a retry."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from phg.cli import sending
from phg.cli.common import EXIT_INPUT, EXIT_IOERR, EXIT_TEMPFAIL, Context, fail, queue_name
from phg.cli.options import JSON_OPTION
from phg.cli.output import print_json
from phg.cli.sending import deliver_until_idle, distinct, read_readings, report

if TYPE_CHECKING:
    import asyncio


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["fhir", "hl7v2"]), default="fhir", show_default=True)
@click.option("--ig-version", type=click.Choice(["2.0.0", "1.1.0"]), help="PHD IG version (default: config).")
@click.pass_obj
def render(obj: Context, files: tuple[str, ...], fmt: str, ig_version: str | None) -> None:
    """Print what would be sent for FILES (no network, no queue).

    FHIR: the transaction Bundles byte for byte as the FHIR destination sends them (numbers keep
    their digits), one per line, batched as delivery batches them ([delivery] batch_size readings
    each, in file order, repeats dropped as the queue drops them). HL7 v2: the PCD-01 messages, one
    per reading, segments one per line here (CR on the wire)."""
    readings, errors = read_readings(files)
    if not readings:
        sys.exit(EXIT_INPUT)
    config = obj.config()
    readings = distinct(readings)
    if fmt == "hl7v2":
        from phg.hl7v2 import render_messages

        messages = render_messages(readings, config.gateway)
        click.echo("\n\n".join(message.replace("\r", "\n").rstrip("\n") for message in messages))
    else:
        from phg.fhir import build_transaction, to_json

        size = config.batch_size
        for start in range(0, len(readings), size):
            bundle = build_transaction(readings[start:start + size], config.gateway, ig_version or config.ig_version)
            sys.stdout.buffer.write(to_json(bundle.bundle) + b"\n")
    sys.exit(EXIT_INPUT if errors else 0)


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--no-deliver", is_flag=True, help="Only queue; `phg run` delivers later.")
@JSON_OPTION
@click.pass_obj
def send(obj: Context, files: tuple[str, ...], no_deliver: bool, as_json: bool) -> None:
    """Queue the readings in FILES (or - for stdin) durably, then deliver what is due.

    With [[routes]], a reading no route matches is refused (exit 1) and the others are queued.
    Exit 74 (EX_IOERR) when the queue cannot store them (disk full, read-only, not an outbox, JetStream
    unreachable): the source must keep its readings and send them again (what was stored is recognised)."""
    sending.send(obj, obj.config(), files, no_deliver, as_json)


@click.command()
@click.option("--role", type=click.Choice(["all", "intake", "worker"]),
              help="intake: sources and the API, no delivery; worker: delivery only (and /healthz, /readyz, "
                   "/metrics with [api]); all: both (default: [run] role, else all).")
@JSON_OPTION
@click.pass_obj
def run(obj: Context, role: str | None, as_json: bool) -> None:
    """Deliver whatever is queued, retrying while the server is unreachable, and collect from the
    configured sources, until stopped (Ctrl-C, SIGTERM); then print what was delivered. Intakes and
    workers may run as separate processes on one queue (--role)."""
    from phg.daemon import open_queue_when_reachable, run_gateway
    from phg.errors import StorageError
    from phg.process import tune_collector

    obj.flags[("run", "role")] = role
    config = obj.config()
    tune_collector()  # a long-running process: start-up's objects frozen, a batch's freed between collections
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    summary: dict[str, Any] = {}
    opened: list[Any] = []

    async def go(stop: asyncio.Event) -> Any:
        try:
            queue = await open_queue_when_reachable(config, stop)  # JetStream not up yet: waited for
        except StorageError as exc:  # the SQLite outbox: not "delivery stopped", as nothing ever started
            fail(f"{exc}\nphg run did not start: nothing was collected or delivered", EXIT_IOERR)
        if queue is None:
            return None
        opened.append(queue)
        return await run_gateway(config, queue, stop)

    try:
        totals = sending.run(go)
        if not opened:
            click.echo("stopped before the queue could be reached: nothing was collected or delivered", err=True)
            sys.exit(0)
        code = report(totals, opened[0], summary, as_json)
    finally:
        for queue in opened:
            queue.close()
    if as_json:
        print_json(summary)
    sys.exit(0 if code == EXIT_TEMPFAIL else code)  # what waits is for the next run


@click.command()
@click.option("--no-deliver", is_flag=True, help="Only queue; `phg run` delivers later.")
@JSON_OPTION
@click.pass_obj
def simulate(obj: Context, no_deliver: bool, as_json: bool) -> None:
    """Collect from the built-in emulated Bluetooth devices (glucose meter, BP cuff, scale,
    thermometer, pulse oximeter) through the real Bluetooth session, queue, then deliver."""
    import asyncio

    from phg.demo.emulator import collect_emulated
    from phg.intake import Intake
    from phg.model import PatientRef
    from phg.viewstore import open_view

    config = obj.config()
    patient = config.patient or PatientRef("urn:oid:1.2.3.4.5", "demo-patient-001")
    outbox = obj.queue(config)
    fetched = asyncio.run(collect_emulated(Intake(outbox, config.destination_names, view=open_view(config.view),
                                                  routes=config.routes), patient))
    summary: dict[str, Any] = {"outbox": queue_name(config), "devices": len(fetched),
                               "queued": sum(f.readings for f in fetched)}
    if not as_json:
        click.echo(f"queued {summary['queued']} reading(s) from {len(fetched)} emulated devices")
    code = 0
    if not no_deliver and config.deliverable:
        code = deliver_until_idle(config, outbox, summary, as_json)
    if as_json:
        print_json(summary)
    sys.exit(code)
