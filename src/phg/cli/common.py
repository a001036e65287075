"""What every phg command shares: the context (config, queue), the exit codes, one failure path,
and the group that turns phg's errors into one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from phg.errors import AuthError, ConfigError, PhgError

EXIT_INPUT, EXIT_CONFIG, EXIT_TEMPFAIL = 1, 3, 75


class Context:
    def __init__(self, config_path: Path | None, flags: dict[tuple[str, str], Any]):
        self.config_path = config_path
        self.flags = flags  # {(section, key): value or None}: the global options, parsed with the config

    def config(self):
        from phg.config import load_config

        return load_config(self.config_path, flags=self.flags)

    def queue(self, config=None):
        """The configured queue ([queue] engine: the SQLite outbox file, or JetStream), open."""
        from phg.outbox import open_queue

        return open_queue(config or self.config())


def queue_name(config) -> str:
    """Where readings queue, for a person: the outbox file, or JetStream's servers and prefix."""
    if config.queue.engine == "jetstream":
        return f"JetStream {', '.join(config.queue.servers)} (prefix {config.queue.prefix})"
    return str(config.outbox_path)


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` (without control characters: it may quote a server) and exit with ``code``."""
    from phg.terminal import printable

    click.secho(f"error: {printable(message)}", fg="red", err=True)
    sys.exit(code)


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
        try:
            return super().invoke(ctx)
        except (ConfigError, AuthError) as exc:
            fail(str(exc), EXIT_CONFIG)
        except PhgError as exc:
            fail(str(exc), EXIT_INPUT)
