"""Settings, parsed once: flags, PHG_* environment variables and one TOML file become frozen, typed
settings. Nothing else in phg reads the file or the environment.

Precedence (highest first): command-line flags, PHG_* environment variables, the config file
(--config, else $PHG_CONFIG, else <user config dir>/phg/phg.toml if it exists), built-in defaults.

Every setting is one row of SETTINGS (section, key, parse, default, environment variable): the row
is the whole definition, so a key is checked, overridden and documented in one place. Each
destination type has its own settings class (FhirSettings, MllpSettings, HttpHl7Settings, C3proSettings,
SoapSettings) whose KEYS are the rows of its [destinations.NAME] table; the top-level [fhir] and
[auth] sections (and --fhir-base) are sugar for one FHIR destination named "fhir".

A wrong value stops start-up with a ConfigError naming the file (or variable, or flag) and the key.

The default directories (the config file's, the data directory: outbox, keys) are platformdirs', which remains
the authority; on Linux the common case is found without importing it (`_user_dir`: platformdirs imports
tempfile, shutil, lzma and more, a sixth of `phg send`'s start-up, issue 16), and tests/test_cli_startup.py
compares both answers over many environments.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from phg.errors import ConfigError
from phg.frozen import Frozen, field
from phg.model import Gateway, PatientRef, Reading
from phg.secretfile import require_private

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any, ClassVar

    Parse = Callable[[Any, str], Any]  # (value as given, "where: [section] key") -> typed value, or ConfigError

DEFAULT_SCOPE = "system/Patient.cu system/Device.cu system/Observation.c"
SMART_SCOPE = "launch openid fhirUser patient/Patient.rs"  # [smart] scope: SMART App Launch 2.x EHR launch
IG_VERSIONS = ("2.0.0", "1.1.0")
FHIR_STRATEGIES = ("auto", "transaction", "single")  # how a FHIR destination sends (phg.delivery.fhir)
API_LISTEN = ("127.0.0.1", 8470)  # [api] listen when an [api] table is present
API_MAX_BODY = 2**20  # [api] max_body: bytes of one POST /v1/readings body
API_MAX_DOCUMENTS = 1000  # [api] max_documents: reading documents in one request
VIEW_RETENTION = 365 * 86400.0  # [view] retention: seconds a reading stays in the reading store for viewing
KEEP_DELIVERED = 7 * 86400.0  # [outbox] keep_delivered: seconds a delivered reading's payload stays in the outbox
DEFAULT_PUBLISH_DELAY = 600.0  # [auth] key_publish_delay (phg.auth.keyring)
DEFAULT_GRACE = 86400.0  # [auth] key_rotation_grace (phg.auth.keyring)
AUTH_METHODS = ("smart-backend", "client-secret-basic", "client-secret-post", "password", "bearer", "none")
FHIR_DESTINATION = "fhir"
QUEUE_ENGINES = ("sqlite", "jetstream")  # [queue] engine: phg.outbox.sqlite (embedded) or phg.outbox.jetstream (hub)
QUEUE_MAX_AGE = 14 * 86400.0  # [queue] max_age: how long JetStream keeps an undelivered reading (and its markers)
QUEUE_DUPLICATE_WINDOW = 120.0  # [queue] duplicate_window: JetStream's own default (Nats-Msg-Id deduplication)
RUN_ROLES = ("all", "intake", "worker")  # [run] role: what `phg run` runs (phg.daemon.run_gateway)


def user_config_path() -> Path:
    return _user_dir("XDG_CONFIG_HOME", ".config", "user_config_dir") / "phg.toml"


def user_data_dir() -> Path:
    return _user_dir("XDG_DATA_HOME", ".local/share", "user_data_dir")


def _user_dir(variable: str, in_home: str, kind: str) -> Path:
    """platformdirs' `kind` directory for phg (module docstring). Where platformdirs takes its Unix branch with
    XDG (sys.platform "linux", not Android by platformdirs' own test) and $`variable` or $HOME is absolute, the
    answer is platformdirs' and found here: the variable when absolute (XDG Base Directory Specification), else
    $HOME/`in_home`, then /phg. platformdirs ignores a relative value too from 4.11.8 (tox-dev/platformdirs#540),
    pyproject's floor. Everything else: platformdirs."""
    base, home = os.environ.get(variable, ""), os.environ.get("HOME", "")
    android = hasattr(sys, "getandroidapilevel") or (
        os.environ.get("ANDROID_DATA") == "/data" and os.environ.get("ANDROID_ROOT") == "/system")
    if sys.platform == "linux" and not android and (base[:1] == "/" or home[:1] == "/"):
        return Path(base if base[:1] == "/" else f"{home.rstrip('/')}/{in_home}") / "phg"
    import platformdirs

    return Path(getattr(platformdirs, kind)("phg"))


def default_gateway_system_id() -> str:
    """EUI-64 from this machine's EUI-48 MAC (IEEE mapping: insert FFFE in the middle), so a
    gateway without configuration still has a stable identity. Configure gateway.system_id for a
    registered, documented one."""
    import uuid  # here: with a system_id configured phg starts without it

    mac = f"{uuid.getnode():012X}"
    return mac[:6] + "FFFE" + mac[6:]


# ------------------------------------------------------------------------------------------ parsers


def text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r:.60}")
    return value.strip()


def secret(value: Any, where: str) -> str:
    """A string kept as given (a password may start with a space); never quoted in a message."""
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {type(value).__name__}")
    return value


def flag(value: Any, where: str) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, not {value!r:.60}")
    return value


def path(value: Any, where: str) -> Path:
    """A file name, `~` and `~user` expanded; ConfigError for a `~user` with no home directory (pathlib raises
    RuntimeError: found by tests/test_fuzz_config.py with PHG_VIEW_PASSWORD_FILE=~0)."""
    given = text(value, where)
    try:
        return Path(given).expanduser()
    except RuntimeError:
        raise ConfigError(f"{where}: {given!r:.80} names a home directory this machine does not have") from None


def readable_file(value: Any, where: str) -> Path:
    found = path(value, where)
    if not found.is_file():
        raise ConfigError(f"{where}: {found} is not a readable file")
    return found


def _bound(x: float) -> str:
    """A range's end as it is typed: all its digits when whole (``:g`` wrote 2**53 as 9.0072e+15 and a
    million as 1e+06), else the shortest form of the float."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def number(kind: type, low: float, high: float, unit: str = "") -> Parse:
    """An int (kind=int) or a number of seconds (kind=float) from `low` to `high`."""
    bounds = f"{_bound(low)}..{_bound(high)}{unit}"

    def parse(value: Any, where: str) -> Any:
        if isinstance(value, str) and re.fullmatch(r"\s*\d{1,30}(\.\d{1,9})?\s*", value) and value.isascii():
            # "²" and "٣" are not numbers here; 30 digits: any bound and more (2**53 has 16), so a value too large is
            # refused as out of range, not as "not a whole number"
            value = float(value) if "." in value else int(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            noun = "a whole number" if kind is int else "a number"
            raise ConfigError(f"{where} must be {noun}, {bounds}, not {value!r:.60}")
        if not low <= value <= high:  # NaN fails this too
            raise ConfigError(f"{where} must be {bounds}")
        return value
    return parse


def host_port(value: Any, where: str) -> tuple[str, int] | None:
    """"HOST:PORT" ("[::1]:6024" for an IPv6 address) -> (host, port); None when empty."""
    found = text(value, where)
    if not found:
        return None
    match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]]+)):(\d{1,5})", found)
    if match is None or not 1 <= int(match[3]) <= 65535:
        raise ConfigError(f"{where} must be HOST:PORT (such as \"127.0.0.1:6024\", port 1..65535), "
                          f"not {found!r:.60}")
    return match[1] or match[2], int(match[3])


def choice(*options: str) -> Parse:
    def parse(value: Any, where: str) -> str:
        if value not in options:
            raise ConfigError(f"{where} must be one of {', '.join(options)}, not {value!r:.60}")
        return value
    return parse


def url(value: Any, where: str) -> str | None:
    """A URL without trailing slash (None when empty), without user:password@ (phg.transport.require_secure_url);
    https unless loopback is checked where it is used, with the destination's allow_insecure_http."""
    import httpx  # here, not at the top: `phg send` with a config without URLs starts without it (issue 16)

    found = text(value, where).rstrip("/")
    if not found:
        return None
    try:
        parsed = httpx.URL(found)
    except httpx.InvalidURL as exc:
        from phg.transport import invalid_url

        raise invalid_url(where, found, exc) from None
    if parsed.userinfo:
        from phg.transport import credentials_refused

        raise credentials_refused(where, parsed)
    return found


FHIR_ENDPOINTS = ("/metadata", "/.well-known/smart-configuration")
"""What a FHIR base URL is mistaken for: the CapabilityStatement (FHIR R4 RESTful API, "capabilities":
GET [base]/metadata) and the SMART configuration (SMART App Launch 2.x: [base]/.well-known/smart-configuration),
the addresses a server's documentation shows. phg appends both to the base itself."""


def fhir_base(value: Any, where: str) -> str | None:
    """A FHIR server's base URL (:func:`url`), refused when it is one of :data:`FHIR_ENDPOINTS`: every request
    would go below it (``.../metadata/.well-known/...``) and fail far from the cause."""
    from phg.transport import redact_url  # here, as url() imports httpx

    found = url(value, where)
    for endpoint in FHIR_ENDPOINTS:
        if found and found.endswith(endpoint):
            shown = redact_url(found)
            raise ConfigError(f"{where} {shown!r} ends in {endpoint}, which phg adds itself: give the FHIR base, "
                              f"{shown.removesuffix(endpoint)!r}")
    return found


def strings(value: Any, where: str) -> tuple[str, ...]:
    """A list of strings; from the environment, comma-separated."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings")
    return tuple(v.strip() for v in value)


def origins(value: Any, where: str) -> tuple[str, ...]:
    """Web origins as browsers send them in Origin (RFC 6454 6.2: scheme://host[:port], no path)."""
    found = tuple(item.lower().rstrip("/") for item in strings(value, where))
    for item in found:
        if not re.fullmatch(r"https?://[^/?#\s@]+", item):
            raise ConfigError(f"{where}: {item!r:.60} is not an origin (such as \"https://gw.example.org:8470\")")
    return found


def eui64(value: Any, where: str) -> str:
    found = text(value, where).replace("-", "").replace(":", "").upper()
    if len(found) != 16 or any(c not in "0123456789ABCDEF" for c in found):
        raise ConfigError(f"{where} must be an EUI-64 (16 hex digits), not {found!r:.40}")
    return found


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: Any, where: str) -> float:
    """Seconds (a number, 0 = not at all) or a whole number with a unit: "90s", "30m", "12h", "7d";
    at most 3650 days."""
    seconds = value
    if isinstance(value, str) and (match := re.fullmatch(r"\s*(\d{1,7})\s*([smhd]?)\s*", value)):
        seconds = int(match[1]) * _DURATION_UNITS[match[2] or "s"]
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 3650 * 86400:
        raise ConfigError(f'{where} must be seconds (0 to 315360000) or a duration such as "7d", "12h", "30m", '
                          f"not {value!r:.40}")
    return float(seconds)


def hosts(value: Any, where: str) -> tuple[str, ...]:
    """trusted_token_hosts: host names or IP addresses (no scheme, port or path), compared with the
    token endpoint's host (httpx.URL.host: lower case, IPv6 without brackets)."""
    import httpx

    if isinstance(value, str):  # from the environment: comma-separated
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(host, str) for host in value):
        raise ConfigError(f"{where} must be a list of host names, such as [\"auth.example.org\"]")
    found = tuple(host.strip().strip("[]").lower() for host in value)
    for host in found:
        try:
            parsed = httpx.URL(f"https://[{host}]/" if ":" in host else f"https://{host}/")
        except httpx.InvalidURL:
            parsed = None
        if not host or parsed is None or parsed.host != host:
            raise ConfigError(f"{where}: {host!r} is not a host name (give it without scheme, port or path, "
                              "such as \"auth.example.org\")")
    return found


