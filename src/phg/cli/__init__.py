"""The `phg` command.

Exit codes: 0 done; 1 bad input or readings dead-lettered; 2 usage; 3 configuration or
authorization problem (the queue is intact); 74 (EX_IOERR) the outbox, or the view store ([view]), could
not be written (nothing was queued); 75 (EX_TEMPFAIL) readings still queued for a retry.

`main` is the console script (pyproject: phg.cli:main). A `phg send` command line of the form below is run
at once, without importing click (issue 16: importing click alone costs about what the interpreter's own
start-up does); every other command line, --help and every usage error go to the click group
(phg.cli.commands.main), which `main` stands for otherwise: CliRunner().invoke(main, ...) reaches it. Both ways
run phg.cli.sending.send; tests/test_cli_startup.py checks the table below against the click definitions
and that both ways answer alike.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from typing import Any

# The options a `phg send` command line is run with without click: phg's global options (before `send`) and
# send's own, as option -> (parameter name in the click command, what it takes: "flag", "count", "path" or the
# values of a Choice). Anything else (another option, --opt=value, -vv, --, a value that starts with "-") goes
# to click.
GLOBAL_OPTIONS: dict[str, tuple[str, Any]] = {
    "--config": ("config_path", "path"), "--outbox": ("outbox_path", "path"),
    "-v": ("verbose", "count"), "--verbose": ("verbose", "count"), "--log-format": ("log_format", ("text", "json"))}
SEND_OPTIONS: dict[str, tuple[str, Any]] = {"--no-deliver": ("no_deliver", "flag"), "--json": ("as_json", "flag")}
LOG_FORMAT_VARIABLE = "PHG_LOG_FORMAT"  # --log-format's environment variable


def parse_send(args: list[str], env: dict[str, str] | os._Environ) -> dict[str, Any] | None:
    """The parameters click would give for ``args`` of the form `[GLOBAL OPTIONS] send FILES [OPTIONS]` (files:
    any argument not starting with "-", or "-" for stdin), or None when ``args`` are not of that form."""
    params: dict[str, Any] = {"config_path": None, "outbox_path": None, "verbose": 0, "log_format": None,
                              "no_deliver": False, "as_json": False, "files": []}
    options, at = GLOBAL_OPTIONS, 0
    while at < len(args):
        arg, at = args[at], at + 1
        if options is GLOBAL_OPTIONS and arg == "send":
            options = SEND_OPTIONS
        elif arg == "-" or not arg.startswith("-"):
            if options is GLOBAL_OPTIONS:
                return None  # another command
            params["files"].append(arg)
        elif arg not in options:
            return None
        elif (takes := options[arg][1]) == "flag":
            params[options[arg][0]] = True
        elif takes == "count":
            params[options[arg][0]] += 1
        else:
            if at == len(args) or not args[at] or args[at].startswith("-"):
                return None
            value, at = args[at], at + 1
            if takes != "path" and value not in takes:
                return None
            params[options[arg][0]] = Path(value) if takes == "path" else value
    if options is GLOBAL_OPTIONS or not params["files"] or env.get("_PHG_COMPLETE"):  # shell completion: click's
        return None
    if params["log_format"] is None:
        params["log_format"] = env.get(LOG_FORMAT_VARIABLE) or GLOBAL_OPTIONS["--log-format"][1][0]
        if params["log_format"] not in GLOBAL_OPTIONS["--log-format"][1]:
            return None
    return params


def send(params: dict[str, Any]) -> None:
    """`phg send` with ``params`` (parse_send's), as the click group runs it: logging (when anything on the way
    can log), the context, phg's errors as one line; Ctrl-C and a closed pipe end it as click's main ends a
    command."""
    from phg.cli.common import Context, echo, one_line_errors, setup_logging
    from phg.cli.sending import send as send_readings

    try:
        with one_line_errors():
            obj = Context.from_options(params["config_path"], outbox_path=params["outbox_path"])
            config = obj.config()
            # Only queueing in the SQLite outbox logs nothing (tests/test_cli_startup.py: no logging imported);
            # delivery and the JetStream queue log.
            if not params["no_deliver"] or config.queue.engine != "sqlite":
                setup_logging(params["verbose"], params["log_format"])
            send_readings(obj, config, tuple(params["files"]), params["no_deliver"], params["as_json"])
    except (EOFError, KeyboardInterrupt):
        echo("", err=True)
        echo("Aborted!", err=True)
        sys.exit(1)
    except BrokenPipeError:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115  (nothing more can be written)
        sys.exit(1)


class Main:
    """`phg`: runs a `phg send` command line without click, anything else with the click group, which it
    stands for otherwise (attributes are the group's)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs and (params := parse_send(sys.argv[1:], os.environ)) is not None:
            send(params)
        return self.group(*args, **kwargs)

    @property
    def group(self) -> Any:
        from phg.cli.commands import main as group

        return group

    def __getattr__(self, name: str) -> Any:
        return getattr(self.group, name)


main = Main()

if __name__ == "__main__":
    main()
