"""The `phg` command group, on click: its global options and the commands that live here (init, decode,
doctor, demo); the others are imported only when run (Group's `lazy`), which keeps `phg --help` fast.
`phg send` usually runs without this module (phg.cli.main)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from phg.cli.common import EXIT_CONFIG, EXIT_INPUT, EXIT_IOERR, Context, fail, one_line_errors, setup_logging
from phg.cli.options import JSON_OPTION
from phg.cli.output import print_json


class Group(click.Group):
    """Turns phg's own errors into one clear line and an exit code instead of a traceback.

    `lazy` maps command names to ("module:attribute", short help) of commands that live beside
    their feature (e.g. the Bluetooth commands in phg.cli.ble). They are imported
    only when run: listing them uses the short help given here, which keeps `phg --help` fast."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            from importlib import import_module

            module, attribute = self.lazy[name][0].split(":")
            return getattr(import_module(module), attribute)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy:
                rows.append((name, self.lazy[name][1]))
            elif (command := super().get_command(ctx, name)) is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - max(map(len, self.list_commands(ctx))))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors():
            return super().invoke(ctx)


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
    setup_logging(verbose, log_format)
    ctx.obj = Context.from_options(config_path, fhir_base, client_id, key_file, scope, outbox_path)


# ------------------------------------------------------------------------------------------ init


@main.command()
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_obj
def init(obj: Context, force: bool) -> None:
    """Write a commented config file to edit."""
    from phg.config import render_template, user_config_path, user_data_dir

    # Where every other command looks (phg.config.load_config): --config, else $PHG_CONFIG, else the user config dir;
    # resolved, as a relative name (or a "~" no shell expanded) is read from this directory only.
    looked_up = (Path(os.environ["PHG_CONFIG"]) if os.environ.get("PHG_CONFIG") else user_config_path()).resolve()
    path = (obj.config_path or looked_up).resolve()
    if path.exists() and not force:
        fail(f"{path} exists (use --force to overwrite)", EXIT_INPUT)
    from phg.secretfile import write_private

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0600: the [auth] table may come to hold a client secret or a registration access token.
        write_private(path, render_template(user_data_dir() / "phg-key.pem", user_data_dir() / "outbox.sqlite"))
    except OSError as exc:  # $PHG_CONFIG naming /etc/phg/phg.toml for a user who cannot write there, a directory
        fail(f"{path}: cannot write the config: {exc.strerror or exc}", EXIT_IOERR)
    # A file only --config names is read only by the commands given it too: the next steps say so.
    phg = "phg" if path == looked_up else f"phg --config {path}"
    click.echo(f"wrote {path}\nnext: edit [fhir] base_url and [auth] client_id, run `{phg} keys generate` and "
               f"register the printed JWKS with your EHR, then `{phg} doctor` checks every step")


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