def jku(value: Any, where: str) -> str | bool:
    """The JWKS URL put into the assertion header, or true (= jwks_uri)."""
    if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
        return True
    if value is False:
        return False
    return url(value, where)


def subtable(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return value


def headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{where} must be a table of header names and string values")
    return tuple(value.items())


# ------------------------------------------------------------------------------------------ the table


class Setting(Frozen):
    """One setting: where it sits, how it is checked, its default and its environment variable."""

    section: str
    key: str
    parse: Parse = field(repr=False)
    default: Any = None
    env: str = ""  # the PHG_* variable; "" = PHG_<SECTION>_<KEY>

    @property
    def variable(self) -> str:
        return self.env or f"PHG_{self.section}_{self.key}".upper()

    @property
    def secret(self) -> bool:
        return self.parse is secret


def _rows(section: str, *rows: tuple) -> tuple[Setting, ...]:
    return tuple(Setting(section, *row) for row in rows)


SETTINGS: tuple[Setting, ...] = (
    *_rows("gateway",
           ("system_id", eui64, None, "PHG_GATEWAY_SYSTEM_ID"),
           ("manufacturer", text, Gateway.manufacturer), ("model", text, Gateway.model),
           ("serial", text), ("firmware", text)),
    *_rows("fhir",
           ("base_url", fhir_base, None, "PHG_FHIR_BASE_URL"),
           ("ig_version", choice(*IG_VERSIONS), "2.0.0", "PHG_IG_VERSION"),
           ("allow_insecure_http", flag, False),
           ("timeout", number(float, 1, 600, " s"), 30.0),
           ("max_entries", number(int, 0, 100000), 0),
           ("strategy", choice(*FHIR_STRATEGIES), "auto")),
    *_rows("auth",
           ("method", choice(*AUTH_METHODS), None, "PHG_AUTH_METHOD"),
           ("client_id", text, None, "PHG_CLIENT_ID"),
           ("key_file", path, None, "PHG_KEY_FILE"),
           ("scope", text, DEFAULT_SCOPE, "PHG_SCOPE"),
           ("token_url", url, None, "PHG_TOKEN_URL"),
           ("trusted_token_hosts", hosts, ()),
           ("client_secret", secret, None, "PHG_CLIENT_SECRET"),
           ("username", text, None, "PHG_USERNAME"),
           ("password", secret, None, "PHG_PASSWORD"),
           ("token", secret, None, "PHG_BEARER_TOKEN"),
           ("registration_endpoint", url), ("initial_access_token", secret, None, "PHG_INITIAL_ACCESS_TOKEN"),
           ("software_statement", text, None, "PHG_SOFTWARE_STATEMENT"),
           ("registration_access_token", secret, None, "PHG_REGISTRATION_ACCESS_TOKEN"),
           ("registration_client_uri", url), ("jwks_uri", url), ("jku", jku),
           ("key_publish_delay", number(float, 0, 365 * 86400, " s"), DEFAULT_PUBLISH_DELAY),
           ("key_rotation_grace", number(float, 0, 365 * 86400, " s"), DEFAULT_GRACE),
           ("ca_file", readable_file), ("client_cert", readable_file), ("client_key", readable_file),
           ("proxy", text), ("encrypt_to", text), ("encrypt_kid", text)),
    *_rows("outbox",
           ("path", path, None, "PHG_OUTBOX"),
           ("keep_delivered", duration, KEEP_DELIVERED)),
    *_rows("queue",
           ("engine", choice(*QUEUE_ENGINES), "sqlite"),
           ("servers", strings, ()), ("prefix", text, "phg"),
           ("creds_file", path), ("nkey_seed_file", path), ("user", text), ("password", secret),
           ("ca_file", readable_file), ("cert_file", readable_file), ("key_file", readable_file),
           ("allow_insecure", flag, False),
           ("stream_replicas", number(int, 1, 5), 1),
           ("max_age", duration, QUEUE_MAX_AGE),
           ("max_bytes", number(int, 0, 2**53), 0),
           ("duplicate_window", duration, QUEUE_DUPLICATE_WINDOW),
           ("marker_age", duration, None),
           ("max_deliver", number(int, 0, 100_000), 0),
           ("max_in_flight", number(int, 1, 1_000_000), 1000)),
    *_rows("delivery",
           ("batch_size", number(int, 1, 1000), 50),
           ("max_retry_delay", number(int, 1, 86400, " s"), 300),
           ("lease_seconds", number(float, 1, 3600, " s"), 120.0)),
    *_rows("patient", ("system", text), ("value", text)),
    *_rows("run", ("role", choice(*RUN_ROLES), "all")),
    *_rows("ble",
           ("allow", strings, ()), ("pair_new", flag, False),
           ("scan_seconds", number(float, 0.1, 3600, " s"), 5.0),
           ("user", number(int, 0, 254))),
    *_rows("ieee11073",
           ("listen", host_port, None),
           ("max_connections", number(int, 1, 10000), 32),
           ("configs", path, None)),
    *_rows("usb",
           ("enabled", flag, False), ("vendor_id", number(int, 0, 0xFFFF)), ("product_id", number(int, 0, 0xFFFF))),
    *_rows("api",
           ("listen", host_port),
           ("max_body", number(int, 1024, 64 * 2**20, " bytes"), API_MAX_BODY),
           ("max_documents", number(int, 1, 100_000), API_MAX_DOCUMENTS),
           ("keys_file", path), ("tls_cert", readable_file), ("tls_key", readable_file),
           ("client_ca", readable_file), ("allow_insecure", flag, False), ("require_auth", flag, False),
           ("allowed_origins", origins, ())),
    *_rows("smart",
           ("client_id", text), ("client_secret", secret), ("key_file", path),
           ("scope", text, SMART_SCOPE), ("identifier_system", text), ("redirect_url", url), ("fhir_base", url),
           ("frame_ancestors", origins, ()), ("session_lifetime", duration, 3600.0)),
    *_rows("view",
           ("path", path, None, "PHG_VIEW_PATH"),
           ("retention", duration, VIEW_RETENTION),
           ("url", text), ("password_file", path), ("ca_file", readable_file), ("allow_insecure", flag, False)),
)
FLAGS = {("fhir", "base_url"): "--fhir-base", ("auth", "key_file"): "--key", ("outbox", "path"): "--outbox"}
"""The global options (phg.cli.common.Context) whose name is not the key's, for messages naming them."""
ROWS: dict[tuple[str, str], Setting] = {(s.section, s.key): s for s in SETTINGS}
SECTIONS: dict[str, list[str]] = {section: [s.key for s in SETTINGS if s.section == section]
                                   for section in dict.fromkeys(s.section for s in SETTINGS)}


class Values:
    """The parsed value of every row, and where each came from (for messages)."""

    def __init__(self, values: dict[tuple[str, str], Any], origin: dict[tuple[str, str], str], source: str):
        self.values, self.origin, self.source = values, origin, source

    def __call__(self, section: str, key: str) -> Any:
        return self.values.get((section, key), ROWS[(section, key)].default)

    def where(self, section: str, key: str) -> str:
        return f"{self.origin.get((section, key), '(default)')}: [{section}] {key}"

    def given(self, section: str) -> bool:
        return any(s == section for s, _ in self.values)


# ------------------------------------------------------------------------------------------ classes


class TlsSettings(Frozen):
    """One TLS policy for every client (phg.delivery.tls): a CA bundle replacing the system trust
    store, and a client certificate with its key (mode 0600) for mutual TLS."""

    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    source: str = ""  # where they were configured, for messages

    @property
    def custom(self) -> bool:
        return self.ca_file is not None or self.client_cert is not None


class AuthSettings(Frozen):
    """[auth]: how phg.auth authorizes requests to a FHIR server. Secret fields are kept out of repr."""

    method: str
    fhir_base: str | None
    client_id: str | None = None
    key_file: Path | None = None
    scope: str = DEFAULT_SCOPE
    token_url: str | None = None
    allow_insecure_http: bool = False
    client_secret: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    registration_endpoint: str | None = None
    initial_access_token: str | None = field(default=None, repr=False)
    software_statement: str | None = field(default=None, repr=False)
    registration_access_token: str | None = field(default=None, repr=False)
    registration_client_uri: str | None = None
    jwks_uri: str | None = None
    jku: str | None = None
    key_publish_delay: float = DEFAULT_PUBLISH_DELAY
    key_rotation_grace: float = DEFAULT_GRACE
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    proxy: str | None = None
    encrypt_to: str | None = None
    encrypt_kid: str | None = None
    trusted_token_hosts: tuple[str, ...] = ()
    source: str = "(defaults)"

    @property
    def tls(self) -> TlsSettings:
        return TlsSettings(self.ca_file, self.client_cert, self.client_key, f"{self.source}: [auth]")

    def secrets(self) -> list[str]:
        """Every secret value configured (for tests and log scrubbing)."""
        return [v for v in (self.client_secret, self.password, self.token, self.initial_access_token,
                            self.registration_access_token) if v]


def require_secure_url(url: str, what: str, *, allow_insecure_http: bool = False) -> None:
    """phg.transport.require_secure_url, imported when a URL is there to check (it brings httpx)."""
    from phg import transport

    transport.require_secure_url(url, what, allow_insecure_http=allow_insecure_http)


def is_loopback(host: str) -> bool:
    """phg.transport.is_loopback, imported when a host is there to check (it brings httpx)."""
    from phg import transport

    return transport.is_loopback(host)


def _auth(values: Values, fhir_base: str | None, insecure: bool) -> AuthSettings:
    """[auth] rows into AuthSettings, with the checks that join several keys."""
    given = {key: value for (section, key), value in values.values.items() if section == "auth"}
    for key in ("registration_endpoint", "registration_client_uri", "jwks_uri", "token_url"):
        if given.get(key) is not None:  # None: given blank
            require_secure_url(given[key], values.where("auth", key), allow_insecure_http=insecure)
    jku_value = given.pop("jku", None)
    if jku_value is True:
        if "jwks_uri" not in given:
            raise ConfigError(f"{values.where('auth', 'jku')} = true needs [auth] jwks_uri")
        given["jku"] = given["jwks_uri"]
    elif isinstance(jku_value, str):
        require_secure_url(jku_value, values.where("auth", "jku"), allow_insecure_http=insecure)
        given["jku"] = jku_value
    if "proxy" in given and not given["proxy"].startswith(("http://", "https://", "socks5://")):
        raise ConfigError(f"{values.where('auth', 'proxy')} must be an http://, https:// or socks5:// URL")
    if given.get("encrypt_to", "").startswith(("http://", "https://")):
        require_secure_url(given["encrypt_to"], values.where("auth", "encrypt_to"), allow_insecure_http=insecure)
    if ("client_cert" in given) != ("client_key" in given):
        raise ConfigError(f"{values.source}: [auth] client_cert and client_key go together (mutual TLS)")
    method = given.pop("method", None) or (
        "bearer" if given.get("token") else
        "client-secret-basic" if given.get("client_secret") and "key_file" not in given else
        "smart-backend" if given.get("client_id") else "none")
    return AuthSettings(method=method, fhir_base=fhir_base, allow_insecure_http=insecure, source=values.source,
                        **given)


class DestinationSettings(Frozen):
    """What every [destinations.NAME] settings class shares: its name, its type and where it was set.
    KEYS: the rows of its table (key, parse, default); unknown keys are refused with file and key."""

    KEYS: ClassVar[tuple[Setting, ...]] = ()
    type: ClassVar[str] = ""

    name: str
    source: str

    @property
    def request_timeout(self) -> tuple[str, float]:
        """The key bounding one request, and its value (the lease must outlast it)."""
        raise NotImplementedError

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any], source: str) -> DestinationSettings:
        section = f"destinations.{name}"
        known = {row.key: row for row in cls.KEYS}
        parsed: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                homes = [f"[{section}.auth]"] if "auth" in known and key in SECTIONS["auth"] else []
                raise ConfigError(f"{source}: unknown key {key!r} in [{section}] (type {cls.type})"
                                  f"{_home(key, homes) or _did_you_mean(key, known, repr)}; "
                                  f"known: {', '.join(sorted(known))}")
            parsed[key] = known[key].parse(value, f"{source}: [{section}] {key}")
        for row in cls.KEYS:
            if row.default is REQUIRED and row.key not in parsed:
                raise ConfigError(f"{source}: [{section}] (type {cls.type}) needs {row.key}")
        return cls(name=name, source=source, **cls.build(parsed, source, section))

    @classmethod
    def build(cls, parsed: dict[str, Any], source: str, section: str) -> dict[str, Any]:
        """The constructor's fields from the parsed keys."""
        return parsed


