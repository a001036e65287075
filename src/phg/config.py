"""Configuration: one TOML file, overridden by environment variables, overridden by flags.

Precedence (highest first): command-line flags, PHG_* environment variables, the config file
(--config, else $PHG_CONFIG, else <user config dir>/phg/phg.toml if it exists), built-in defaults.
A wrong value stops start-up with a ConfigError naming the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from phg.errors import ConfigError
from phg.model import Gateway, PatientRef

DEFAULT_SCOPE = "system/Patient.cu system/Device.cu system/Observation.c"
IG_VERSIONS = ("2.0.0", "1.1.0")
KEEP_DELIVERED = 7 * 86400.0  # [outbox] keep_delivered: seconds a delivered reading's payload stays in the outbox

# environment variable -> (section, key)
ENVIRONMENT = {
    "PHG_FHIR_BASE_URL": ("fhir", "base_url"),
    "PHG_IG_VERSION": ("fhir", "ig_version"),
    "PHG_CLIENT_ID": ("auth", "client_id"),
    "PHG_KEY_FILE": ("auth", "key_file"),
    "PHG_SCOPE": ("auth", "scope"),
    "PHG_TOKEN_URL": ("auth", "token_url"),
    "PHG_OUTBOX": ("outbox", "path"),
    "PHG_GATEWAY_SYSTEM_ID": ("gateway", "system_id"),
}


def user_config_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("phg")) / "phg.toml"


def user_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("phg"))


def default_gateway_system_id() -> str:
    """EUI-64 from this machine's EUI-48 MAC (IEEE mapping: insert FFFE in the middle), so a
    gateway without configuration still has a stable identity. Configure gateway.system_id for a
    registered, documented one."""
    mac = f"{uuid.getnode():012X}"
    return mac[:6] + "FFFE" + mac[6:]


# Destination types besides the FHIR server of [fhir]/[auth]: "module:class" of each, built with
# the keys of its [destinations.NAME] table as keyword arguments (their docs list them).
DESTINATION_TYPES = {
    "mllp": "phg.delivery.mllp:MllpDestination",
    "http": "phg.delivery.hl7http:HttpHl7Destination",
    "soap": "phg.delivery.soap:SoapDestination",
}
FHIR_DESTINATION = "fhir"

# The keys each section accepts; anything else is a typo worth stopping for. [auth] keys beyond
# these are read by phg.auth for the other ways servers are secured (its docs list them).
KEYS = {
    "gateway": {"system_id", "manufacturer", "model", "serial", "firmware"},
    "fhir": {"base_url", "ig_version", "allow_insecure_http", "timeout"},
    "auth": {"client_id", "key_file", "scope", "token_url"},
    "outbox": {"path", "keep_delivered"},
    "delivery": {"batch_size", "max_retry_delay", "lease_seconds"},
    "patient": {"system", "value"},
    "ble": {"allow", "pair_new", "scan_seconds"},
}


@dataclass(frozen=True)
class DestinationConfig:
    """One [destinations.NAME] table: where else readings go (HL7 v2 receivers)."""

    name: str
    type: str
    settings: dict[str, Any] = field(repr=False)  # may hold a password
    source: str = ""


@dataclass(frozen=True)
class Config:
    gateway: Gateway
    outbox_path: Path
    keep_delivered: float = KEEP_DELIVERED
    fhir_base: str | None = None
    ig_version: str = "2.0.0"
    batch_size: int = 50
    max_retry_delay: float = 300.0
    lease_seconds: float = 120.0  # how long a batch stays leased; a killed daemon's batch is sent again after it
    allow_insecure_http: bool = False
    timeout: float = 30.0  # seconds for one HTTP exchange with the FHIR server (a Bundle of batch_size readings)
    client_id: str | None = None
    key_file: Path | None = None
    scope: str = DEFAULT_SCOPE
    token_url: str | None = None
    destinations: tuple[DestinationConfig, ...] = ()
    auth: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole [auth] table (secrets: no repr)
    patient: PatientRef | None = None  # whom the devices' readings belong to (sources without their own binding)
    ble_allow: tuple[str, ...] = ()  # Bluetooth addresses to collect from
    ble_pair_new: bool = False  # accept (and pair) any health device in range
    ble_scan_seconds: float = 5.0
    source: str = "(defaults)"  # where the settings came from, for messages

    @property
    def ble_enabled(self) -> bool:
        return bool(self.ble_allow) or self.ble_pair_new

    @property
    def destination_names(self) -> list[str]:
        """Every queue a reading goes to: the FHIR server (when set, or when nothing else is)
        and each [destinations.NAME]."""
        names = [d.name for d in self.destinations]
        return ([FHIR_DESTINATION] if self.fhir_base or not names else []) + names

    def with_overrides(self, **values: Any) -> Config:
        return replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass
class _Raw:
    """Settings as read, with where each came from (for error messages)."""

    values: dict[tuple[str, str], Any] = field(default_factory=dict)
    origin: dict[tuple[str, str], str] = field(default_factory=dict)

    def get(self, section: str, key: str, kind: type, default: Any = None) -> Any:
        if (section, key) not in self.values:
            return default
        value = self.values[(section, key)]
        where = self.origin[(section, key)]
        if kind is int and isinstance(value, str) and value.isascii() and value.isdigit():  # not "²": int() refuses it
            value = int(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is bool and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes", "on")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: [{section}] {key} must be a {kind.__name__}, not {value!r}")
        return value

    def bounded(self, section: str, key: str, kind: type, default: Any, high: float, unit: str = "") -> Any:
        """A number from 1 to `high`, or a ConfigError naming where it came from."""
        value = self.get(section, key, kind, default)
        if not 1 <= value <= high:
            raise ConfigError(f"{self.origin[(section, key)]}: [{section}] {key} must be 1..{high}{unit}")
        return value


def load_config(path: Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the config file (if any) and the environment into a Config."""
    env = dict(os.environ) if env is None else env
    raw = _Raw()
    if path is None and env.get("PHG_CONFIG"):
        path = Path(env["PHG_CONFIG"])
    if path is None and user_config_path().exists():
        path = user_config_path()
    source = "(defaults)"
    destinations: tuple[DestinationConfig, ...] = ()
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found (phg init writes one)") from None
        except OSError as exc:  # a directory, unreadable, ...
            raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        destinations = _destinations(data.pop("destinations", {}), str(path))
        for section, table in data.items():
            if section not in KEYS or not isinstance(table, dict):
                raise ConfigError(f"{path}: unknown section [{section}]")
            for key, value in table.items():
                if key not in KEYS[section] and section != "auth":
                    known = ", ".join(sorted(KEYS[section]))
                    raise ConfigError(f"{path}: unknown key {key!r} in [{section}]; known: {known}")
                raw.values[(section, key)] = value
                raw.origin[(section, key)] = str(path)
    for name, target in ENVIRONMENT.items():
        if env.get(name):
            raw.values[target] = env[name]
            raw.origin[target] = f"environment {name}"

    system_id = raw.get("gateway", "system_id", str, None) or default_gateway_system_id()
    system_id = system_id.replace("-", "").replace(":", "").upper()
    if len(system_id) != 16 or any(c not in "0123456789ABCDEF" for c in system_id):
        raise ConfigError(f"{raw.origin.get(('gateway', 'system_id'))}: [gateway] system_id must be an EUI-64 "
                          f"(16 hex digits), not {system_id!r}")
    gateway = Gateway(
        system_id=system_id,
        manufacturer=raw.get("gateway", "manufacturer", str, Gateway.manufacturer),
        model=raw.get("gateway", "model", str, Gateway.model),
        serial=raw.get("gateway", "serial", str, None),
        firmware=raw.get("gateway", "firmware", str, None),
    )
    ig_version = raw.get("fhir", "ig_version", str, "2.0.0")
    if ig_version not in IG_VERSIONS:
        raise ConfigError(f"{raw.origin[('fhir', 'ig_version')]}: [fhir] ig_version must be one of "
                          f"{', '.join(IG_VERSIONS)}, not {ig_version!r}")
    batch_size = raw.bounded("delivery", "batch_size", int, 50, 1000)
    max_retry_delay = raw.bounded("delivery", "max_retry_delay", int, 300, 86400, " s")
    timeout = raw.bounded("fhir", "timeout", float, 30.0, 600, " s")
    lease_seconds = raw.bounded("delivery", "lease_seconds", float, 120.0, 3600, " s")
    patient = None
    if ("patient", "system") in raw.values or ("patient", "value") in raw.values:
        patient = PatientRef(raw.get("patient", "system", str, ""), raw.get("patient", "value", str, ""))
        if not (patient.system.strip() and patient.value.strip()):
            raise ConfigError(f"{source}: [patient] needs both system and value (the EHR's patient identifier)")
    ble_allow = raw.get("ble", "allow", list, [])
    if not all(isinstance(a, str) for a in ble_allow):
        raise ConfigError(f"{source}: [ble] allow must be a list of Bluetooth addresses (strings)")
    ble_pair_new = raw.get("ble", "pair_new", bool, False)
    if (ble_allow or ble_pair_new) and patient is None:
        raise ConfigError(f"{source}: [ble] collects readings for a [patient]: set [patient] system and value")
    _lease_covers_requests(raw, lease_seconds, destinations)
    key_file = raw.get("auth", "key_file", str, None)
    outbox = raw.get("outbox", "path", str, None)
    return Config(
        gateway=gateway,
        outbox_path=Path(outbox).expanduser() if outbox else user_data_dir() / "outbox.sqlite",
        keep_delivered=_keep_delivered(raw),
        fhir_base=(raw.get("fhir", "base_url", str, None) or "").rstrip("/") or None,
        ig_version=ig_version,
        batch_size=batch_size,
        max_retry_delay=float(max_retry_delay),
        lease_seconds=lease_seconds,
        timeout=timeout,
        allow_insecure_http=raw.get("fhir", "allow_insecure_http", bool, False),
        client_id=raw.get("auth", "client_id", str, None),
        key_file=Path(key_file).expanduser() if key_file else None,
        scope=raw.get("auth", "scope", str, DEFAULT_SCOPE),
        token_url=raw.get("auth", "token_url", str, None),
        destinations=destinations,
        auth={key: value for (section, key), value in raw.values.items() if section == "auth"},
        patient=patient,
        ble_allow=tuple(ble_allow),
        ble_pair_new=ble_pair_new,
        ble_scan_seconds=raw.get("ble", "scan_seconds", float, 5.0),
        source=source,
    )


