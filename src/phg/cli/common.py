"""What every phg command shares, without click (`phg send` runs without importing it: phg.cli): the
context (config, queue), the exit codes, logging, how a line is printed, and one failure path."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from phg.errors import AuthError, ConfigError, PhgError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from typing import Any, NoReturn

EXIT_INPUT, EXIT_CONFIG, EXIT_IOERR, EXIT_TEMPFAIL = 1, 3, 74, 75  # sysexits.h: EX_IOERR 74, EX_TEMPFAIL 75
_ANSI = re.compile(r"\033\[[;?0-9]*[a-zA-Z]")  # the codes click.echo strips when its stream is no terminal


class Context:
    def __init__(self, config_path: Path | None, flags: dict[tuple[str, str], Any]):
        self.config_path = config_path
        self.flags = flags  # {(section, key): value or None}: the global options, parsed with the config

    @classmethod
    def from_options(cls, config_path: Path | None = None, fhir_base: str | None = None, client_id: str | None = None,
                     key_file: Path | None = None, scope: str | None = None,
                     outbox_path: Path | None = None) -> Context:
        """The context of phg's global options (None: not given)."""
        return cls(config_path, {("fhir", "base_url"): fhir_base, ("auth", "client_id"): client_id,
                                 ("auth", "key_file"): key_file and str(key_file), ("auth", "scope"): scope,
                                 ("outbox", "path"): outbox_path and str(outbox_path)})

    def config(self):
        from phg.config import load_config

        return load_config(self.config_path, flags=self.flags)

    def queue(self, config=None):
        """The configured queue ([queue] engine: the SQLite outbox file, or JetStream), open."""
        from phg.outbox import open_queue

        return open_queue(config or self.config())


def setup_logging(verbose: int, log_format: str) -> None:
    """-v: INFO, -vv: DEBUG (httpx's own lines only then); "json": one JSON object per line (phg.logformat).
    Log lines may quote a server: no control characters reach the terminal."""
    import logging

    from phg.logformat import JsonFormatter
    from phg.terminal import PrintableFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], handlers=[handler])
    if verbose < 2:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def queue_name(config) -> str:
    """Where readings queue, for a person: the outbox file, or JetStream's servers and prefix."""
    if config.queue.engine == "jetstream":
        return f"JetStream {', '.join(config.queue.servers)} (prefix {config.queue.prefix})"
    return str(config.outbox_path)


def echo(text: str, *, err: bool = False, red: bool = False) -> None:
    """``text`` and a line feed on stdout (``err``: stderr), flushed, as click.echo (click.secho(fg="red")
    with ``red``) writes it: colour and ANSI codes only on a terminal."""
    stream = sys.stderr if err else sys.stdout
    if red:
        text = f"\033[31m{text}\033[0m"
    if not stream.isatty():
        text = _ANSI.sub("", text)
    stream.write(text + "\n")
    stream.flush()


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` (without control characters: it may quote a server) and exit with ``code``."""
    from phg.terminal import printable

    echo(f"error: {printable(message)}", err=True, red=True)
    sys.exit(code)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """phg's own errors as one clear line and an exit code instead of a traceback: 3 for configuration and
    authorization, 1 for the rest."""
    try:
        yield
    except (ConfigError, AuthError) as exc:
        fail(str(exc), EXIT_CONFIG)
    except PhgError as exc:
        fail(str(exc), EXIT_INPUT)
