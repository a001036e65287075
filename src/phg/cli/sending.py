"""The work of `phg send` (and of delivery until idle, which `run`, `simulate` and `queue retry` share),
without click: the `send` here is what phg.cli.main runs without importing click and what the click
command (phg.cli.readings) runs. Exit codes as phg.cli's."""

from __future__ import annotations

import sys

from phg.cli.common import EXIT_CONFIG, EXIT_INPUT, EXIT_IOERR, EXIT_TEMPFAIL, Context, echo, fail, queue_name
from phg.cli.output import print_json, progress
from phg.errors import AuthError, ConfigError, StorageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    import asyncio
    from typing import Any, NoReturn


def read_readings(files: tuple[str, ...], refuse: Any = None) -> tuple[list, list[str]]:
    """Parse every document of every file; invalid ones (a bad file, document or JSON Lines line)
    are reported, never block the valid ones. `refuse(reading, source)`: a ReadingError refusing a valid
    reading too (one no [[routes]] entry matches), or None."""
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
        if refuse is not None:
            verdicts = [(reading, refuse(reading, source)) for reading in found]
            found = [reading for reading, error in verdicts if error is None]
            refused += [error for _, error in verdicts if error is not None]
        readings += found
        errors += map(str, refused)
    for error in errors:
        echo(f"refused: {error}", err=True, red=True)
    return readings, errors


def distinct(readings: list) -> list:
    """The readings without repeats, in order: what the queue stores (a reading's key is its content
    hash, so readings with one key are the same reading)."""
    return list({r.key: r for r in readings}.values())


def send(obj: Context, config: Any, files: tuple[str, ...], no_deliver: bool, as_json: bool) -> NoReturn:
    """`phg send FILES [--no-deliver] [--json]` with ``obj.config()``: queue the readings durably, then deliver
    what is due."""
    from phg.intake import Intake, Stored, Unrouted, route
    from phg.viewstore import open_view

    def unrouted(reading: Any, source: str) -> Unrouted | None:
        return None if route(reading, config.destination_names, config.routes) else Unrouted(reading, source)

    readings, errors = read_readings(files, unrouted if config.routes else None)
    try:
        outbox = obj.queue(config)
        intake = Intake(outbox, config.destination_names, view=open_view(config.view),  # [view]: kept for the view too
                        routes=config.routes)
        stored = intake.store(readings) if readings else Stored(0, 0)
    except StorageError as exc:
        from phg.viewstore import ViewStoreError

        if isinstance(exc, ViewStoreError):  # kept there before they are queued (phg.intake): nothing queued
            fail(f"{exc}\nnothing was queued: {len(readings)} reading(s) not stored, as the view store ([view]) "
                 "cannot keep them; send them again once it can", EXIT_IOERR)
        if config.queue.engine == "sqlite" and not config.routes:  # one transaction: all or nothing
            fail(f"{exc}\nnothing was queued: {len(readings)} reading(s) not stored; send them again once the "
                 "outbox is writable", EXIT_IOERR)
        fail(f"{exc}\n{len(readings)} reading(s) not all stored; send them again once the queue is writable "
             "(those already stored are recognised, not queued twice)", EXIT_IOERR)
    summary: dict[str, Any] = {"outbox": queue_name(config), "queued": stored.new, "dropped": stored.known,
                               "refused": errors}
    if not as_json:
        dropped = f" ({stored.known} already queued or repeated: dropped)" if stored.known else ""
        echo(f"queued {stored.new} reading(s) in {queue_name(config)}{dropped}"
             + (f", refused {len(errors)}" if errors else ""))
    code = EXIT_INPUT if errors else 0
    if not no_deliver and not config.deliverable:
        summary["note"] = ("no destination configured: the readings wait in the queue until one is; set [fhir] "
                           "base_url (or PHG_FHIR_BASE_URL, --fhir-base; `phg init` writes a config), then `phg run` "
                           "delivers them")
        if not as_json:
            echo(summary["note"])
        no_deliver = True
    if not no_deliver:
        delivered = deliver_until_idle(config, outbox, summary, as_json)
        code = code or delivered  # refused input says so even when the rest waits in the queue (75)
    outbox.close()
    if as_json:
        print_json(summary)
    sys.exit(code)


def deliver_until_idle(config: Any, outbox: Any, summary: dict[str, Any], as_json: bool) -> int:
    """Deliver what is due, with a progress bar on a terminal; add the totals to ``summary`` (printed
    here as one line unless ``as_json``) and return the exit code."""
    from phg.daemon import deliver

    def waiting() -> int:
        counts = outbox.counts()
        return counts["queued"] + counts["inflight"]

    async def go(stop: asyncio.Event) -> Any:
        async with progress(waiting, "delivering", show=not as_json):
            return await deliver(config, outbox, until_idle=True, stop=stop)

    return report(run(go), outbox, summary, as_json)


def report(totals: Any, outbox: Any, summary: dict[str, Any], as_json: bool) -> int:
    """Add delivery's totals and the queue's state to ``summary`` (printed here as one line unless
    ``as_json``); the exit code: 1 readings dead-lettered, 75 readings still waiting, else 0."""
    counts = outbox.counts()
    summary.update(delivered=totals.delivered, dead=totals.dead,
                   waiting=counts["queued"] + counts["inflight"], dead_in_queue=counts["dead"])
    if not as_json:
        echo(f"delivered {totals.delivered}, dead {totals.dead}; "
             f"queue: {summary['waiting']} waiting, {counts['dead']} dead")
        if totals.dead:
            echo("see `phg queue ls --state dead` and `phg queue show ID` for the server's reasons")
    if totals.dead:
        return EXIT_INPUT
    return EXIT_TEMPFAIL if summary["waiting"] else 0


def run(work: Any) -> Any:
    """Run ``work(stop)`` until done or SIGINT / SIGTERM (which set ``stop``); phg's delivery errors
    become one line (once) and an exit code."""
    import asyncio
    import logging
    import signal

    class Shown(logging.Handler):
        """Remembers the errors phg's loggers have shown (delivery logs a destination that stops, when it
        stops), so that the CLI does not print them a second time."""

        def __init__(self) -> None:
            super().__init__(logging.ERROR)
            self.errors: list[BaseException] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.errors += [arg for arg in record.args or () if isinstance(arg, BaseException)]

    async def go() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await work(stop)

    shown = Shown()
    logging.getLogger("phg").addHandler(shown)
    try:
        return asyncio.run(go())
    except (AuthError, ConfigError) as exc:
        told = any(error is exc for error in shown.errors)
        fail(("" if told else f"{exc}\n") + "delivery stopped; the queue is intact", EXIT_CONFIG)
    except StorageError as exc:  # only a run until idle gets here; `phg run` waits for the disk instead
        from phg.viewstore import ViewStoreError

        if isinstance(exc, ViewStoreError):  # `phg run`'s SQLite view store at start-up (phg.daemon)
            fail(f"{exc}\nphg run stopped: its view store ([view] path) cannot be used; what is queued stays "
                 "queued", EXIT_IOERR)
        fail(f"{exc}\ndelivery stopped: the queue cannot record it; what is queued stays queued "
             "(a reading sent meanwhile is sent again later, harmlessly)", EXIT_IOERR)
    finally:
        logging.getLogger("phg").removeHandler(shown)