# The key bounding one request to each kind of destination, and its default (the destinations' own).
REQUEST_TIMEOUTS = {"mllp": ("ack_timeout", 30.0), "http": ("timeout", 30.0), "soap": ("timeout", 30.0)}


def _lease_covers_requests(raw: _Raw, lease_seconds: float, destinations: tuple[DestinationConfig, ...]) -> None:
    """A batch's lease must outlast any one request of its send: the worker renews it between, but a
    lease shorter than a request's timeout lets another leaser take (and send again) what is on the
    wire. ConfigError naming both keys otherwise."""
    timeouts = []
    if raw.values.get(("fhir", "base_url")) or not destinations:  # the FHIR destination is in use
        timeouts.append(("[fhir] timeout", raw.origin.get(("fhir", "timeout")), raw.get("fhir", "timeout", float, 30.0)))
    for table in destinations:
        key, default = REQUEST_TIMEOUTS[table.type]
        value = table.settings.get(key, default)
        if isinstance(value, int | float) and not isinstance(value, bool):
            timeouts.append((f"[destinations.{table.name}] {key}", table.source, value))
    for name, where, timeout in timeouts:
        if lease_seconds < timeout:
            origin = raw.origin.get(("delivery", "lease_seconds"), "(default)")
            raise ConfigError(f"{origin}: [delivery] lease_seconds ({lease_seconds:g} s) must be at least {name} "
                              f"({timeout:g} s, {where or 'default'}): a send could outlast its lease and be "
                              "sent twice; raise lease_seconds or lower the timeout")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _keep_delivered(raw: _Raw) -> float:
    """[outbox] keep_delivered: seconds (a number, 0 = not at all) or a whole number with a unit:
    "90s", "30m", "12h", "7d"; at most 3650 days."""
    value = raw.get("outbox", "keep_delivered", object, KEEP_DELIVERED)
    seconds = value
    if isinstance(value, str) and (match := re.fullmatch(r"\s*(\d{1,7})\s*([smhd]?)\s*", value)):
        seconds = int(match[1]) * _DURATION_UNITS[match[2] or "s"]
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 3650 * 86400:
        raise ConfigError(f"{raw.origin[('outbox', 'keep_delivered')]}: [outbox] keep_delivered must be seconds "
                          f'(0 to 315360000) or a duration such as "7d", "12h", "30m", not {value!r}')
    return float(seconds)


def _destinations(tables: Any, path: str) -> tuple[DestinationConfig, ...]:
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: [destinations] must hold tables such as [destinations.lab]")
    found = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [destinations.{name}] must be a table")
        if name == FHIR_DESTINATION:
            raise ConfigError(f"{path}: [destinations.{name}]: the name {name!r} is the [fhir] server's; choose another")
        kind = table.get("type")
        if not isinstance(kind, str) or kind not in DESTINATION_TYPES:
            raise ConfigError(f"{path}: [destinations.{name}] type must be one of {', '.join(DESTINATION_TYPES)}, "
                              f"not {kind!r}")
        settings = {k: v for k, v in table.items() if k != "type"}
        found.append(DestinationConfig(name, kind, settings, path))
    return tuple(found)


CONFIG_TEMPLATE = '''\
# phg configuration (TOML). Environment variables PHG_* and command-line flags override it.

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

# More destinations, each with its own queue: HL7 v2 IHE PCD-01 over MLLP, HTTP or SOAP.
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
'''


def render_template(key_file: Path, outbox: Path) -> str:
    return CONFIG_TEMPLATE.format(system_id=default_gateway_system_id(), key_file=key_file,
                                  scope=DEFAULT_SCOPE, outbox=outbox)
