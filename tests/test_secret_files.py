"""Secret-bearing files and clear-text links: refused or made private, as phg requires (mode 0600, or refused)."""

from __future__ import annotations

import pytest

from hl7_destinations import mllp_destination
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
    mllp_destination(host="127.0.0.1", port=2575, gateway=GATEWAY)
    with pytest.raises(ConfigError, match="MLLP without TLS to hl7.example.org"):
        mllp_destination(host="hl7.example.org", port=2575, gateway=GATEWAY)
    mllp_destination(host="hl7.example.org", port=2575, gateway=GATEWAY, allow_insecure=True)
    mllp_destination(host="hl7.example.org", port=2575, gateway=GATEWAY, tls=True)


@pytest.mark.parametrize("key", ["client_secret", "password", "token", "registration_access_token"])
def test_a_config_file_holding_a_secret_must_be_private(tmp_path, key):

    from phg.config import load_config

    path = tmp_path / "phg.toml"
    path.write_text(f'[fhir]\nbase_url = "https://ehr.example.org/fhir"\n\n[auth]\n{key} = "s3cret"\n')
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=f"holds \\[auth\\] {key}.*mode 0644.*chmod 600 {path}") as caught:
        load_config(path, env={})
    assert "s3cret" not in str(caught.value)
    path.chmod(0o600)
    assert load_config(path, env={}).auth.secrets() == ["s3cret"]


def test_a_config_file_without_secrets_may_be_readable(tmp_path):

    from phg.config import load_config

    path = tmp_path / "phg.toml"
    path.write_text('[auth]\nclient_id = "gw"\nmethod = "client-secret-basic"\n')
    path.chmod(0o644)
    settings = load_config(path, env={"PHG_CLIENT_SECRET": "from-the-environment"}).auth
    assert settings.client_secret == "from-the-environment"
