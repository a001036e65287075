"""The `phg` command. Heavy modules are imported inside the commands so that `phg --help` is instant.

Exit codes: 0 done; 1 bad input or readings dead-lettered; 2 usage; 3 configuration or
authorization problem (the queue is intact); 74 (EX_IOERR) the outbox could not be written (nothing
was queued); 75 (EX_TEMPFAIL) readings still queued for a retry.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from phg.cli.common import EXIT_CONFIG, EXIT_INPUT, Context, Group, fail
from phg.cli.output import JSON_OPTION, print_json


@click.group(cls=Group, lazy={
    "render": ("phg.cli.readings:render", "Print what would be sent for FILES, byte for byte (no network, no queue)."),
    "send": ("phg.cli.readings:send", "Queue the readings in FILES (or - for stdin), then deliver what is due."),
    "run": ("phg.cli.readings:run", "Collect from the configured sources and deliver, until stopped."),
    "simulate": ("phg.cli.readings:simulate", "Collect from built-in emulated Bluetooth devices, queue, deliver."),
    "queue": ("phg.cli.queue:queue", "Show and repair the outbox: ls, show, retry, purge."),
    "ble": ("phg.cli.ble:ble", "Bluetooth LE health devices: scan, fetch."),
    "11073": ("phg.cli.ieee11073:ieee11073", "IEEE 11073-20601 manager: listen for agents."),
    "hl7": ("phg.cli.hl7:hl7", "HL7 v2 PCD-01 tools: check a message."),
    "keys": ("phg.cli.auth:keys", "The gateway's signing keys: generate, rotate, show the public JWKS."),
    "register": ("phg.cli.auth:register", "Register this gateway with the server (RFC 7591) and save the client."),
    "serve-jwks": ("phg.cli.auth:serve_jwks", "Publish the public JWKS at a URL (for jwks_uri / jku)."),
    "api-key": ("phg.cli.apikey:api_key", "API keys for the service: create (printed once), list, revoke."),
    "view": ("phg.cli.view:view", "The reading store the view in the EHR reads: forget a patient."),
})
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Config file (default: $PHG_CONFIG or the user config dir).")
@click.option("--fhir-base", help="FHIR base URL (overrides [fhir] base_url).")
@click.option("--client-id", help="SMART client_id (overrides [auth] client_id).")
@click.option("--key", "key_file", type=click.Path(path_type=Path), help="Private key file (overrides [auth] key_file).")
@click.option("--scope", help="Scopes to request (overrides [auth] scope).")
@click.option("--outbox", "outbox_path", type=click.Path(path_type=Path), help="Outbox database (overrides [outbox] path).")
@click.option("-v", "--verbose", count=True, help="-v: progress (INFO); -vv: DEBUG (may include server messages).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="PHG_LOG_FORMAT", help="json: one JSON object per log line (for journald, Loki...).")
@click.version_option(package_name="phg")
@click.pass_context
def main(ctx: click.Context, config_path, fhir_base, client_id, key_file, scope, outbox_path, verbose,
         log_format) -> None:
    """phg: a Personal Health Gateway. Device readings -> FHIR (HL7 PHD IG) -> your EHR, securely,
    through a durable queue."""
    from phg.logformat import JsonFormatter
    from phg.terminal import PrintableFormatter

    handler = logging.StreamHandler()  # log lines may quote a server: no control characters reach the terminal
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], handlers=[handler])
    if verbose < 2:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    ctx.obj = Context(config_path, {("fhir", "base_url"): fhir_base, ("auth", "client_id"): client_id,
                                    ("auth", "key_file"): key_file and str(key_file), ("auth", "scope"): scope,
                                    ("outbox", "path"): outbox_path and str(outbox_path)})


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


# ------------------------------------------------------------------------------------------ decode


@main.group(cls=Group, lazy={
    "ble": ("phg.cli.decode:decode_ble", "Decode a GATT characteristic: phg decode ble 2A18 HEX."),
    "11073": ("phg.cli.decode:decode_11073", "Decode an IEEE 11073-20601 APDU: phg decode 11073 HEX."),
})
def decode() -> None:
    """Decode a device payload (hex) and show what it becomes, as JSON."""


# ------------------------------------------------------------------------------------------ doctor / demo


@main.command()
@click.option("--send-test", is_flag=True, help="Send one test message (MSH-11 = T) to each MLLP destination.")
@JSON_OPTION
@click.pass_obj
def doctor(obj: Context, send_test: bool, as_json: bool) -> None:
    """Check every destination (FHIR: key, TLS, discovery, token, transactions; MLLP, HL7 HTTP, SOAP:
    connection and TLS) and the queue (the outbox file, or JetStream); say what is wrong. --json: {"ok",
    "config", "checks": [{destination, step, status (ok, fail, warn), what, fix}]}."""
    import asyncio

    from phg.doctor import run_checks

    config = obj.config()
    checks: list[dict[str, str | None]] = []
    echo = (lambda line: None) if as_json else click.echo
    ok = asyncio.run(run_checks(config, echo, send_test=send_test, results=checks))
    if as_json:
        print_json({"ok": ok, "config": config.source, "checks": checks})
    sys.exit(0 if ok else EXIT_CONFIG)


@main.command()
@click.option("--server", type=click.Choice(["sekmet", "medplum"]), default="sekmet", show_default=True)
@click.option("--no-auth", is_flag=True,
              help="sekmet-fhir alone, without the OAuth server and the SMART gate: no Node.js needed.")
def demo(server: str, no_auth: bool) -> None:
    """Run everything locally: FHIR + OAuth servers, emulated Bluetooth devices, delivery, a summary."""
    from phg.demo.run import run_demo

    sys.exit(run_demo(server=server, auth=not no_auth, echo=click.echo))


if __name__ == "__main__":
    main()
