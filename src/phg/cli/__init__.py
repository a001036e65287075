"""The `phg` command. Heavy modules are imported inside the commands so that `phg --help` is instant.

Exit codes: 0 done; 1 bad input or readings dead-lettered; 2 usage; 3 configuration or
authorization problem (the queue is intact); 74 (EX_IOERR) the outbox could not be written (nothing
was queued); 75 (EX_TEMPFAIL) readings still queued for a retry.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from phg.cli.common import EXIT_CONFIG, EXIT_INPUT, EXIT_TEMPFAIL, Context, Group, fail
from phg.errors import AuthError, ConfigError


@click.group(cls=Group, lazy={
    "ble": ("phg.cli.ble:ble", "Bluetooth LE health devices: scan, fetch."),
    "11073": ("phg.cli.ieee11073:ieee11073", "IEEE 11073-20601 manager: listen for agents."),
    "hl7": ("phg.cli.hl7:hl7", "HL7 v2 PCD-01 tools: check a message."),
    "keys": ("phg.cli.auth:keys", "The gateway's signing keys: generate, rotate, show the public JWKS."),
    "register": ("phg.cli.auth:register", "Register this gateway with the server (RFC 7591) and save the client."),
    "serve-jwks": ("phg.cli.auth:serve_jwks", "Publish the public JWKS at a URL (for jwks_uri / jku)."),
})
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Config file (default: $PHG_CONFIG or the user config dir).")
@click.option("--fhir-base", help="FHIR base URL (overrides [fhir] base_url).")
@click.option("--client-id", help="SMART client_id (overrides [auth] client_id).")
@click.option("--key", "key_file", type=click.Path(path_type=Path), help="Private key file (overrides [auth] key_file).")
@click.option("--scope", help="Scopes to request (overrides [auth] scope).")
@click.option("--outbox", "outbox_path", type=click.Path(path_type=Path), help="Outbox database (overrides [outbox] path).")
@click.option("-v", "--verbose", count=True, help="-v: progress (INFO); -vv: DEBUG (may include server messages).")
@click.version_option(package_name="phg")
@click.pass_context
def main(ctx: click.Context, config_path, fhir_base, client_id, key_file, scope, outbox_path, verbose) -> None:
    """phg: a Personal Health Gateway. Device readings -> FHIR (HL7 PHD IG) -> your EHR, securely,
    through a durable queue."""
    from phg.terminal import PrintableFormatter

    handler = logging.StreamHandler()  # log lines may quote a server: no control characters reach the terminal
    handler.setFormatter(PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], handlers=[handler])
    if verbose < 2:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    ctx.obj = Context(config_path, {"fhir_base": fhir_base and fhir_base.rstrip("/"), "client_id": client_id,
                                    "key_file": key_file, "scope": scope, "outbox_path": outbox_path})


# ------------------------------------------------------------------------------------------ init


@main.command()
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_obj
def init(obj: Context, force: bool) -> None:
    """Write a commented config file to edit."""
    from phg.config import render_template, user_config_path, user_data_dir

    path = obj.config_path or user_config_path()
    if path.exists() and not force:
        fail(f"{path} exists (use --force to overwrite)", EXIT_INPUT)
    from phg.secretfile import write_private

    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600: the [auth] table may come to hold a client secret or a registration access token.
    write_private(path, render_template(user_data_dir() / "phg-key.pem", user_data_dir() / "outbox.sqlite"))
    click.echo(f"wrote {path}\nnext: edit [fhir] base_url and [auth] client_id, then run `phg keys generate` "
               "and register the printed JWKS with your EHR")


# ------------------------------------------------------------------------------------------ readings


def read_readings(files: tuple[str, ...]) -> tuple[list, list[str]]:
    """Parse every document of every file; invalid ones (a bad file, document or JSON Lines line)
    are reported, never block the valid ones."""
    from phg.model import MAX_INPUT_BYTES, parse_documents

    readings, errors = [], []
    for name in files:
        source = "stdin" if name == "-" else name
        try:
            if name == "-":
                data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)  # one byte over: parse_documents refuses it
            else:
                with open(name, "rb") as file:
                    data = file.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            errors.append(f"{source}: {exc.strerror}")
            continue
        found, refused = parse_documents(data, source)
        readings += found
        errors += map(str, refused)
    return readings, errors


@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["fhir", "hl7v2"]), default="fhir", show_default=True)
@click.option("--ig-version", type=click.Choice(["2.0.0", "1.1.0"]), help="PHD IG version (default: config).")
@click.pass_obj
def render(obj: Context, files: tuple[str, ...], fmt: str, ig_version: str | None) -> None:
    """Print what would be sent for FILES (no network, no queue): the FHIR transaction Bundle, or
    the HL7 v2 PCD-01 messages (one per reading; segments one per line here, CR on the wire)."""
    readings, errors = read_readings(files)
    for error in errors:
        click.secho(f"refused: {error}", fg="red", err=True)
    if not readings:
        sys.exit(EXIT_INPUT)
    config = obj.config()
    if fmt == "hl7v2":
        from phg.hl7v2 import render_messages

        messages = render_messages(readings, config.gateway)
        click.echo("\n\n".join(message.replace("\r", "\n").rstrip("\n") for message in messages))
    else:
        from phg.fhir import build_transaction, to_json

        bundle = build_transaction(readings, config.gateway, ig_version or config.ig_version).bundle
        click.echo(json.dumps(json.loads(to_json(bundle)), indent=2))
    sys.exit(EXIT_INPUT if errors else 0)


@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--no-deliver", is_flag=True, help="Only queue; `phg run` delivers later.")
@click.pass_obj
def send(obj: Context, files: tuple[str, ...], no_deliver: bool) -> None:
    """Queue the readings in FILES (or - for stdin) durably, then deliver what is due.

    Exit 74 (EX_IOERR) when the outbox cannot store them (disk full, read-only, not an outbox):
    nothing of this call was queued, the source must keep its readings."""
    from phg.errors import StorageError

    readings, errors = read_readings(files)
    for error in errors:
        click.secho(f"refused: {error}", fg="red", err=True)
    config = obj.config()
    try:
        outbox = obj.outbox()
        if readings:
            outbox.enqueue(config.destination_names, [(r.key, r.to_json()) for r in readings])
    except StorageError as exc:
        fail(f"{exc}\nnothing was queued: {len(readings)} reading(s) not stored; send them again once the "
             "outbox is writable", 74)
    click.echo(f"queued {len(readings)} reading(s) in {config.outbox_path}" + (f", refused {len(errors)}" if errors else ""))
    code = EXIT_INPUT if errors else 0
    if no_deliver or not (config.fhir_base or config.destinations):
        if not no_deliver:
            click.echo("no FHIR base URL configured: readings wait in the queue (phg run delivers them)")
        sys.exit(code)
    delivered = _deliver(config, outbox, until_idle=True)
    sys.exit(code or delivered)  # refused input says so even when the rest waits in the queue (75)


def _deliver(config, outbox, until_idle: bool) -> int:
    import asyncio
    import signal

    from phg.daemon import deliver, run_gateway

    stop = asyncio.Event()

    async def go():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if until_idle:
            return await deliver(config, outbox, until_idle=True, stop=stop)
        return await run_gateway(config, outbox, stop)

    from phg.errors import StorageError

    try:
        summary = asyncio.run(go())
    except (AuthError, ConfigError) as exc:
        fail(f"{exc}\ndelivery stopped; the queue is intact", EXIT_CONFIG)
    except StorageError as exc:  # only a run until idle gets here; `phg run` waits for the disk instead
        fail(f"{exc}\ndelivery stopped: the outbox cannot record it; what is queued stays queued "
             "(a reading sent meanwhile is sent again later, harmlessly)", 74)
    counts = outbox.counts()
    click.echo(f"delivered {summary.delivered}, dead {summary.dead}; "
               f"queue: {counts.get('queued', 0) + counts.get('inflight', 0)} waiting, {counts.get('dead', 0)} dead")
    if summary.dead:
        click.echo("see `phg queue ls --state dead` and `phg queue show ID` for the server's reasons")
        return EXIT_INPUT
    return EXIT_TEMPFAIL if counts.get("queued", 0) + counts.get("inflight", 0) else 0


@main.command()
@click.pass_obj
def run(obj: Context) -> None:
    """Deliver whatever is queued, retrying while the server is unreachable, and collect from the
    configured Bluetooth devices, until stopped (Ctrl-C)."""
    config = obj.config()
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    code = _deliver(config, obj.outbox(), until_idle=False)
    sys.exit(0 if code == EXIT_TEMPFAIL else code)


# ------------------------------------------------------------------------------------------ decode


@main.group(cls=Group, lazy={
    "ble": ("phg.cli.decode:decode_ble", "Decode a GATT characteristic: phg decode ble 2A18 HEX."),
    "11073": ("phg.cli.decode:decode_11073", "Decode an IEEE 11073-20601 APDU: phg decode 11073 HEX."),
})
def decode() -> None:
    """Decode a device payload (hex) and show what it becomes, as JSON."""


# ------------------------------------------------------------------------------------------ queue


@main.group()
def queue() -> None:
    """Show and repair the outbox."""


@queue.command("ls")
@click.option("--state", type=click.Choice(["queued", "inflight", "delivered", "dead"]))
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def queue_ls(obj: Context, state: str | None, limit: int) -> None:
    """List queued items (ids, states, attempts; no measured values)."""
    import time

    from phg.terminal import printable

    outbox = obj.outbox()
    counts = outbox.counts()
    click.echo("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "empty")
    for item in outbox.items(state=state, limit=limit):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.created))
        error = printable((item.last_error or "")[:60])
        click.echo(f"{item.id:>7}  {item.destination:<5} {item.state:<9} attempts {item.attempts:<3} {when}  {error}")


@queue.command("show")
@click.argument("item_id", type=int)
@click.pass_obj
def queue_show(obj: Context, item_id: int) -> None:
    """Show one item: its reading, state, last error or server ids."""
    from dataclasses import asdict

    item = obj.outbox().get(item_id)
    if item is None:
        fail(f"no outbox item {item_id}", EXIT_INPUT)
    data = asdict(item)
    data["payload"] = json.loads(item.payload)
    click.echo(json.dumps(data, indent=2))


@queue.command("retry")
@click.argument("item_id", type=int)
@click.pass_obj
def queue_retry(obj: Context, item_id: int) -> None:
    """Queue a dead item again (after fixing what the server complained about)."""
    if not obj.outbox().retry(item_id):
        fail(f"outbox item {item_id} does not exist or is delivered", EXIT_INPUT)
    click.echo(f"item {item_id} queued")


@queue.command("purge")
@click.option("--dead", is_flag=True, help="Remove dead items.")
@click.option("--delivered", is_flag=True,
              help="Erase delivered readings now (their keys stay: they are not queued again).")
@click.pass_obj
def queue_purge(obj: Context, dead: bool, delivered: bool) -> None:
    """Remove dead items and/or delivered readings for good."""
    if not (dead or delivered):
        raise click.UsageError("say what to purge: --dead, --delivered or both")
    outbox = obj.outbox()
    if dead:
        click.echo(f"removed {outbox.purge_dead()} dead item(s)")
    if delivered:
        click.echo(f"erased the readings of {outbox.purge_delivered()} delivered item(s)")


# ------------------------------------------------------------------------------------------ doctor / demo


@main.command()
@click.pass_obj
def doctor(obj: Context) -> None:
    """Check configuration, key, TLS, discovery, token and transaction support; say what is wrong."""
    import asyncio

    from phg.doctor import run_checks

    ok = asyncio.run(run_checks(obj.config(), lambda line: click.echo(line)))
    sys.exit(0 if ok else EXIT_CONFIG)


@main.command()
@click.option("--server", type=click.Choice(["sekmet", "medplum"]), default="sekmet", show_default=True)
def demo(server: str) -> None:
    """Run everything locally: FHIR + OAuth servers, emulated Bluetooth devices, delivery, a summary."""
    from phg.demo.run import run_demo

    sys.exit(run_demo(server=server, echo=click.echo))


@main.command()
@click.option("--no-deliver", is_flag=True, help="Only queue; `phg run` delivers later.")
@click.pass_obj
def simulate(obj: Context, no_deliver: bool) -> None:
    """Collect from the built-in emulated Bluetooth devices (glucose meter, BP cuff, scale,
    thermometer, pulse oximeter) through the real Bluetooth session, queue, then deliver."""
    import asyncio

    from phg.demo.emulator import collect_emulated
    from phg.intake import Intake
    from phg.model import PatientRef

    config = obj.config()
    patient = config.patient or PatientRef("urn:oid:1.2.3.4.5", "demo-patient-001")
    outbox = obj.outbox()
    fetched = asyncio.run(collect_emulated(Intake(outbox, config.destination_names), patient))
    click.echo(f"queued {sum(f.readings for f in fetched)} reading(s) from {len(fetched)} emulated devices")
    if no_deliver or not (config.fhir_base or config.destinations):
        sys.exit(0)
    sys.exit(_deliver(config, outbox, until_idle=True))


if __name__ == "__main__":
    main()