REQUIRED = object()  # a destination key without a default
_TLS_KEYS = _rows("destinations.*", ("ca_file", readable_file), ("client_cert", readable_file),
                  ("client_key", readable_file))
_HL7_KEYS = _rows("destinations.*", ("ae_retries", number(int, 0, 100), 3),
                  ("receiving_application", text, ""), ("receiving_facility", text, ""))


class FhirSettings(DestinationSettings):
    """A FHIR R4 server taking transaction Bundles (PHD IG); [fhir] + [auth] or a [destinations.NAME]
    table of type "fhir" (its auth in [destinations.NAME.auth], without environment variables)."""

    KEYS: ClassVar[tuple[Setting, ...]] = _rows(
        "destinations.*", ("base_url", fhir_base, REQUIRED), ("ig_version", choice(*IG_VERSIONS), "2.0.0"),
        ("allow_insecure_http", flag, False), ("timeout", number(float, 1, 600, " s"), 30.0),
        ("max_entries", number(int, 0, 100000), 0), ("strategy", choice(*FHIR_STRATEGIES), "auto"),
        ("auth", subtable, {}))
    type: ClassVar[str] = "fhir"

    base_url: str | None = None
    ig_version: str = "2.0.0"
    allow_insecure_http: bool = False
    timeout: float = 30.0
    max_entries: int = 0  # entries per transaction at most; 0: no limit but what the server teaches
    strategy: str = "auto"  # "transaction", "single" (conditional creates) or "auto" (measured)
    auth: AuthSettings = field(default_factory=lambda: AuthSettings("none", None))

    @property
    def request_timeout(self) -> tuple[str, float]:
        return "timeout", self.timeout

    @classmethod
    def build(cls, parsed: dict[str, Any], source: str, section: str) -> dict[str, Any]:
        table = parsed.pop("auth", {})
        values = _section_values({"auth": table}, {}, {}, source, f"{section}.")
        parsed["auth"] = _auth(values, parsed["base_url"], parsed.get("allow_insecure_http", False))
        return parsed


