"""Secret-bearing files and clear-text links: refused or made private, as design.md requires."""

from __future__ import annotations

import pytest

from phg.delivery.mllp import MllpDestination
from phg.errors import ConfigError
from phg.model import Gateway
from phg.secretfile import require_private, write_private

GATEWAY = Gateway("02AB7FFFFE000001")


def test_write_private_is_0600_and_replaces_atomically(tmp_path):
    path = tmp_path / "phg.toml"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["phg.toml"]  # no temporary left behind


def test_require_private_names_the_file_and_the_fix(tmp_path):
    key = tmp_path / "k.pem"
    key.write_text("x")
    key.chmod(0o640)
    with pytest.raises(ConfigError, match=f"chmod 600 {key}"):
        require_private(key, "client key")
    key.chmod(0o600)
    require_private(key, "client key")


def test_plain_mllp_only_to_loopback_unless_allowed():
    MllpDestination(host="127.0.0.1", port=2575, gateway=GATEWAY)
    with pytest.raises(ConfigError, match="MLLP without TLS to hl7.example.org"):
        MllpDestination(host="hl7.example.org", port=2575, gateway=GATEWAY)
    MllpDestination(host="hl7.example.org", port=2575, gateway=GATEWAY, allow_insecure=True)
    MllpDestination(host="hl7.example.org", port=2575, gateway=GATEWAY, tls=True)
