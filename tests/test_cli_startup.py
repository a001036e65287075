"""What `phg send --no-deliver` and `phg render` load and write (issue 16): one reading is queued without
importing click, the HTTP client, the event loop or the JSON Schema validator, the way phg.cli.main runs
`phg send` without click answers as the click command does, and render writes exactly the bytes delivery
would POST for the same readings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import click
import platformdirs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from phg.cli import GLOBAL_OPTIONS, LOG_FORMAT_VARIABLE, SEND_OPTIONS, parse_send
from phg.cli.commands import main as group
from phg.cli.readings import send as send_command
from phg.config import user_config_path, user_data_dir
from phg.demo.peers import free_port
from phg.demo.sim import simulated_readings
from phg.fhir import build_transaction, to_json
from phg.model import Gateway, PatientRef, from_canonical_json
from test_cli import PHG, READINGS, env  # noqa: F401  (env: the fixture of a user without config)

# What queueing one reading must not load (issue 16: `phg send --no-deliver` at most ~4x the interpreter's
# start-up): click, logging (queueing in SQLite logs nothing: the CLI sets logging up only to deliver or for
# JetStream), TOML (no config file here), the HTTP client, the event loop, the JSON Schema validator, rich; and
# phg's own delivery side: the FHIR and HL7 mappings, the destinations, auth, the JetStream queue, metrics, orjson,
# TLS and sockets.
HEAVY = ("click", "logging", "tomllib", "uuid", "httpx", "asyncio", "jsonschema", "rich", "phg.fhir", "phg.hl7v2",
         "phg.delivery", "phg.auth", "phg.daemon", "phg.outbox.jetstream", "phg.metrics", "prometheus_client", "orjson",
         "ssl", "socket", "concurrent.futures", "importlib.metadata", "importlib.resources")


def _send_loads(tmp_path: Path, env: dict[str, str], modules: tuple[str, ...]) -> list[str]:  # noqa: F811
    """Which of ``modules`` `phg send one.json --no-deliver` (phg.cli.main, as the console script) loads."""
    path = tmp_path / "one.json"
    path.write_text(READINGS[0].to_json())
    script = ("import atexit, sys\n"
              f"atexit.register(lambda: print(sorted(m for m in {modules!r} if m in sys.modules), file=sys.stderr))\n"
              f"sys.argv = ['phg', 'send', {str(path)!r}, '--no-deliver']\n"
              "from phg.cli import main\nmain()\n")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "queued 1 reading(s)" in done.stdout
    return json.loads(done.stderr.strip().splitlines()[-1].replace("'", '"'))


def test_send_no_deliver_imports_nothing_heavy(tmp_path, env):  # noqa: F811
    assert _send_loads(tmp_path, env, HEAVY) == []


def test_send_no_deliver_imports_no_dataclasses_nor_typing(tmp_path, env):  # noqa: F811
    """Importing dataclasses brings inspect, ast, dis and tokenize, and each class compiles generated code (phg's
    records are phg.frozen's); typing is ~9 M instructions (callgrind), and phg's modules on this path import it
    only for type checkers (``TYPE_CHECKING = False``)."""
    assert _send_loads(tmp_path, env, ("dataclasses", "typing")) == []


@pytest.mark.skipif(sys.platform != "linux", reason="elsewhere phg.config asks platformdirs itself")
@pytest.mark.parametrize("outbox", ["given", "default"])
def test_send_no_deliver_on_linux_imports_no_platformdirs(tmp_path, env, outbox):  # noqa: F811
    """The default config file is looked for (PHG_CONFIG empty), and with "default" the outbox is the data
    directory's, both found by phg.config itself: platformdirs imports tempfile, shutil, lzma and more."""
    if outbox == "default":
        env = {**env, "PHG_OUTBOX": ""}
    assert _send_loads(tmp_path, env, ("platformdirs",)) == []


# A directory variable: unset (None), empty, blank, relative, absolute, with trailing or doubled slashes, a tilde.
_DIRECTORY = st.none() | st.sampled_from(["", " ", " /x", "/", "//", "/home/u", "/home/u/", "//srv/u", "/a//b/",
                                          "rel", "rel/dir", "~", "~/x", "/x y"]) | st.text("/ab ~.", max_size=8)


@pytest.mark.skipif(sys.platform != "linux", reason="elsewhere phg.config asks platformdirs itself")
@settings(max_examples=400, deadline=None)
@given(home=_DIRECTORY, config=_DIRECTORY, data=_DIRECTORY)
@example(home=None, config=None, data=None).via("no variable: platformdirs asks the password database")
@example(home="/", config="rel", data="").via("HOME is the root")
def test_the_default_directories_are_platformdirs(home, config, data):
    """phg.config's default directories are platformdirs', whatever HOME, XDG_CONFIG_HOME and XDG_DATA_HOME hold
    (on Linux it finds the common case itself; issue 16)."""
    with mock.patch.dict(os.environ):
        for name, value in (("HOME", home), ("XDG_CONFIG_HOME", config), ("XDG_DATA_HOME", data)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        assert user_config_path() == Path(platformdirs.user_config_dir("phg")) / "phg.toml"
        assert user_data_dir() == Path(platformdirs.user_data_dir("phg"))


# ------------------------------------------------------------------------------------------ send without click


# Each command line run both ways, in its own directory ({d}): phg.cli.main, and the click group itself.
_WAYS = {"main": "from phg.cli import main", "click": "from phg.cli.commands import main"}
_RUN = """import atexit, json, sys
way, args, marker = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.argv = ["phg", *args]
atexit.register(lambda: open(marker, "w").write(str("click" in sys.modules)))
exec(way + "\\nmain()")
"""
_CASES = [  # (arguments, stdin, the click-free way runs it)
    (["send", "{d}/one.json", "--no-deliver"], None, True),
    (["send", "{d}/one.json", "{d}/one.json", "--json", "--no-deliver", "--json"], None, True),
    (["send", "--no-deliver", "{d}/bad.json", "{d}/one.json"], None, True),
    (["send", "{d}/missing.json", "--no-deliver"], None, True),
    (["send", "-", "--no-deliver"], "{one}", True),
    (["send", "{d}/one.json"], None, True),  # nowhere to deliver to: a note
    (["--config", "{d}/none.toml", "send", "{d}/one.json", "--no-deliver"], None, True),
    (["--outbox", "{d}", "-v", "--verbose", "--log-format", "text", "send", "{d}/one.json", "--no-deliver"], None,
     True),  # the outbox is a directory: 74
    (["--log-format", "json", "--outbox", "{d}/other.sqlite", "send", "--json", "{d}/one.json"], None, True),
    (["send", "--no-deliver"], None, False),  # no FILES: click's usage error
    (["send", "{d}/one.json", "--bogus"], None, False),
    (["send", "--help"], None, False),
    (["--log-format", "xml", "send", "{d}/one.json"], None, False),
    (["send", "--", "{d}/one.json", "--no-deliver"], None, False),
    (["-vv", "send", "{d}/one.json", "--no-deliver"], None, False),
    (["--config={d}/none.toml", "send", "{d}/one.json"], None, False),
    (["render", "{d}/one.json"], None, False),
]


def _takes(option: click.Option) -> object:
    """What the option takes, in the terms of phg.cli's tables."""
    if option.count:
        return "count"
    if option.is_flag:
        return "flag"
    if isinstance(option.type, click.Choice):
        return tuple(option.type.choices)
    return "path" if isinstance(option.type, click.Path) else option.type.name


@pytest.mark.parametrize(("table", "command"), [(GLOBAL_OPTIONS, group), (SEND_OPTIONS, send_command)],
                         ids=["global", "send"])
def test_the_options_send_runs_with_without_click_are_the_click_commands(table, command):
    """Each option of phg.cli's tables is the click command's: same parameter, same kind, one value, the same
    environment variable."""
    options = {opt: param for param in command.params if isinstance(param, click.Option) for opt in param.opts}
    for opt, (name, takes) in table.items():
        option = options[opt]
        assert (option.name, _takes(option)) == (name, takes), opt
        assert option.nargs == 1 and not option.multiple and not option.secondary_opts, opt
        assert option.envvar == (LOG_FORMAT_VARIABLE if name == "log_format" else None), opt


def test_send_without_click_knows_every_option_of_send():
    """Nothing send takes is left to a default the click-free way might not share: its table holds every
    option of `send` (and FILES is its one argument)."""
    arguments = [param for param in send_command.params if isinstance(param, click.Argument)]
    assert [(a.name, a.nargs, a.required) for a in arguments] == [("files", -1, True)]
    assert {opt for param in send_command.params if isinstance(param, click.Option) for opt in param.opts} == \
        set(SEND_OPTIONS)


def _click_params(args: list[str]) -> dict[str, object]:
    """The parameters click parses from `phg ARGS` for the group and `send`."""
    with group.make_context("phg", list(args)) as ctx:
        sub = send_command.make_context("send", list(ctx.args), parent=ctx)
    return {**ctx.params, **sub.params}


@pytest.mark.parametrize("log_format", [None, "json"])
def test_send_without_click_parses_as_click_does(monkeypatch, log_format):
    """Every command line phg.cli.main runs without click gives the parameters click gives; the others it
    leaves to click."""
    monkeypatch.delenv(LOG_FORMAT_VARIABLE, raising=False)
    if log_format:
        monkeypatch.setenv(LOG_FORMAT_VARIABLE, log_format)
    for args, _, fast in _CASES:
        args = [arg.format(d="/d") for arg in args]
        ours = parse_send(args, os.environ)
        if not fast:
            assert ours is None, args
            continue
        theirs = _click_params(args)
        assert {**ours, "files": tuple(ours["files"])} == {key: theirs[key] for key in ours}, args


def _both_ways(tmp_path: Path, env: dict[str, str], args: list[str], stdin: str | None) -> dict[str, tuple]:  # noqa: F811
    answers = {}
    for way, code in _WAYS.items():
        d = tmp_path / way
        d.mkdir()
        (d / "one.json").write_text(READINGS[0].to_json())
        (d / "bad.json").write_text('{"device": {}}')
        done = subprocess.run([sys.executable, "-c", _RUN, code, json.dumps([a.format(d=d) for a in args]),
                               str(d / "marker")],
                              env={**os.environ, **env, "PHG_OUTBOX": str(d / "outbox.sqlite")},
                              input=stdin and stdin.format(one=READINGS[0].to_json()), capture_output=True,
                              text=True, timeout=60)
        answers[way] = (done.returncode, done.stdout.replace(str(d), "{d}"), done.stderr.replace(str(d), "{d}"),
                        (d / "marker").read_text())
    return answers


@pytest.mark.parametrize(("args", "stdin", "fast"), _CASES, ids=[" ".join(case[0]) for case in _CASES])
def test_send_answers_alike_with_and_without_click(tmp_path, env, args, stdin, fast):  # noqa: F811
    """The same exit code, stdout and stderr; click imported only for what phg.cli.main leaves to it."""
    answers = _both_ways(tmp_path, env, args, stdin)
    assert answers["main"][:3] == answers["click"][:3]
    assert answers["main"][3] == str(not fast)


# Command lines that log, each with its environment: delivery to a server that refuses connections (75), with a
# key file that is no key (3), and queueing in a JetStream that cannot be reached (74, phg.outbox.jetstream logs
# each attempt); {key} is a file of mode 0600 that holds no key.
_REFUSED = {"PHG_FHIR_BASE_URL": f"http://127.0.0.1:{free_port()}/fhir"}
_VARIABLES = {"refused": _REFUSED, "bad key": {**_REFUSED, "PHG_CLIENT_ID": "phg", "PHG_KEY_FILE": "{key}"},
              "jetstream": {"PHG_QUEUE_ENGINE": "jetstream", "PHG_QUEUE_SERVERS": f"nats://127.0.0.1:{free_port()}"}}
_LOGGING_CASES = [  # (arguments, environment, exit code)
    (["send", "{d}/one.json"], "refused", 75),
    (["-v", "send", "{d}/one.json", "--json"], "refused", 75),
    (["--log-format", "json", "-v", "send", "{d}/one.json"], "refused", 75),
    (["send", "{d}/one.json"], "bad key", 3),
    (["-v", "--log-format", "json", "send", "--json", "{d}/one.json"], "bad key", 3),
    (["send", "{d}/one.json", "--no-deliver"], "jetstream", 74),
    (["-v", "--log-format", "json", "send", "{d}/one.json", "--no-deliver", "--json"], "jetstream", 74),
]
# What differs from one run to the next in a log line: its time, and the retry's random share of its backoff.
_CHANGING = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}|"time": "[^"]*"|next try in [\d.]+ s', re.MULTILINE)