class Hl7Settings(DestinationSettings):
    """What every HL7 v2 PCD-01 destination takes: TLS, how often an AE/CE ACK is retried, and
    MSH-5/MSH-6 (receiving application and facility)."""

    KEYS: ClassVar[tuple[Setting, ...]] = (*_TLS_KEYS, *_HL7_KEYS)

    tls_settings: TlsSettings = TlsSettings()
    ae_retries: int = 3
    receiving_application: str = ""
    receiving_facility: str = ""

    @classmethod
    def build(cls, parsed: dict[str, Any], source: str, section: str) -> dict[str, Any]:
        """ca_file, client_cert, client_key gathered into a TlsSettings (client_key defaults to the
        client_cert file: one PEM may hold both)."""
        tls = {key: parsed.pop(key) for key in ("ca_file", "client_cert", "client_key") if key in parsed}
        if "client_cert" in tls:
            tls.setdefault("client_key", tls["client_cert"])
        return {**parsed, "tls_settings": TlsSettings(**tls, source=f"{source}: [{section}]")}


class MllpSettings(Hl7Settings):
    """HL7 v2 PCD-01 over MLLP, optionally TLS (plain MLLP only to loopback unless allow_insecure)."""

    KEYS: ClassVar[tuple[Setting, ...]] = (*Hl7Settings.KEYS, *_rows(
        "destinations.*", ("host", text, REQUIRED), ("port", number(int, 1, 65535), REQUIRED), ("tls", flag, False),
        ("server_hostname", text), ("connect_timeout", number(float, 0.1, 600, " s"), 10.0),
        ("ack_timeout", number(float, 0.1, 600, " s"), 30.0), ("allow_insecure", flag, False)))
    type: ClassVar[str] = "mllp"

    host: str = ""
    port: int = 0
    tls: bool = False
    server_hostname: str | None = None
    connect_timeout: float = 10.0
    ack_timeout: float = 30.0
    allow_insecure: bool = False

    @property
    def request_timeout(self) -> tuple[str, float]:
        return "ack_timeout", self.ack_timeout


class HttpHl7Settings(Hl7Settings):
    """HL7 v2 PCD-01 POSTed as text over HTTP(S), one message per request (type "hl7-http"; "http"
    is accepted as its older name)."""

    KEYS: ClassVar[tuple[Setting, ...]] = (*Hl7Settings.KEYS, *_rows(
        "destinations.*", ("url", url, REQUIRED), ("timeout", number(float, 0.1, 600, " s"), 30.0),
        ("headers", headers, ()), ("allow_insecure_http", flag, False)))
    type: ClassVar[str] = "hl7-http"

    url: str = ""
    timeout: float = 30.0
    headers: tuple[tuple[str, str], ...] = ()
    allow_insecure_http: bool = False

    @property
    def request_timeout(self) -> tuple[str, float]:
        return "timeout", self.timeout


class SoapSettings(HttpHl7Settings):
    """HL7 v2 PCD-01 in the IHE DEC / Continua WAN SOAP 1.2 binding, with optional WS-Security: a
    SAML assertion (XML text or a file, mode 0600) or a username token."""

    KEYS: ClassVar[tuple[Setting, ...]] = (*HttpHl7Settings.KEYS, *_rows(
        "destinations.*", ("saml_assertion", secret), ("username", text), ("password", secret)))
    type: ClassVar[str] = "soap"

    saml_assertion: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def build(cls, parsed: dict[str, Any], source: str, section: str) -> dict[str, Any]:
        if "saml_assertion" in parsed and "username" in parsed:
            raise ConfigError(f"{source}: [{section}] give saml_assertion or username, not both")
        saml = parsed.get("saml_assertion")
        if saml is not None and not saml.lstrip().startswith("<"):  # a file name
            file = path(saml, f"{source}: [{section}] saml_assertion")
            require_private(file, f"{source}: [{section}] saml_assertion")
            parsed["saml_assertion"] = file.read_text(encoding="utf-8")
        return super().build(parsed, source, section)


C3PRO_RESOURCES = ("Patient", "Observation")


def c3pro_resources(value: Any, where: str) -> tuple[str, ...]:
    found = strings(value, where)
    if not found or any(kind not in C3PRO_RESOURCES for kind in found):
        raise ConfigError(f"{where} must list some of {', '.join(C3PRO_RESOURCES)}")
    return found


class C3proSettings(DestinationSettings):
    """A C3-PRO server (phg.delivery.c3pro): base_url is its context root (https://host/c3pro).
    antispam (or antispam_file, mode 0600) and receipt_data are what `phg register` sends; client_id
    and client_secret what it stores; public_key the server's RSA key (DER or PEM X.509 certificate or
    SubjectPublicKeyInfo) with its key_id; version the envelope's FHIR pipeline; resources what is sent;
    journal the file recording each resource the server took (default: in the user data directory)."""

    KEYS: ClassVar[tuple[Setting, ...]] = _rows(
        "destinations.*", ("base_url", url, REQUIRED), ("public_key", readable_file, REQUIRED),
        ("key_id", text, REQUIRED), ("version", text, "3.0.0"), ("resources", c3pro_resources, C3PRO_RESOURCES),
        ("antispam", secret), ("antispam_file", path), ("receipt_data", text, "NO-APP-RECEIPT"),
        ("client_id", text), ("client_secret", secret), ("journal", path),
        ("allow_insecure_http", flag, False), ("timeout", number(float, 1, 600, " s"), 30.0))
    type: ClassVar[str] = "c3pro"

    base_url: str = ""
    public_key: Path = Path()
    key_id: str = ""
    version: str = "3.0.0"
    resources: tuple[str, ...] = C3PRO_RESOURCES
    antispam: str | None = field(default=None, repr=False)
    antispam_file: Path | None = None
    receipt_data: str = "NO-APP-RECEIPT"
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    journal: Path = Path()
    allow_insecure_http: bool = False
    timeout: float = 30.0

    @property
    def request_timeout(self) -> tuple[str, float]:
        return "timeout", self.timeout

    def antispam_token(self) -> str | None:
        """The Antispam token: antispam, else the first line of antispam_file."""
        if self.antispam_file is None:
            return self.antispam
        try:
            return self.antispam_file.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.source}: [destinations.{self.name}] antispam_file {self.antispam_file}: "
                              f"cannot read it ({exc})") from None

    @classmethod
    def build(cls, parsed: dict[str, Any], source: str, section: str) -> dict[str, Any]:
        """antispam_file must be mode 0600 (like a key); the journal's default path."""
        if "antispam" in parsed and "antispam_file" in parsed:
            raise ConfigError(f"{source}: [{section}] give antispam or antispam_file, not both")
        if (found := parsed.get("antispam_file")) is not None:
            require_private(found, f"{source}: [{section}] antispam_file")
        require_secure_url(parsed["base_url"], f"{source}: [{section}] base_url",
                           allow_insecure_http=parsed.get("allow_insecure_http", False))
        name = section.removeprefix("destinations.")
        parsed.setdefault("journal", user_data_dir() / f"c3pro-{name}.sqlite")
        return parsed


DESTINATION_TYPES: dict[str, type[DestinationSettings]] = {
    "fhir": FhirSettings, "mllp": MllpSettings, "hl7-http": HttpHl7Settings, "http": HttpHl7Settings,
    "soap": SoapSettings, "c3pro": C3proSettings}


# ------------------------------------------------------------------------------------------ routes


