"""Issue 11 (parts 2 and 3): one destination registry, one outcome set, one TLS policy, and the
HL7 format module free of delivery policy."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest

from phg.config import DESTINATION_TYPES, TlsSettings, load_config
from phg.delivery.hl7 import Hl7Destination
from phg.delivery.hl7http import HttpExchange
from phg.delivery.mllp import MllpExchange
from phg.delivery.registry import REGISTRY, open_destinations
from phg.delivery.tls import client_context
from phg.errors import ConfigError

SRC = Path(__file__).parent.parent / "src" / "phg"


def test_every_destination_type_has_one_opener():
    assert set(REGISTRY) == {cls.type for cls in DESTINATION_TYPES.values()}
    assert DESTINATION_TYPES["http"] is DESTINATION_TYPES["hl7-http"]  # the older name stays accepted


async def test_open_destinations_opens_every_configured_type_as_a_context_manager(tmp_path):
    config = load_config(env={}, document={
        "fhir": {"base_url": "http://127.0.0.1:9/fhir"},
        "destinations": {"lab": {"type": "mllp", "host": "127.0.0.1", "port": 9},
                         "v2": {"type": "http", "url": "http://127.0.0.1:9/hl7"},
                         "dec": {"type": "soap", "url": "http://127.0.0.1:9/pcd01"}}})
    async with open_destinations(config) as destinations:
        assert [d.name for d in destinations] == ["fhir", "lab", "v2", "dec"]
        hl7 = destinations[1:]
        assert all(isinstance(d, Hl7Destination) for d in hl7)
        assert isinstance(hl7[0].exchange, MllpExchange)
        assert isinstance(hl7[1].exchange, HttpExchange) and isinstance(hl7[2].exchange, HttpExchange)
        assert type(hl7[1].exchange.binding) is not type(hl7[2].exchange.binding)  # composed, not inherited
    assert all(d.exchange.client.is_closed for d in hl7[1:])  # closed on exit


def test_plain_mllp_beyond_loopback_is_refused_naming_the_table():
    config = load_config(env={}, document={"destinations": {"lab": {"type": "mllp", "host": "hl7.example", "port": 1}}})
    with pytest.raises(ConfigError, match=r"\[destinations.lab\] MLLP without TLS to hl7.example"):
        REGISTRY["mllp"](config.destinations[0], config.gateway)


def test_one_tls_policy_for_every_client(tmp_path):
    """TLS 1.2 or later and verification on, for MLLP as for HTTP (MLLP had no minimum before)."""
    context = client_context(TlsSettings())
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    mllp = MllpExchange(load_config(env={}, document={"destinations": {"lab": {
        "type": "mllp", "host": "hl7.example", "port": 1, "tls": True}}}).destinations[0])
    assert mllp.ssl is not None and mllp.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="ca_file"):
        client_context(TlsSettings(ca_file=bad, source="phg.toml: [destinations.lab]"))


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_hl7_format_modules_import_no_delivery_policy():
    """ACK classification lives in phg.delivery.hl7; phg.hl7v2 only parses and renders."""
    for path in (SRC / "hl7v2").glob("*.py"):
        assert not {m for m in imports(path) if m.startswith("phg.delivery")}, path.name


def test_hl7_exchanges_share_no_code_by_import_of_each_other():
    """HTTP does not borrow TLS or the batch loop from MLLP: both come from delivery.tls and delivery.hl7."""
    assert "phg.delivery.mllp" not in imports(SRC / "delivery" / "hl7http.py")
    assert "phg.delivery.hl7http" not in imports(SRC / "delivery" / "mllp.py")
