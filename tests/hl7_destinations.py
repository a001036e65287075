"""HL7 v2 destinations for tests, built the way phg builds them: a settings class of phg.config
opened through phg.delivery.registry (keyword arguments are the settings' fields; ca_file,
client_cert and client_key go into its TlsSettings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phg.config import HttpHl7Settings, MllpSettings, SoapSettings, TlsSettings
from phg.delivery.hl7 import Hl7Destination
from phg.delivery.registry import open_destination
from phg.model import Gateway


def _open(cls: type, name: str, gateway: Gateway, ca_file: Path | None = None, client_cert: Path | None = None,
          client_key: Path | None = None, **fields: Any) -> Hl7Destination:
    tls = TlsSettings(ca_file and Path(ca_file), client_cert and Path(client_cert), client_key and Path(client_key),
                      "test")
    destination = open_destination(cls(name=name, source="test", tls_settings=tls, **fields), gateway)
    assert isinstance(destination, Hl7Destination)
    return destination


def mllp_destination(*, gateway: Gateway, name: str = "mllp", **fields: Any) -> Hl7Destination:
    return _open(MllpSettings, name, gateway, **fields)


def http_destination(*, gateway: Gateway, name: str = "http", **fields: Any) -> Hl7Destination:
    return _open(HttpHl7Settings, name, gateway, **fields)


def soap_destination(*, gateway: Gateway, name: str = "soap", **fields: Any) -> Hl7Destination:
    return _open(SoapSettings, name, gateway, **fields)