ROUTE_MATCHERS = ("patient_system", "patient_value", "device")
_DEVICE_PATTERN = r"[0-9A-F*?\[\]!]+"  # compiled when routes are read (re caches it)


class Route(Frozen):
    """One [[routes]] table: the readings it matches go to its `destinations`. A reading matches when
    every matcher given holds: `patient_system` equals the patient identifier's system; `patient_value`
    (a glob: *, ?, [seq], [!seq]: Python's fnmatch.fnmatchcase, https://docs.python.org/3/library/fnmatch.html;
    case-sensitive, as FHIR matches identifier tokens, https://hl7.org/fhir/R4/search.html#token) matches
    its value; `device` (a glob over hex digits, case and ":"/"-" separators ignored) matches the device's
    system id (EUI-64) or its Bluetooth address (EUI-48). `default = true` matches every reading (a
    catch-all, without matchers)."""

    destinations: tuple[str, ...]
    patient_system: str | None = None
    patient_value: str | None = None
    device: str | None = None  # normalised: upper case, no separators
    default: bool = False

    def matches(self, reading: Reading) -> bool:
        from fnmatch import fnmatchcase

        if self.default:
            return True
        if self.patient_system is not None and reading.patient.system != self.patient_system:
            return False
        if self.patient_value is not None and not fnmatchcase(reading.patient.value, self.patient_value):
            return False
        if self.device is not None:
            device = reading.device
            identities = [i for i in (device.system_id, (device.bt_address or "").replace("-", "")) if i]
            return any(fnmatchcase(i, self.device) for i in identities)
        return True


def _routes(tables: Any, destinations: tuple[DestinationSettings, ...], source: str) -> tuple[Route, ...]:
    """[[routes]] (an array of tables, file only): each names configured destinations and has at least one
    matcher, or is `default = true` and has none. ConfigError naming the file, the table and the key."""
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise ConfigError(f"{source}: routes must be [[routes]] tables (an array of tables), each with "
                          "destinations and a matcher")
    names = [d.name for d in destinations]
    known = ("destinations", *ROUTE_MATCHERS, "default")
    found = []
    for number_, table in enumerate(tables, 1):
        where = f"{source}: [[routes]] #{number_}"
        for key in table:
            if key not in known:
                raise ConfigError(f"{where}: unknown key {key!r}{_did_you_mean(key, known, repr)}; "
                                  f"known: {', '.join(known)}")
        if "destinations" not in table:
            raise ConfigError(f"{where} needs destinations (a list of destination names: {', '.join(names)})")
        targets = strings(table["destinations"], f"{where} destinations")
        if not targets:
            raise ConfigError(f"{where} destinations is empty: name at least one of {', '.join(names)}")
        for target in targets:
            if target not in names:
                raise ConfigError(f"{where} destinations names {target!r}, which is not configured "
                                  f"(configured: {', '.join(names)})")
        matchers = {key: text(table[key], f"{where} {key}") for key in ROUTE_MATCHERS if key in table}
        for key, value in matchers.items():
            if not value:
                raise ConfigError(f"{where} {key} is empty (leave the key out to match any)")
        if "device" in matchers:
            matchers["device"] = matchers["device"].upper().replace(":", "").replace("-", "")
            if not re.fullmatch(_DEVICE_PATTERN, matchers["device"]):
                raise ConfigError(f"{where} device must be a pattern over the device's hex identity (system id "
                                  f"or Bluetooth address, such as \"C0:00:*\"), not {table['device']!r:.60}")
        default = flag(table.get("default", False), f"{where} default")
        if default and matchers:
            raise ConfigError(f"{where}: default = true matches every reading: drop {', '.join(matchers)} "
                              "or default")
        if not default and not matchers:
            raise ConfigError(f"{where} needs a matcher ({', '.join(ROUTE_MATCHERS)}) or default = true "
                              "(a catch-all)")
        found.append(Route(destinations=tuple(dict.fromkeys(targets)), default=default, **matchers))
    return tuple(found)


# ------------------------------------------------------------------------------------------ Config


class ApiSettings(Frozen):
    """The service `phg run` serves (phg.service): where it listens and what one request may hold."""

    listen: tuple[str, int] = API_LISTEN
    max_body: int = API_MAX_BODY
    max_documents: int = API_MAX_DOCUMENTS
    # who may use it (phg.service.security): API keys (their SHA-256, mode 0600), TLS, mutual TLS
    keys_file: Path = field(default_factory=lambda: user_data_dir() / "api-keys.json")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    allow_insecure: bool = False
    require_auth: bool = False
    allowed_origins: tuple[str, ...] = ()


class SmartSettings(Frozen):
    """[smart]: phg as a SMART app the clinician launches from the EHR (phg.service.smart): its
    registration there, which identifiers match readings, and the view's framing and lifetime."""

    client_id: str
    redirect_url: str  # as registered with the EHR: https://<phg>/smart/callback
    client_secret: str | None = field(default=None, repr=False)  # confidential client (else key_file, else public)
    key_file: Path | None = None  # private_key_jwt (SMART "client-confidential-asymmetric")
    scope: str = SMART_SCOPE
    identifier_system: str | None = None  # None: every identifier of the EHR's Patient
    fhir_base: str | None = None  # the EHR's FHIR base for a standalone launch
    frame_ancestors: tuple[str, ...] = ()  # the EHR origins that may frame the view (CSP frame-ancestors)
    session_lifetime: float = 3600.0


class ViewSettings(Frozen):
    """The reading store the SMART view reads (phg.viewstore): its SQLite file, or the PostgreSQL database
    `url` names (shared by a hub's intakes), and how long it keeps a reading. PostgreSQL: the password in
    `password_file` (mode 0600), never in the URL; `sslmode` is what phg passes to libpq (None: libpq's own
    default, on loopback or with allow_insecure), with `ca_file` as its sslrootcert."""

    path: Path | None
    retention: float = VIEW_RETENTION
    url: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    allow_insecure: bool = False
    sslmode: str | None = None
    source: str = "(defaults)"


class QueueSettings(Frozen):
    """[queue]: where readings wait between intake and delivery. "sqlite" (default): the outbox file of
    [outbox]. "jetstream": NATS JetStream (phg.outbox.jetstream, hub mode: docs/hub.md), reached at
    `servers` with one of creds_file (a NATS .creds file), nkey_seed_file, or user + password, over TLS
    (tls:// URLs, ca_file, cert_file + key_file) except on loopback unless allow_insecure."""

    engine: str = "sqlite"
    servers: tuple[str, ...] = ()
    prefix: str = "phg"  # names its streams and buckets: <prefix>_queue, <prefix>_dead, <prefix>_state, ...
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    allow_insecure: bool = False
    stream_replicas: int = 1
    max_age: float = QUEUE_MAX_AGE
    max_bytes: int = 0  # 0: no limit
    duplicate_window: float = QUEUE_DUPLICATE_WINDOW
    marker_age: float | None = None  # how long a delivered marker is kept; None: max_age (docs/hub.md, "Storage")
    max_deliver: int = 0  # deliveries of one reading before it is dead-lettered; 0: no limit (as SQLite)
    max_in_flight: int = 1000  # readings of one destination leased at once, by all workers together
    source: str = "(defaults)"


_NATS_URL = r"(nats|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?"  # compiled where used (re caches it)


