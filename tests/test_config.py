"""Config: file, environment, errors naming file and key, and the plain-http rule."""

import re
from pathlib import Path

import pytest

from phg.config import load_config, render_template
from phg.errors import ConfigError
from phg.model import PatientRef
from phg.transport import require_secure_url


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phg.toml"
    path.write_text(text)
    return path


def test_template_loads(tmp_path):
    path = write(tmp_path, render_template(tmp_path / "k.pem", tmp_path / "o.sqlite"))
    config = load_config(path, env={})
    assert config.fhir_base == "https://ehr.example.org/fhir"
    assert config.client_id == "my-gateway"
    assert config.key_file == tmp_path / "k.pem"
    assert config.outbox_path == tmp_path / "o.sqlite"
    assert len(config.gateway.system_id) == 16


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, '[fhir]\nbase_url = "https://a.example/fhir/"\n')
    config = load_config(path, env={"PHG_FHIR_BASE_URL": "https://b.example/fhir", "PHG_CLIENT_ID": "c1"})
    assert config.fhir_base == "https://b.example/fhir"
    assert config.client_id == "c1"
    assert load_config(path, env={}).fhir_base == "https://a.example/fhir"


@pytest.mark.parametrize("text, words", [
    ("[fhir]\nig_version = \"3.0\"\n", "[fhir] ig_version must be one of 2.0.0, 1.1.0"),
    ("[delivery]\nbatch_size = \"many\"\n", "[delivery] batch_size must be a int"),
    ("[delivery]\nbatch_size = 0\n", "batch_size must be 1..1000"),
    ("[gateway]\nsystem_id = \"12\"\n", "[gateway] system_id must be an EUI-64"),
    ("[fhr]\n", "unknown section [fhr]"),
    ("[fhir\n", "not valid TOML"),
])
def test_errors_name_file_and_key(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(path) in str(info.value)
    assert words in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize("url", ["https://ehr.example.org/fhir", "http://127.0.0.1:8080/fhir",
                                 "http://localhost/fhir", "http://[::1]:9/fhir"])
def test_allowed_urls(url):
    require_secure_url(url, "base")


def test_plain_http_elsewhere_refused_unless_allowed():
    with pytest.raises(ConfigError, match="plain http"):
        require_secure_url("http://ehr.example.org/fhir", "base")
    require_secure_url("http://ehr.example.org/fhir", "base", allow_insecure_http=True)
    with pytest.raises(ConfigError, match="not an absolute https URL"):
        require_secure_url("ftp://x/fhir", "base", allow_insecure_http=True)


def test_destinations_tables(tmp_path):
    path = write(tmp_path, '[fhir]\nbase_url = "https://ehr.example.org/fhir"\n'
                           '[destinations.lab]\ntype = "mllp"\nhost = "hl7.example.org"\nport = 2575\n')
    config = load_config(path, env={})
    assert config.destination_names == ["fhir", "lab"]
    assert config.destinations[0].settings == {"host": "hl7.example.org", "port": 2575}
    only_v2 = write(tmp_path, '[destinations.lab]\ntype = "http"\nurl = "https://x.example/hl7"\n')
    assert load_config(only_v2, env={}).destination_names == ["lab"]
    assert load_config(write(tmp_path, ""), env={}).destination_names == ["fhir"]  # queued until configured


@pytest.mark.parametrize("text, words", [
    ('[destinations.lab]\ntype = "ftp"\n', "[destinations.lab] type must be one of mllp, http, soap"),
    ('[destinations.fhir]\ntype = "mllp"\n', "the name 'fhir' is the [fhir] server's"),
    ('[destinations]\nlab = 3\n', "[destinations.lab] must be a table"),
])
def test_destination_errors(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert words in str(info.value) and str(path) in str(info.value)


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, '[fhir]\nbase_ur = "https://x.example/fhir"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'base_ur' in \[fhir\]; known: allow_insecure_http, base_url"):
        load_config(path, env={})


def test_auth_table_kept_whole_for_phg_auth(tmp_path):
    path = write(tmp_path, '[auth]\nclient_id = "a"\nmethod = "client_secret_basic"\n')
    assert load_config(path, env={"PHG_CLIENT_ID": "b"}).auth == {"client_id": "b", "method": "client_secret_basic"}


def test_patient_and_bluetooth(tmp_path):
    path = write(tmp_path, '[patient]\nsystem = "urn:oid:1.2.3"\nvalue = "p1"\n'
                           '[ble]\nallow = ["C0:00:00:00:18:08"]\nscan_seconds = 3\n')
    config = load_config(path, env={})
    assert config.patient == PatientRef("urn:oid:1.2.3", "p1")
    assert config.ble_enabled and config.ble_allow == ("C0:00:00:00:18:08",) and config.ble_scan_seconds == 3.0
    assert not load_config(write(tmp_path, ""), env={}).ble_enabled


@pytest.mark.parametrize("text, words", [
    ('[ble]\npair_new = true\n', "[ble] collects readings for a [patient]"),
    ('[patient]\nsystem = "urn:oid:1"\n', "[patient] needs both system and value"),
    ('[patient]\nsystem = "a"\nvalue = "b"\n[ble]\nallow = [1]\n', "[ble] allow must be a list of Bluetooth addresses"),
])
def test_bluetooth_errors(tmp_path, text, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(write(tmp_path, text), env={})
