"""The library API (issue 11): a reading document to a FHIR Bundle and to PCD-01 in a few lines, from
`import phg`, and `import phg` alone loads none of it."""

from __future__ import annotations

import json
import subprocess
import sys

import phg

DOCUMENT = {"device": {"system_id": "00-1C-05-FF-FE-00-78-25"},
            "patient": {"system": "urn:oid:1.2.3.4", "value": "pt-001"},
            "metrics": [{"code": 150456, "value": "97.0", "unit": "%", "time": "2026-11-28T09:00:00+01:00"}]}


def test_a_reading_to_a_bundle_in_a_few_lines() -> None:
    readings, refused = phg.parse_documents(json.dumps(DOCUMENT).encode(), "doc.json")
    assert refused == [] and len(readings) == 1
    gateway = phg.Gateway(system_id="0102030405060708")
    bundle = phg.build_transaction(readings, gateway).bundle
    assert bundle["type"] == "transaction"
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert b'"value":97.0' in phg.to_json(observations[0])  # the device's precision kept
    (message,) = phg.render_messages(readings, gateway)
    assert message.startswith("MSH|^~\\&|")


def test_the_api_names_are_listed_and_unknown_names_fail() -> None:
    assert set(phg.__all__) == {*phg._API, "__version__"}
    assert all(getattr(phg, name) is not None for name in phg.__all__)
    try:
        phg.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("phg.no_such_thing did not raise")


def test_import_phg_loads_no_mapping() -> None:
    code = "import sys, phg; print(sorted(m for m in sys.modules if m.startswith('phg.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