def _queue(values: Values) -> QueueSettings:
    """[queue] rows into QueueSettings, with the checks that join several keys (file, key and fix named)."""
    given = {row.key: values("queue", row.key) for row in SETTINGS if row.section == "queue"}
    settings = QueueSettings(**given, source=values.source)
    if settings.engine != "jetstream":
        return settings
    where = values.where("queue", "servers")
    if not settings.servers:
        raise ConfigError(f"{values.source}: [queue] engine = \"jetstream\" needs [queue] servers, such as "
                          "[\"nats://nats1.example.org:4222\"]")
    for server in settings.servers:
        if not re.fullmatch(_NATS_URL, server):
            raise ConfigError(f"{where}: {server!r:.80} is not a nats:// or tls:// URL (HOST[:PORT], no "
                              "credentials in it: use [queue] creds_file, nkey_seed_file or user and password)")
        host = re.fullmatch(_NATS_URL, server)[2].strip("[]")
        tls = server.startswith("tls://") or settings.ca_file is not None or settings.cert_file is not None
        if not (tls or settings.allow_insecure or is_loopback(host)):
            raise ConfigError(f"{where}: {server} is plain NATS to another machine: use tls:// (or [queue] "
                              "ca_file), or set [queue] allow_insecure = true on a trusted network")
    credentials = [key for key in ("creds_file", "nkey_seed_file", "user") if given[key]]
    if len(credentials) > 1:
        raise ConfigError(f"{values.source}: [queue] give one of creds_file, nkey_seed_file or user + password, "
                          f"not {' and '.join(credentials)}")
    if (settings.user is None) != (settings.password is None):
        raise ConfigError(f"{values.source}: [queue] user and password go together")
    if (settings.cert_file is None) != (settings.key_file is None):
        raise ConfigError(f"{values.source}: [queue] cert_file and key_file go together (mutual TLS)")
    for key in ("creds_file", "nkey_seed_file", "key_file"):
        if given[key] is not None:
            require_private(given[key], f"{values.where('queue', key)}:")
    if settings.duplicate_window > settings.max_age or settings.duplicate_window <= 0:
        raise ConfigError(f"{values.where('queue', 'duplicate_window')} must be more than 0 and at most "
                          f"[queue] max_age ({settings.max_age:g} s)")
    if settings.marker_age is not None and settings.marker_age < settings.duplicate_window:
        raise ConfigError(f"{values.where('queue', 'marker_age')} must be at least [queue] duplicate_window "
                          f"({settings.duplicate_window:g} s): a reading published again is recognised by one or "
                          "the other")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", settings.prefix):
        raise ConfigError(f"{values.where('queue', 'prefix')} must be 1..32 letters, digits, _ or -, "
                          f"not {settings.prefix!r:.40}")
    return settings


class Config(Frozen):
    """All settings. Callers derive a config with ``config._replace(...)`` (phg.frozen)."""

    gateway: Gateway
    outbox_path: Path
    keep_delivered: float = KEEP_DELIVERED
    batch_size: int = 50
    max_retry_delay: float = 300.0
    lease_seconds: float = 120.0  # how long a batch stays leased; a killed daemon's batch is sent again after it
    destinations: tuple[DestinationSettings, ...] = ()  # in order: "fhir" (sugar) first, then [destinations.*]
    auth: AuthSettings = field(default_factory=lambda: AuthSettings("none", None))  # the top-level [auth]
    ig_version: str = "2.0.0"  # [fhir] ig_version (also what phg render uses)
    patient: PatientRef | None = None  # whom the devices' readings belong to (sources without their own binding)
    ble_allow: tuple[str, ...] = ()  # Bluetooth addresses to collect from
    ble_pair_new: bool = False  # accept (and pair) any health device in range
    ble_scan_seconds: float = 5.0
    ble_user: int | None = None  # the patient's User ID on shared cuffs and scales (255 is "unknown user")
    ieee11073_listen: tuple[str, int] | None = None  # (host, port) of the 11073-20601 TCP listener
    ieee11073_max_connections: int = 32
    ieee11073_configs: Path | None = None
    usb_enabled: bool = False
    usb_vendor_id: int | None = None
    usb_product_id: int | None = None
    api: ApiSettings | None = None  # the service; None: no [api] table, nothing served
    smart: SmartSettings | None = None  # the SMART app launch of the view; None: no [smart] table
    view: ViewSettings | None = None  # [view] (or [smart]): keep every reading for the SMART view; None: not kept
    queue: QueueSettings = field(default_factory=QueueSettings)  # [queue]: its engine (phg.outbox.open_queue)
    routes: tuple[Route, ...] = ()  # [[routes]]; none: every reading goes to every destination
    role: str = "all"  # [run] role: "intake" (sources, API), "worker" (delivery) or "all" (both)
    source: str = "(defaults)"  # where the settings came from, for messages

    @property
    def ble_enabled(self) -> bool:
        return bool(self.ble_allow) or self.ble_pair_new

    @property
    def destination_names(self) -> list[str]:
        """Every destination's queue, in configured order (a reading goes to all without [[routes]])."""
        return [d.name for d in self.destinations]

    @property
    def fhir(self) -> FhirSettings | None:
        """The FHIR destination of [fhir]/[auth] (or --fhir-base), when there is one."""
        found = [d for d in self.destinations if d.name == FHIR_DESTINATION]
        return found[0] if found and isinstance(found[0], FhirSettings) else None

    @property
    def fhir_base(self) -> str | None:
        return self.fhir.base_url if self.fhir else None

    @property
    def deliverable(self) -> bool:
        """Somewhere to deliver to (a FHIR queue without base URL only waits)."""
        return any(not isinstance(d, FhirSettings) or d.base_url for d in self.destinations)


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None,
                flags: Mapping[tuple[str, str], Any] | None = None, *,
                document: Mapping[str, Any] | None = None) -> Config:
    """The one loader: the TOML file (or `document`, the same tables in memory, for tests and the
    demo), the PHG_* variables of `env` (default os.environ) and the command-line `flags`
    ({(section, key): value}, None = not given) into a Config."""
    env = dict(os.environ) if env is None else env
    if path is None and document is None and env.get("PHG_CONFIG"):
        path = Path(env["PHG_CONFIG"])
    if path is None and document is None and user_config_path().exists():
        path = user_config_path()
    source = str(path) if path is not None else "(defaults)"
    data = dict(document or {}) if path is None else _read(path)
    tables = data.pop("destinations", {})
    routes = data.pop("routes", None)
    values = _section_values(data, env, {k: v for k, v in (flags or {}).items() if v is not None}, source, "")
    auth = _auth(values, values("fhir", "base_url"), values("fhir", "allow_insecure_http"))
    destinations = _destinations(tables, values, auth, source)
    _require_private_file(path, values, destinations)
    api = _api(values) if "api" in data or values.given("api") else None
    smart = _smart(values) if "smart" in data or values.given("smart") else None
    return _config(values, destinations, auth, source, api=api, smart=smart,
                   routes=_routes(routes, destinations, source) if routes is not None else ())


def _read(path: Path) -> dict[str, Any]:
    import tomllib  # here: without a config file (PHG_* variables and flags) phg starts without it

    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (phg init writes one)") from None
    except OSError as exc:  # a directory, unreadable, ...
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _did_you_mean(name: str, known: Iterable[str], show: Callable[[str], str]) -> str:
    """" (did you mean 'client_id'?)" for the name of ``known`` that ``name`` most likely misspells, else "":
    a typo is the usual cause of an unknown name, and a list of two dozen keys hides the one meant."""
    import difflib  # here: only a mistake needs it

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {show(close[0])}?)" if close else ""


def _home(key: str, homes: list[str]) -> str:
    """" ('client_id' is a key of [auth]: ...)": a key of another table is more likely below the wrong header
    (the one above it in the file) than a misspelling of a name close to it ('client_secret' in [api] is not
    its 'client_ca')."""
    return f" ({key!r} is a key of {' or '.join(homes)}: TOML gives a key to the header above it)" if homes else ""


def _homes(key: str, prefix: str) -> list[str]:
    """The tables holding ``key``: the top-level sections, or for a FHIR destination's auth table (prefix
    "destinations.NAME.") the destination's own."""
    if prefix:
        return [f"[{prefix[:-1]}]"] if any(row.key == key for row in FhirSettings.KEYS) else []
    return [f"[{section}]" for section, keys in SECTIONS.items() if key in keys]


def _misplaced(name: str, prefix: str) -> str:
    """What a value where a table belongs means: TOML puts a key written above the first [section] header
    at the top level, so `base_url = ...` there is not [fhir]'s."""
    if name in SECTIONS:
        return f"[{prefix}{name}] must be a table (a [{prefix}{name}] header with its keys below it), not a value"
    homes = [f"[{prefix}{section}]" for section, keys in SECTIONS.items() if name in keys]
    if homes:
        return (f"{name!r} is outside any section: move it below {' or '.join(homes)} "
                "(TOML gives a key to the header above it)")
    meant = "" if prefix else _did_you_mean(name, ["routes"], lambda _: "[[routes]]")
    return f"unknown key {name!r} outside any section{meant}; every key belongs below a [section] header"