@pytest.mark.parametrize(("args", "variables", "code"), _LOGGING_CASES,
                         ids=[f"{' '.join(args)} ({variables})" for args, variables, _ in _LOGGING_CASES])
def test_send_logs_alike_with_and_without_click(tmp_path, env, args, variables, code):  # noqa: F811
    """Where something on the way logs, both ways set logging up alike: the same lines (-v: INFO too; json:
    one object per line), errors printed once, the same exit code; phg.cli.main runs each without click."""
    key = tmp_path / "key.pem"
    key.write_text("no key\n")
    key.chmod(0o600)
    answers = _both_ways(tmp_path, {**env, **{k: v.format(key=key) for k, v in _VARIABLES[variables].items()}}, args, None)
    main, clicked = ((returned, *(_CHANGING.sub("...", text) for text in texts))
                     for returned, *texts, _ in (answers["main"], answers["click"]))
    assert main == clicked
    assert answers["main"][0] == code and parse_send(args, {}) is not None  # (httpx imports click: no marker)


@pytest.mark.parametrize("value", ["json", "bogus"])
def test_send_takes_the_log_format_variable_as_click_does(tmp_path, env, value):  # noqa: F811
    answers = _both_ways(tmp_path, {**env, LOG_FORMAT_VARIABLE: value}, ["-v", "send", "{d}/one.json"], None)
    assert answers["main"][:3] == answers["click"][:3]
    assert answers["main"][3] == str(value == "bogus")


def test_render_writes_the_bytes_delivery_sends(tmp_path, env):  # noqa: F811
    """Delivery builds from the stored canonical JSON (from_canonical_json), render from the document:
    the same bundles, byte for byte, batch_size readings each."""
    readings = READINGS + simulated_readings(PatientRef("urn:oid:1.2.3.4.5", "render"),
                                             datetime(2026, 11, 29, 9, tzinfo=UTC), per_device=12)
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(r.to_json() for r in readings) + "\n")
    done = subprocess.run([PHG, "render", str(path)], env={**os.environ, **env}, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    gateway = Gateway(system_id="02AB7FFFFE00C11A")
    stored = [from_canonical_json(r.to_json(), "outbox") for r in readings]
    assert done.stdout.split(b"\n")[:-1] == [to_json(build_transaction(stored[i:i + 50], gateway).bundle)
                                             for i in range(0, len(stored), 50)]
