"""Issue #7, bad input: the config loader under hypothesis. Whatever the file holds (arbitrary text,
arbitrary bytes, well-formed TOML with any sections, keys and value types) and whatever the PHG_*
environment says, `load_config` returns a Config or raises ConfigError naming the file or the
variable: never another exception, never a hang (each example has a deadline).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from phg.config import DESTINATION_TYPES, SECTIONS, SETTINGS, Config, load_config
from phg.errors import ConfigError

FUZZ = settings(max_examples=100, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
KNOWN_KEYS = sorted({row.key for row in SETTINGS} | {"type", "host", "port", "url"})
ENVIRONMENT = sorted(row.variable for row in SETTINGS)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="phg-fuzz-config-") as name:
        yield Path(name)


def load(path: Path, env: dict[str, str] | None = None) -> Config | None:
    """load_config, with the only acceptable failure swallowed: a ConfigError that says where."""
    try:
        return load_config(path, env=env or {})
    except ConfigError as exc:
        message = str(exc)
        assert message and (str(path) in message or "environment PHG_" in message), message
        return None


# ------------------------------------------------------------------------------------ a small TOML writer


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string (lone surrogates aside: TOML refuses them)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, table in doc.items():
        if not isinstance(table, dict):
            continue
        lines.append(f"[{json.dumps(section)}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


scalars = st.one_of(
    st.booleans(), st.integers(), st.integers(min_value=-5, max_value=5000), st.floats(),
    st.text(max_size=30), st.sampled_from(["50", "²", "٣", "1e3", "", " ", "2.0.0", "1.1.0", "http://127.0.0.1/fhir",
                                           "https://x", "02AB7FFFFE00C11A", "C0:00:00:00:18:08", "mllp", "~nobody/x"]),
    st.datetimes(), st.dates(), st.times(),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=3), max_leaves=8)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=12)
tables = st.dictionaries(keys, values, max_size=6)
destinations = st.dictionaries(st.text(max_size=8) | st.just("fhir"),
                               st.dictionaries(st.sampled_from(["type", "host", "port", "url"]) | keys, values,
                                               max_size=4) | values, max_size=3)
documents = st.dictionaries(st.sampled_from([*SECTIONS, "destinations", "unknown"]) | st.text(max_size=10),
                            tables | values, max_size=6) | st.fixed_dictionaries({"destinations": destinations})

# [destinations.lab] of each type, with that type's own keys (and stray ones) holding any value
destination_tables = st.sampled_from(sorted(DESTINATION_TYPES)).flatmap(lambda kind: st.fixed_dictionaries(
    {"type": st.just(kind)}, optional={**{row.key: values for row in DESTINATION_TYPES[kind].KEYS}, "extra": values}))


# ------------------------------------------------------------------------------------ the properties


@FUZZ
@given(text=st.text(max_size=400))
@example(text="[fhir\nbase_url = ")
@example(text="[delivery]\nbatch_size = '²'\n")
def test_arbitrary_text(workdir, text):
    path = workdir / "text.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    load(path)


@FUZZ
@given(data=st.binary(max_size=400))
@example(data=b"\xff\xfe[fhir]\n")
@example(data=b'[fhir]\nbase_url = "\xc3\x28"\n')
def test_arbitrary_bytes(workdir, data):
    path = workdir / "bytes.toml"
    path.write_bytes(data)
    load(path)


@FUZZ
@given(doc=documents)
@example(doc={"destinations": {"lab": {"type": []}}})
@example(doc={"delivery": {"batch_size": "²"}})
@example(doc={"delivery": {"lease_seconds": float("nan")}})
@example(doc={"ble": {"allow": ["C0:00:00:00:18:08"], "scan_seconds": float("inf")},
              "patient": {"system": "s", "value": "v"}})
def test_well_formed_toml_with_any_sections_keys_and_values(workdir, doc):
    path = workdir / "doc.toml"
    path.write_text(toml_document(doc), encoding="utf-8", errors="surrogatepass")
    config = load(path)
    if config is not None:
        assert 1 <= config.batch_size <= 1000 and 1 <= config.lease_seconds <= 3600
        assert config.destination_names


@FUZZ
@given(env=st.dictionaries(st.sampled_from(ENVIRONMENT), st.text(max_size=40), max_size=len(ENVIRONMENT)))
@example(env={"PHG_GATEWAY_SYSTEM_ID": "02-AB-7F"})
@example(env={"PHG_IG_VERSION": "3.0.0"})
@example(env={"PHG_TOKEN_URL": " "})  # a blank URL is no URL (it was a TypeError from httpx)
def test_any_environment(workdir, env):
    path = workdir / "empty.toml"
    path.write_text("")
    load(path, env)


def test_a_path_that_is_not_a_readable_file(workdir):
    for path in (workdir / "missing.toml", workdir):  # absent, a directory
        with pytest.raises(ConfigError) as caught:
            load_config(path, env={})
        assert str(path) in str(caught.value)


@FUZZ
@given(table=destination_tables)
@example(table={"type": "mllp", "host": "127.0.0.1", "port": 70000})
@example(table={"type": "fhir", "base_url": "https://x", "auth": {"method": 3}})
@example(table={"type": "soap", "url": "https://x", "saml_assertion": "/nonexistent/assertion.xml"})
def test_any_destination_table(workdir, table):
    """Each type's settings class refuses what it cannot take with file and key: never a TypeError."""
    path = workdir / "destination.toml"
    path.write_text(toml_document({"destinations": {"lab": table}}), encoding="utf-8", errors="surrogatepass")
    path.chmod(0o600)
    config = load(path)
    if config is not None:
        assert isinstance(config.destinations[-1], DESTINATION_TYPES[table["type"]])