def _section_values(data: Mapping[str, Any], env: Mapping[str, str], flags: Mapping[tuple[str, str], Any],
                    source: str, prefix: str) -> Values:
    """Every row given in the file, the environment or a flag, parsed, with its origin."""
    given: dict[tuple[str, str], tuple[Any, str]] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {_misplaced(section, prefix)}")
        if section not in SECTIONS:
            def shown(name: str) -> str:
                return "[[routes]]" if name == "routes" else f"[{prefix}{name}]"

            known = [*SECTIONS, *(() if prefix else ("destinations.NAME", "routes"))]
            raise ConfigError(f"{source}: unknown section [{prefix}{section}]{_did_you_mean(section, known, shown)}; "
                              f"known: {', '.join(map(shown, known))}")
        for key, value in table.items():
            if key not in SECTIONS[section]:
                known = ", ".join(sorted(SECTIONS[section]))
                meant = _home(key, _homes(key, prefix)) or _did_you_mean(key, SECTIONS[section], repr)
                raise ConfigError(f"{source}: unknown key {key!r} in [{prefix}{section}]{meant}; known: {known}")
            given[(section, key)] = (value, source)
    for row in SETTINGS:
        if env.get(row.variable):
            given[(row.section, row.key)] = (env[row.variable], f"environment {row.variable}")
    for (section, key), value in flags.items():
        given[(section, key)] = (value, FLAGS.get((section, key), f"--{key.replace('_', '-')}"))
    values: dict[tuple[str, str], Any] = {}
    origin: dict[tuple[str, str], str] = {}
    for (section, key), (value, where) in given.items():
        values[(section, key)] = ROWS[(section, key)].parse(value, f"{where}: [{prefix}{section}] {key}")
        origin[(section, key)] = where
    return Values(values, origin, source)


def _require_private_file(path: Path | None, values: Values, destinations: tuple[DestinationSettings, ...]) -> None:
    """A config file holding a secret is refused when group or others can read it, like a key."""
    if path is None:
        return
    held = [f"[{row.section}] {row.key}" for row in SETTINGS
            if row.secret and values.origin.get((row.section, row.key)) == str(path)]
    for destination in destinations:
        held += [f"[destinations.{destination.name}] {row.key}" for row in destination.KEYS
                 if row.secret and getattr(destination, row.key, None)]
        if isinstance(destination, FhirSettings) and destination.name != FHIR_DESTINATION and \
                destination.auth.secrets():
            held.append(f"[destinations.{destination.name}.auth]")
    if held:
        require_private(path, f"the config file (it holds {held[0]})")


def _destinations(tables: Any, values: Values, auth: AuthSettings, source: str) -> tuple[DestinationSettings, ...]:
    """The FHIR destination of [fhir]/[auth] (when set, or when nothing else is: readings then wait
    for it), then each [destinations.NAME] built by its type's settings class."""
    if not isinstance(tables, dict):
        raise ConfigError(f"{source}: [destinations] must hold tables such as [destinations.lab]")
    found: list[DestinationSettings] = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [destinations.{name}] must be a table")
        if name == FHIR_DESTINATION:
            raise ConfigError(f"{source}: [destinations.{name}]: the name {name!r} is the [fhir] server's; "
                              "choose another")
        kind = table.get("type")
        if not isinstance(kind, str) or kind not in DESTINATION_TYPES:
            raise ConfigError(f"{source}: [destinations.{name}] type must be one of "
                              f"{', '.join(DESTINATION_TYPES)}, not {kind!r:.40}")
        found.append(DESTINATION_TYPES[kind].from_table(name, {k: v for k, v in table.items() if k != "type"},
                                                        source))
    base = values("fhir", "base_url")
    if base or not found:
        found.insert(0, FhirSettings(name=FHIR_DESTINATION, source=source, base_url=base,
                                     ig_version=values("fhir", "ig_version"), timeout=values("fhir", "timeout"),
                                     max_entries=values("fhir", "max_entries"), strategy=values("fhir", "strategy"),
                                     allow_insecure_http=values("fhir", "allow_insecure_http"), auth=auth))
    return tuple(found)


def _api(values: Values) -> ApiSettings:
    """[api]: present (even empty, or given by a PHG_API_* variable) means `phg run` serves."""
    _api_tls(values)
    keys = ("tls_cert", "tls_key", "client_ca", "allow_insecure", "require_auth", "allowed_origins")
    return ApiSettings(listen=values("api", "listen") or API_LISTEN, max_body=values("api", "max_body"),
                       max_documents=values("api", "max_documents"),
                       keys_file=values("api", "keys_file") or user_data_dir() / "api-keys.json",
                       **{key: values("api", key) for key in keys})


def _smart(values: Values) -> SmartSettings:
    """[smart]: client_id and redirect_url are what the EHR registered; a secret or a key, not both."""
    for key in ("client_id", "redirect_url"):
        if not values("smart", key):
            raise ConfigError(f"{values.source}: [smart] needs {key} (as registered with the EHR)")
    if values("smart", "client_secret") and values("smart", "key_file"):
        raise ConfigError(f"{values.source}: [smart] give client_secret or key_file (private_key_jwt), not both")
    for key in ("redirect_url", "fhir_base"):
        if values("smart", key):
            require_secure_url(values("smart", key), values.where("smart", key))
    return SmartSettings(**{row.key: values("smart", row.key) for row in SETTINGS if row.section == "smart"})


def _api_tls(values: Values) -> None:
    """TLS for the service: cert and key together (the key 0600), client_ca only over TLS, and no plain
    HTTP on an address other machines can reach unless allow_insecure says so (behind a TLS proxy)."""
    cert, key = values("api", "tls_cert"), values("api", "tls_key")
    if (cert is None) != (key is None):
        raise ConfigError(f"{values.source}: [api] tls_cert and tls_key go together (the service's TLS)")
    if key is not None:
        require_private(key, f"{values.where('api', 'tls_key')}:")
    if values("api", "client_ca") is not None and cert is None:
        raise ConfigError(f"{values.where('api', 'client_ca')} (mutual TLS) needs [api] tls_cert and tls_key")
    host = (values("api", "listen") or API_LISTEN)[0]
    if cert is None and not values("api", "allow_insecure") and not is_loopback(host):
        raise ConfigError(f"{values.where('api', 'listen')} = {host!r} is reachable from other machines: "
                          "set [api] tls_cert and tls_key (HTTPS), or [api] allow_insecure = true only behind a "
                          "TLS-terminating proxy on a trusted network")


def _config(values: Values, destinations: tuple[DestinationSettings, ...], auth: AuthSettings, source: str, *,
            api: ApiSettings | None = None, smart: SmartSettings | None = None, routes: tuple[Route, ...] = ()) -> Config:
    patient = None
    if values.given("patient"):
        patient = PatientRef(values("patient", "system") or "", values("patient", "value") or "")
        if not (patient.system and patient.value):
            raise ConfigError(f"{source}: [patient] needs both system and value (the EHR's patient identifier)")
    for section, on in (("ble", values("ble", "allow") or values("ble", "pair_new")),
                        ("ieee11073", values("ieee11073", "listen")), ("usb", values("usb", "enabled"))):
        if on and patient is None:
            raise ConfigError(f"{source}: [{section}] collects readings for a [patient]: "
                              "set [patient] system and value")
    _lease_covers_requests(values, destinations)
    outbox = values("outbox", "path")
    return Config(
        gateway=Gateway(system_id=values("gateway", "system_id") or default_gateway_system_id(),
                        **{key: values("gateway", key) for key in ("manufacturer", "model", "serial", "firmware")}),
        outbox_path=outbox or user_data_dir() / "outbox.sqlite",
        keep_delivered=values("outbox", "keep_delivered"),
        batch_size=values("delivery", "batch_size"),
        max_retry_delay=float(values("delivery", "max_retry_delay")),
        lease_seconds=values("delivery", "lease_seconds"),
        destinations=destinations,
        auth=auth,
        ig_version=values("fhir", "ig_version"),
        patient=patient,
        ble_allow=values("ble", "allow"),
        ble_pair_new=values("ble", "pair_new"),
        ble_scan_seconds=values("ble", "scan_seconds"),
        ble_user=values("ble", "user"),
        ieee11073_listen=values("ieee11073", "listen"),
        ieee11073_max_connections=values("ieee11073", "max_connections"),
        ieee11073_configs=values("ieee11073", "configs"),
        usb_enabled=values("usb", "enabled"),
        usb_vendor_id=values("usb", "vendor_id"),
        usb_product_id=values("usb", "product_id"),
        api=api,
        smart=smart,
        view=_view(values, outbox) if values.given("view") or smart is not None else None,
        queue=_queue(values),
        routes=routes,
        role=values("run", "role"),
        source=source,
    )


def _view(values: Values, outbox: Path | None) -> ViewSettings:
    """[view] (on with [smart]): the reading store's file, by default view.sqlite beside the outbox; or with
    `url` its PostgreSQL database (_postgres_view)."""
    if not values("view", "url"):
        beside = (outbox or user_data_dir() / "outbox.sqlite").with_name("view.sqlite")
        return ViewSettings(values("view", "path") or beside, values("view", "retention"))
    return _postgres_view(values)


