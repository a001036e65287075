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
    assert config.auth.client_id == "my-gateway"
    assert config.auth.key_file == tmp_path / "k.pem"
    assert config.outbox_path == tmp_path / "o.sqlite"
    assert len(config.gateway.system_id) == 16


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, '[fhir]\nbase_url = "https://a.example/fhir/"\n')
    config = load_config(path, env={"PHG_FHIR_BASE_URL": "https://b.example/fhir", "PHG_CLIENT_ID": "c1"})
    assert config.fhir_base == "https://b.example/fhir"
    assert config.auth.client_id == "c1"
    assert load_config(path, env={}).fhir_base == "https://a.example/fhir"


@pytest.mark.parametrize("text, words", [
    ("[fhir]\nig_version = \"3.0\"\n", "[fhir] ig_version must be one of 2.0.0, 1.1.0"),
    ("[delivery]\nbatch_size = \"many\"\n", "[delivery] batch_size must be a whole number, 1..1000, not 'many'"),
    ("[delivery]\nmax_retry_delay = \"5m\"\n", "[delivery] max_retry_delay must be a whole number, 1..86400 s, not '5m'"),
    ("[delivery]\nbatch_size = 0\n", "batch_size must be 1..1000"),
    ("[gateway]\nsystem_id = \"12\"\n", "[gateway] system_id must be an EUI-64"),
    ("[fhr]\n", "unknown section [fhr] (did you mean [fhir]?); known: [gateway], [fhir],"),
    ("[rout]\n", "unknown section [rout] (did you mean [[routes]]?); known: [gateway],"),
    ('[fhir]\nbase_url = "https://x.example/fhir"\nclient_id = "gw"\n',
     "unknown key 'client_id' in [fhir] ('client_id' is a key of [auth] or [smart]: TOML gives a key to the header "
     "above it); known: allow_insecure_http,"),
    ('[auth]\nbase_url = "https://x.example/fhir"\n', "unknown key 'base_url' in [auth] ('base_url' is a key of [fhir]"),
    ('[api]\nclient_secret = "s"\n', "unknown key 'client_secret' in [api] ('client_secret' is a key of [auth] or"),
    ('[destinations.ehr2]\ntype = "fhir"\nbase_url = "https://x.example/fhir"\nclient_id = "gw"\n',
     "unknown key 'client_id' in [destinations.ehr2] (type fhir) ('client_id' is a key of [destinations.ehr2.auth]"),
    ('[destinations.ehr2]\ntype = "fhir"\nbase_url = "https://x.example/fhir"\n[destinations.ehr2.auth]\ntimeout = 5\n',
     "unknown key 'timeout' in [destinations.ehr2.auth] ('timeout' is a key of [destinations.ehr2]:"),
    ("[destination.lab]\n", "unknown section [destination] (did you mean [destinations.NAME]?)"),
    ('base_url = "https://x.example/fhir"\n[fhir]\n', "'base_url' is outside any section: move it below [fhir]"),
    ('fhir = "https://x.example/fhir"\n', "[fhir] must be a table"),
    ('[[route]]\ndestinations = ["fhir"]\n', "unknown key 'route' outside any section (did you mean [[routes]]?)"),
    ('[[routes]]\ndestinatons = ["fhir"]\n', "[[routes]] #1: unknown key 'destinatons' (did you mean 'destinations'?)"),
    ("[fhir\n", "not valid TOML"),
])
def test_errors_name_file_and_key(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(path) in str(info.value)
    assert words in str(info.value)


@pytest.mark.parametrize(("env", "document", "words"), [
    ({"PHG_QUEUE_MAX_BYTES": "x"}, {}, "[queue] max_bytes must be a whole number, 0..9007199254740992, not 'x'"),
    ({"PHG_QUEUE_MAX_IN_FLIGHT": "0"}, {}, "[queue] max_in_flight must be 1..1000000"),
    ({"PHG_QUEUE_MAX_BYTES": "90071992547409930"}, {}, "[queue] max_bytes must be 0..9007199254740992"),
    ({}, {"api": {"max_body": 1}}, "[api] max_body must be 1024..67108864 bytes"),
    ({}, {"auth": {"key_publish_delay": -1}}, "[auth] key_publish_delay must be 0..31536000 s"),
    ({}, {"destinations": {"lab": {"type": "http", "url": "https://x", "timeout": 0}}},
     "[destinations.lab] timeout must be 0.1..600 s"),
])
def test_a_range_refused_is_written_as_it_is_typed(env, document, words):
    """All the digits of a whole bound (`:g` printed 9.0072e+15, 1e+06, 6.71089e+07: unreadable, or not the
    bound), a fraction as is."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env, document=document)
    assert str(info.value).endswith(words)


@pytest.mark.parametrize("endpoint", ["/metadata", "/.well-known/smart-configuration", "/metadata/"])
def test_a_fhir_base_given_as_an_endpoint_below_it_names_the_base(endpoint):
    """The CapabilityStatement's or the SMART configuration's URL, copied from a server's documentation, as the
    FHIR base: refused with the base to give (else doctor fails at discovery with a 401 from .../metadata/metadata)."""
    wanted = "give the FHIR base, 'https://ehr.example.org/fhir'"
    given = f"https://ehr.example.org/fhir{endpoint}"
    cases = [({"fhir": {"base_url": given}}, {}, {}, "[fhir] base_url"),
             ({}, {"PHG_FHIR_BASE_URL": given}, {}, "environment PHG_FHIR_BASE_URL: [fhir] base_url"),
             ({}, {}, {("fhir", "base_url"): given}, "--fhir-base: [fhir] base_url"),
             ({"destinations": {"ehr2": {"type": "fhir", "base_url": given}}}, {}, {}, "[destinations.ehr2] base_url")]
    for document, env, flags, where in cases:
        with pytest.raises(ConfigError) as info:
            load_config(None, env=env, flags=flags, document=document)
        assert where in str(info.value) and wanted in str(info.value)
    assert load_config(None, env={"PHG_FHIR_BASE_URL": "https://ehr.example.org/metadata-service/fhir"},
                       document={}).fhir_base == "https://ehr.example.org/metadata-service/fhir"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize("name", ["~0", "~no-such-user-here/key.pem"])
def test_a_home_directory_this_machine_lacks_is_named(name):
    """`~user` of a user without a home directory: a ConfigError naming the variable and key (pathlib raises
    RuntimeError; tests/test_fuzz_config.py found it in CI with PHG_VIEW_PASSWORD_FILE=~0)."""
    env = {"PHG_VIEW_URL": "postgresql://phg@127.0.0.1/phg_view", "PHG_VIEW_PASSWORD_FILE": name}
    with pytest.raises(ConfigError, match=r"PHG_VIEW_PASSWORD_FILE: \[view\] password_file: .*home directory"):
        load_config(None, env=env)


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


@pytest.mark.parametrize("url", ["ehr.example.org/fhir", "127.0.0.1:8080/fhir", "localhost:8080", "/fhir"])
def test_a_url_without_its_scheme_is_shown_with_it(url):
    with pytest.raises(ConfigError) as info:
        require_secure_url(url, "[fhir] base_url")
    way = "" if url.startswith("/") else f": write it with its scheme, 'https://{url}'"  # a path alone has no host
    assert str(info.value) == f"[fhir] base_url {url!r} is not an absolute https URL{way}"


@pytest.mark.parametrize(("what", "way"), [
    ("[fhir] base_url", " (or set [fhir] allow_insecure_http = true on a network you trust)"),
    ("phg.toml: [auth] token_url", " (or set [fhir] allow_insecure_http = true on a network you trust)"),
    ("phg.toml: [destinations.v2] url", " (or set [destinations.v2] allow_insecure_http = true on a network you trust)"),
    ("[destinations.ehr2.auth] token_url",
     " (or set [destinations.ehr2] allow_insecure_http = true on a network you trust)"),
    ("phg.toml: [smart] redirect_url", ""),  # no way around https there
    ("token endpoint", " (or set allow_insecure_http = true in the server's table, [fhir] or [destinations.NAME], "
                       "on a network you trust)"),  # announced by a server: [fhir]'s, or a destination's
])
def test_plain_http_names_the_setting_that_allows_it(what, way):
    """The opt-out named is the one that applies to that URL: a destination's own table's, none for [smart]
    (each said "set [fhir] allow_insecure_http", which changes nothing for them)."""
    with pytest.raises(ConfigError) as info:
        require_secure_url("http://ehr.example.org/x", what)
    assert str(info.value) == f"{what} 'http://ehr.example.org/x' uses plain http to a non-loopback host; use https{way}"


def test_an_invalid_url_with_a_password_is_refused_without_it():
    """httpx's reason quotes what it could not parse: here the password's first part, read as the port."""
    with pytest.raises(ConfigError) as info:
        require_secure_url("https://u:s3/cr3t@ehr.example.org/token", "[auth] token_url")
    assert str(info.value).startswith("[auth] token_url is not a valid URL (not shown, nor httpx's reason")
    with pytest.raises(ConfigError, match=r"'https://ehr.example.org:99x/token' is not a valid URL: Invalid port: '99x'"):
        require_secure_url("https://ehr.example.org:99x/token", "[auth] token_url")


@pytest.mark.parametrize("text", [
    '[fhir]\nbase_url = "https://u:s3cr3t@ehr.example.org/fhir"\n',
    '[fhir]\nbase_url = "http://u:s3cr3t@127.0.0.1:8080/fhir"\n',  # loopback http: allowed, but not with credentials
    '[fhir]\nbase_url = "https://ehr.example.org/fhir"\n[auth]\nclient_id = "c"\nclient_secret = "x"\n'
    'token_url = "https://u:s3cr3t@ehr.example.org/token"\n',
    '[destinations.lab]\ntype = "hl7-http"\nurl = "https://u:s3cr3t@hl7.example.org/in"\n',
    '[destinations.ehr2]\ntype = "fhir"\nbase_url = "https://u:s3cr3t@ehr2.example.org/fhir"\n',
])
def test_a_url_with_user_and_password_is_refused_without_showing_them(tmp_path, text):
    """httpx would send user:password@ as HTTP Basic credentials to whoever answers (and log the URL): every URL phg
    sends to is refused with them, at load, the password never shown."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert "carries credentials" in str(info.value) and "***@" in str(info.value) and "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(("setting", "way"), [
    ("", ""), ("[destinations.ehr2]", " (or set [destinations.ehr2] allow_insecure_http = true on a network you trust)")])
def test_plain_http_names_the_setting_its_caller_gives(setting, way):
    with pytest.raises(ConfigError) as info:
        require_secure_url("http://ehr.example.org/x", "[fhir] token endpoint", insecure_setting=setting)
    assert str(info.value).endswith(f"uses plain http to a non-loopback host; use https{way}")


def test_destinations_tables(tmp_path):
    path = write(tmp_path, '[fhir]\nbase_url = "https://ehr.example.org/fhir"\n'
                           '[destinations.lab]\ntype = "mllp"\nhost = "hl7.example.org"\nport = 2575\n')
    config = load_config(path, env={})
    assert config.destination_names == ["fhir", "lab"]
    assert (config.destinations[1].host, config.destinations[1].port) == ("hl7.example.org", 2575)
    only_v2 = write(tmp_path, '[destinations.lab]\ntype = "http"\nurl = "https://x.example/hl7"\n')
    assert load_config(only_v2, env={}).destination_names == ["lab"]
    assert load_config(write(tmp_path, ""), env={}).destination_names == ["fhir"]  # queued until configured


@pytest.mark.parametrize("text, words", [
    ('[destinations.lab]\ntype = "ftp"\n', "[destinations.lab] type must be one of fhir, mllp, hl7-http, http, soap"),
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
    with pytest.raises(ConfigError, match=r"unknown key 'base_ur' in \[fhir\] \(did you mean 'base_url'\?\); "
                                          r"known: allow_insecure_http, base_url"):
        load_config(path, env={})
    far = write(tmp_path, '[auth]\nzzz = 1\n')  # nothing like it: no guess, the list alone
    with pytest.raises(ConfigError, match=r"unknown key 'zzz' in \[auth\]; known: "):
        load_config(far, env={})


def test_auth_parsed_once_by_the_loader(tmp_path):
    path = write(tmp_path, '[auth]\nclient_id = "a"\nmethod = "client-secret-basic"\n')
    auth = load_config(path, env={"PHG_CLIENT_ID": "b"}).auth
    assert (auth.client_id, auth.method) == ("b", "client-secret-basic")
    with pytest.raises(ConfigError, match=r"\[auth\] method must be one of"):
        load_config(write(tmp_path, '[auth]\nmethod = "client_secret_basic"\n'), env={})


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
    ('[patient]\nsystem = "a"\nvalue = "b"\n[ble]\nallow = [1]\n', "[ble] allow must be a list of strings"),
])
def test_bluetooth_errors(tmp_path, text, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(write(tmp_path, text), env={})


# ------------------------------------------------------------------------------------------ issue 11: one table


def test_the_table_every_setting_defined_once_with_one_variable(tmp_path):
    """Issue 11 acceptance: every row has a unique PHG_* name, its default parses, its variable
    overrides the file, and the template written by `phg init` or the README mentions it."""
    from phg.config import ROWS, SETTINGS

    assert len(ROWS) == len(SETTINGS)  # no (section, key) twice
    variables = [row.variable for row in SETTINGS]
    assert len(set(variables)) == len(variables) and all(v.startswith("PHG_") for v in variables)
    template = render_template(tmp_path / "k.pem", tmp_path / "o.sqlite")
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for row in SETTINGS:
        if row.default is not None:
            assert row.parse(row.default, "default") == row.default, row
        documented = f"{row.key} =" in template or re.search(rf"`(\[{row.section}\] )?{row.key}`", readme)
        assert documented, f"[{row.section}] {row.key} is undocumented"
        derived = f"PHG_{row.section}_{row.key}".upper()
        assert row.variable == derived or row.variable in readme, f"{row.variable} is undocumented"


@pytest.mark.parametrize(("section", "key", "file_value", "env_value", "expected"), [
    ("fhir", "timeout", "30", "45", 45.0), ("delivery", "batch_size", "10", "20", 20),
    ("auth", "scope", '"a"', "b", "b"), ("ble", "pair_new", "false", "true", True),
    ("outbox", "keep_delivered", '"7d"', "1h", 3600.0), ("ieee11073", "max_connections", "4", "8", 8),
])
def test_each_variable_overrides_the_file(tmp_path, section, key, file_value, env_value, expected):
    from phg.config import ROWS

    extra = '[patient]\nsystem = "s"\nvalue = "v"\n' if section == "ble" else ""
    path = write(tmp_path, f"{extra}[{section}]\n{key} = {file_value}\n")
    config = load_config(path, env={ROWS[(section, key)].variable: env_value})
    found = {("fhir", "timeout"): lambda c: c.fhir.timeout, ("delivery", "batch_size"): lambda c: c.batch_size,
             ("auth", "scope"): lambda c: c.auth.scope, ("ble", "pair_new"): lambda c: c.ble_pair_new,
             ("outbox", "keep_delivered"): lambda c: c.keep_delivered,
             ("ieee11073", "max_connections"): lambda c: c.ieee11073_max_connections}[(section, key)](config)
    assert found == expected


def test_each_destination_type_has_its_settings_class(tmp_path):
    from phg.config import FhirSettings, HttpHl7Settings, MllpSettings, SoapSettings

    path = write(tmp_path, '[delivery]\nlease_seconds = 600\n'
                           '[destinations.lab]\ntype = "mllp"\nhost = "127.0.0.1"\nport = 2575\nack_timeout = 5\n'
                           '[destinations.old]\ntype = "http"\nurl = "https://x.example/hl7"\n'
                           '[destinations.new]\ntype = "hl7-http"\nurl = "https://y.example/hl7"\nae_retries = 1\n'
                           '[destinations.dec]\ntype = "soap"\nurl = "https://z.example/pcd01"\nusername = "gw"\n'
                           '[destinations.ehr2]\ntype = "fhir"\nbase_url = "https://ehr2.example/fhir"\n'
                           '[destinations.ehr2.auth]\nclient_id = "gw2"\n')
    path.chmod(0o600)
    config = load_config(path, env={})
    kinds = [type(d) for d in config.destinations]
    assert kinds == [MllpSettings, HttpHl7Settings, HttpHl7Settings, SoapSettings, FhirSettings]
    assert config.destination_names == ["lab", "old", "new", "dec", "ehr2"]
    assert config.destinations[2].ae_retries == 1 and config.destinations[3].username == "gw"
    assert config.destinations[4].auth.client_id == "gw2" and config.destinations[4].auth.method == "smart-backend"


@pytest.mark.parametrize(("table", "words"), [
    ('type = "mllp"\nhost = "h"\nport = 1\nack_timout = 5\n',
     "unknown key 'ack_timout' in [destinations.lab] (type mllp) (did you mean 'ack_timeout'?)"),
    ('type = "mllp"\nhost = "h"\n', "[destinations.lab] (type mllp) needs port"),
    ('type = "http"\nurl = "https://x"\ntimeout = "soon"\n', "[destinations.lab] timeout must be a number, 0.1..600 s"),
    ('type = "soap"\nurl = "https://x"\nusername = "u"\nsaml_assertion = "<a/>"\n', "saml_assertion or username"),
    ('type = "mllp"\nhost = "h"\nport = 1\nack_timeout = 600\n', "lease_seconds (120 s) must be at least"),
])
def test_destination_keys_are_refused_by_their_class(tmp_path, table, words):
    """No **kwargs and no TypeError turned into a ConfigError: each class's own key list names the key."""
    path = write(tmp_path, f"[destinations.lab]\n{table}")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert words in str(info.value) and str(path) in str(info.value)


def test_flags_override_environment_and_file(tmp_path):
    path = write(tmp_path, '[fhir]\nbase_url = "https://a.example/fhir"\n')
    config = load_config(path, env={"PHG_FHIR_BASE_URL": "https://b.example/fhir"},
                         flags={("fhir", "base_url"): "https://c.example/fhir/", ("auth", "client_id"): None})
    assert config.fhir_base == "https://c.example/fhir" and config.auth.fhir_base == "https://c.example/fhir"
