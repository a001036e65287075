"""`phg queue ls|show|retry|purge`: look into and repair the queue, on either engine ([queue] engine: the
SQLite outbox or JetStream, whose answers differ where it keeps less: phg.outbox.jetstream, "What it cannot
answer"). Times are ISO 8601 (UTC)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from phg.cli.common import EXIT_INPUT, Context, fail
from phg.cli.options import JSON_OPTION
from phg.cli.output import iso, print_json


@click.group()
def queue() -> None:
    """Show and repair the queue."""


def describe(payload: str) -> tuple[str, str]:
    """(patient, what) of a queued reading for a listing: the patient identifier and the measurements'
    names, no measured values. ("-", "-") for a payload erased after delivery."""
    from phg.mdc import MEASUREMENTS

    try:
        doc = json.loads(payload)
        patient = f"{doc['patient']['system']}|{doc['patient']['value']}"
        codes = [metric["code"] for metric in doc["metrics"]]
    except (ValueError, TypeError, KeyError):
        return "-", "-"
    names = list(dict.fromkeys(MEASUREMENTS[c].display if c in MEASUREMENTS else f"MDC {c}" for c in codes))
    return patient, ", ".join(names)


def _row(item: Any) -> dict[str, Any]:
    patient, what = describe(item.payload)
    return {"id": item.id, "destination": item.destination, "state": item.state, "attempts": item.attempts,
            "created": iso(item.created), "next_attempt": iso(item.next_attempt) if item.state != "delivered" else None,
            "patient": patient, "type": what, "last_error": item.last_error}


@queue.command("ls")
@click.option("--state", type=click.Choice(["queued", "inflight", "delivered", "dead"]))
@click.option("--limit", default=50, show_default=True)
@JSON_OPTION
@click.pass_obj
def queue_ls(obj: Context, state: str | None, limit: int, as_json: bool) -> None:
    """List queued items: id, destination, state, attempts, created, patient, what was measured, last
    error (no measured values)."""
    with obj.queue() as outbox:
        counts = outbox.counts()
        rows = [_row(item) for item in outbox.items(state=state, limit=limit)]
    if as_json:
        print_json({"counts": counts, "items": rows})
        return
    click.echo("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if rows:
        table = [[str(r["id"]), r["destination"], r["state"], str(r["attempts"]), r["created"], r["patient"],
                  r["type"], (r["last_error"] or "")[:60]] for r in rows]
        _print_table(["ID", "DEST", "STATE", "TRIES", "CREATED", "PATIENT", "TYPE", "ERROR"], table)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """Columns as wide as their widest cell (the last one as it comes), no control characters."""
    from phg.terminal import printable

    cells = [header] + [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    for row in cells:
        click.echo("  ".join([cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]).rstrip())


@queue.command("show")
@click.argument("item_id", type=int)
@JSON_OPTION
@click.pass_obj
def queue_show(obj: Context, item_id: int, as_json: bool) -> None:
    """Show one item: its reading, state, last error or the server's answer."""
    from phg.terminal import printable

    with obj.queue() as outbox:
        item = outbox.get(item_id)
    if item is None:
        fail(f"no queue item {item_id} (a delivered reading keeps no item on JetStream)", EXIT_INPUT)
    data = item._asdict() | {"created": iso(item.created), "updated": iso(item.updated),
                         "next_attempt": iso(item.next_attempt), "payload": json.loads(item.payload)}
    data.pop("lease")  # a token of the process that leased it: nothing a person or a script can use
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        if key != "payload" and value is not None:
            click.echo(f"{key + ':':<14}{printable(str(value))}")
    click.echo("reading:")
    click.echo(json.dumps(data["payload"], indent=2, ensure_ascii=False))


@queue.command("retry")
@click.argument("item_id", type=int)
@click.option("--now", "deliver_now", is_flag=True, help="Deliver what is due at once (then exit as `phg send` does).")
@click.pass_obj
def queue_retry(obj: Context, item_id: int, deliver_now: bool) -> None:
    """Queue a dead item again (after fixing what the server complained about)."""
    config = obj.config()
    with obj.queue(config) as outbox:
        again = outbox.retry(item_id)
        if again is None:
            fail(f"queue item {item_id} does not exist, is being delivered or is delivered", EXIT_INPUT)
        click.echo(f"item {item_id} queued" if again == item_id else f"item {item_id} queued as item {again}")
        if deliver_now:
            from phg.cli.sending import deliver_until_idle

            sys.exit(deliver_until_idle(config, outbox, {}, as_json=False))


@queue.command("purge")
@click.option("--dead", is_flag=True, help="Remove dead items.")
@click.option("--delivered", is_flag=True,
              help="Erase delivered readings now (their keys stay: they are not queued again).")
@click.pass_obj
def queue_purge(obj: Context, dead: bool, delivered: bool) -> None:
    """Remove dead items and/or delivered readings for good."""
    if not (dead or delivered):
        raise click.UsageError("say what to purge: --dead, --delivered or both")
    config = obj.config()
    with obj.queue(config) as outbox:
        if dead:
            click.echo(f"removed {outbox.purge_dead()} dead item(s)")
        if delivered:
            erased = outbox.purge_delivered()
            kept = " (JetStream keeps no delivered reading: nothing to erase)" if config.queue.engine == "jetstream" else ""
            click.echo(f"erased the readings of {erased} delivered item(s){kept}")