# A libpq connection URI (PostgreSQL 15 docs, 34.1.1.2 "Connection URIs"):
# postgresql://[userspec@][hostspec][/dbname][?paramspec], hostspec = host[:port][,...]
_POSTGRES_URL = r"postgres(?:ql)?://(?:(?P<user>[^@/?]*)@)?(?P<hosts>[^/?]*)(?:/(?P<dbname>[^?]*))?(?:\?(?P<query>.*))?"
_POSTGRES_HOST = r"(\[[0-9A-Fa-f:.]+\]|[^:,\[\]]*)(?::\d{1,5})?"
_VERIFIED = "verify-full"  # libpq verifies the server's certificate chain and that its name is the host's


def _postgres_view(values: Values) -> ViewSettings:
    """[view] url: a PostgreSQL database for the view store (phg.viewstore.postgres), with the checks that
    join several keys: not with `path`; no password in the URL (`password_file`, mode 0600); and TLS that
    verifies the server (sslmode=verify-full, libpq's "Protection Provided in Different Modes", PostgreSQL
    15 docs 34.19.3) to any host that is not this machine, unless allow_insecure."""
    from urllib.parse import parse_qs, unquote  # here: a config without [view] url does not need them

    url, where = values("view", "url"), values.where("view", "url")
    if values("view", "path") is not None:
        raise ConfigError(f"{where} and {values.where('view', 'path')}: give one of them (url: PostgreSQL, shared "
                          "by a hub's intakes; path: an SQLite file of this gateway's own)")
    match = re.fullmatch(_POSTGRES_URL, url)
    if match is None or not match["dbname"]:
        raise ConfigError(f"{where} must be a PostgreSQL URL naming its database, such as "
                          "\"postgresql://phg@db.example.org:5432/phg_view\"")
    query = {key: found[-1] for key, found in parse_qs(match["query"] or "", keep_blank_values=True).items()}
    if ":" in (match["user"] or "") or "password" in query:
        raise ConfigError(f"{where}: the URL holds a password: put it in [view] password_file (a file of mode "
                          "0600) and give the URL without it")
    hosts = [re.fullmatch(_POSTGRES_HOST, unquote(h)) for h in match["hosts"].split(",")]
    if not all(hosts):
        raise ConfigError(f"{where}: {match['hosts']!r:.80} is not HOST[:PORT][,HOST[:PORT]...]")
    # where libpq connects: the URL's hosts, or its host= and hostaddr= parameters (34.1.2), which win
    names = [h[1].strip("[]") for h in hosts]
    names += [n for key in ("host", "hostaddr") for n in query.get(key, "").split(",")]
    local = (all(n.startswith("/") or is_loopback(n) for n in names if n)
             and _libpq_adds_no_host(query, [h[1] for h in hosts]))
    insecure, given = values("view", "allow_insecure"), query.get("sslmode")
    if not (local or insecure) and given not in (None, _VERIFIED):
        raise ConfigError(f"{where}: sslmode={given} to another machine does not verify the server: use "
                          f"sslmode={_VERIFIED} (phg's default there; [view] ca_file: the CA that signed the "
                          "server's certificate), or set [view] allow_insecure = true on a trusted network")
    password_file = values("view", "password_file")
    if password_file is not None:
        require_private(password_file, f"{values.where('view', 'password_file')}:")
    return ViewSettings(None, values("view", "retention"), url=url, password_file=password_file,
                        ca_file=values("view", "ca_file"), allow_insecure=insecure,
                        sslmode=None if local or insecure or given else _VERIFIED, source=values.source)


def _libpq_adds_no_host(query: Mapping[str, str], url_hosts: list[str]) -> bool:
    """Whether libpq connects only where the URL says (review R of db9b6c3, finding 5). It takes a host the
    URL leaves empty from PGHOST, a hostaddr it does not give from PGHOSTADDR, and any parameter from a
    service (`service=` or PGSERVICE, read from pg_service.conf) (PostgreSQL 15 docs, 34.15 "Environment
    Variables", 34.17 "The Connection Service File"); an empty host with none of them is the local Unix
    socket. libpq reads the process's environment: os.environ, whatever `env` phg was loaded with."""
    def variable(name: str) -> bool:
        return bool(os.environ.get(name))

    if "service" in query or variable("PGSERVICE"):
        return False
    if "hostaddr" not in query and variable("PGHOSTADDR"):
        return False
    return not (any(not n for n in url_hosts) and "host" not in query and variable("PGHOST"))


def _lease_covers_requests(values: Values, destinations: tuple[DestinationSettings, ...]) -> None:
    """A batch's lease must outlast any one request of its send: the worker renews it between, but a
    lease shorter than a request's timeout lets another leaser take (and send again) what is on the
    wire. ConfigError naming both keys otherwise."""
    lease = values("delivery", "lease_seconds")
    for destination in destinations:
        key, timeout = destination.request_timeout
        if lease < timeout:
            section = "[fhir]" if destination.name == FHIR_DESTINATION else f"[destinations.{destination.name}]"
            raise ConfigError(f"{values.where('delivery', 'lease_seconds')} ({lease:g} s) must be at least {section} "
                              f"{key} ({timeout:g} s, {destination.source}): a send could outlast its lease and be "
                              "sent twice; raise lease_seconds or lower the timeout")


CONFIG_TEMPLATE = '''\
# phg configuration (TOML). Environment variables PHG_* and command-line flags override it.
# Every key and its variable: README.md, "Configuration".

[gateway]
# This gateway's own identity: an EUI-64 (16 hex digits). It becomes the PhgDevice resource
# (PHD IG) that every Observation names in its gatewayDevice extension.
system_id = "{system_id}"
manufacturer = "phg project"
model = "phg"
# serial = "GW-0001"

[fhir]
# The FHIR R4 base URL of the EHR. https is required except to loopback.
base_url = "https://ehr.example.org/fhir"
# PHD IG version of the resources sent: "2.0.0" (default) or "1.1.0".
ig_version = "2.0.0"

[auth]
# SMART Backend Services: register the public key (phg keys jwks) with the EHR under this client_id.
client_id = "my-gateway"
key_file = "{key_file}"
scope = "{scope}"
# token_url = ""   # normally discovered from {{base_url}}/.well-known/smart-configuration

[outbox]
# The durable queue (SQLite). Readings wait here while the network is down.
path = "{outbox}"
# How long a delivered reading's measurements stay in the outbox: seconds, or "30m", "12h", "7d".
# After that only its key is kept (so it is never queued again); 0 = drop them once delivered.
keep_delivered = "7d"

# Whom the devices' readings belong to, as the EHR identifies the patient.
# [patient]
# system = "urn:oid:1.2.3.4"
# value = "pt-001"

# Bluetooth LE health devices to collect from while `phg run` runs (phg ble scan lists them).
# [ble]
# allow = ["C0:00:00:00:18:08"]
# pair_new = false     # true: accept and pair any health device in range
# user = 1             # on a cuff or scale several people share: the patient's user number; others' are not sent

# More destinations, each with its own queue: type "fhir", "mllp", "hl7-http" or "soap".
# [destinations.lab]
# type = "mllp"
# host = "hl7.example.org"
# port = 2575
# tls = true            # plain MLLP is refused except to loopback, unless allow_insecure = true

[delivery]
# Readings per FHIR transaction Bundle.
batch_size = 50
# Longest wait (seconds) between retries while the server is unreachable.
max_retry_delay = 300
# How long (seconds) a batch stays leased; phg renews it while the batch is being sent. If phg is
# killed mid-send, that batch is sent again once its lease expires (harmless: the server recognises
# it). At least [fhir] timeout and each destination's ack_timeout (MLLP) or timeout (HTTP, SOAP).
lease_seconds = 120

# The reading store the view in the EHR reads (on with [smart] or any [view] key): an SQLite file of
# this gateway (path, default view.sqlite beside the outbox), or, for a hub whose intakes share one,
# a PostgreSQL database (url; not both). Readings stay there `retention` after they were stored.
# [view]
# retention = "365d"
# url = "postgresql://phg@db.example.org:5432/phg_view"   # no password in it: password_file
# password_file = "/etc/phg/view-password"                # mode 0600 or refused
# ca_file = "/etc/phg/db-ca.pem"       # off loopback phg requires sslmode=verify-full (its default there)
# allow_insecure = false               # true: another machine without verified TLS (a trusted network)
'''


def render_template(key_file: Path, outbox: Path) -> str:
    return CONFIG_TEMPLATE.format(system_id=default_gateway_system_id(), key_file=key_file,
                                  scope=DEFAULT_SCOPE, outbox=outbox)
