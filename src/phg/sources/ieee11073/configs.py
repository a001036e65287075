"""Device configurations: the five standard configurations (IEEE 11073-104xx) as data, the checked
`Configuration` a manager works with, and a store of extended configurations per agent.

A configuration is what a fixed-format scan report needs to be read: per object handle its class,
type (MDC code), unit and Attribute-Value-Map. Standard ones are written here as the ConfigReport
the agent would have sent (handles and layouts as in signove/antidote src/specializations/*.c and
the -104xx standards); extended ones come from the agent's MDC_NOTI_CONFIG report and are remembered
per (system id, config id) so that the next association of the same agent skips configuration
(20601 §8.4.3: accepted, not accepted-unknown-config).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from phg.sources.ieee11073 import nomenclature as nom
from phg.sources.ieee11073.apdu import (
    AVA,
    ApduError,
    ConfigObject,
    ConfigReport,
    config_report_bytes,
    decode_attribute,
    decode_config_report,
)
from phg.sources.ieee11073.mder import u16, u32

A = nom
log = logging.getLogger(__name__)


def _type(code: int) -> bytes:
    return u32(code)  # partition << 16 | term is exactly partition (2 bytes) + term (2 bytes)


def _val_map(*entries: tuple[int, int]) -> bytes:
    body = b"".join(u16(a) + u16(n) for a, n in entries)
    return u16(len(entries)) + u16(len(body)) + body


def _numeric(handle: int, code: int, unit: int, value_attr: int, value_len: int, *extra: AVA) -> ConfigObject:
    return ConfigObject(A.MOC_VMO_METRIC_NU, handle, (
        AVA(A.ATTR_ID_TYPE, _type(code)),
        AVA(A.ATTR_METRIC_SPEC_SMALL, u16(0xF040)),
        *extra,
        AVA(A.ATTR_UNIT_CODE, u16(unit)),
        AVA(A.ATTR_ATTRIBUTE_VAL_MAP, _val_map((value_attr, value_len), (A.ATTR_TIME_STAMP_ABS, 8))),
    ))


BASIC, SIMP, CMPD_BASIC = A.ATTR_NU_VAL_OBS_BASIC, A.ATTR_NU_VAL_OBS_SIMP, A.ATTR_NU_CMPD_VAL_OBS_BASIC

# dev-config-id -> (specialization profile term, ConfigReport)
STANDARD: dict[int, tuple[int, ConfigReport]] = {
    0x0190: (4100, ConfigReport(0x0190, (  # IEEE 11073-10404 pulse oximeter
        _numeric(1, 150456, 544, BASIC, 2),
        _numeric(10, 149530, 2720, BASIC, 2),
    ))),
    0x02BC: (4103, ConfigReport(0x02BC, (  # IEEE 11073-10407 blood pressure monitor
        _numeric(1, 150020, 3872, CMPD_BASIC, 10,
                 AVA(A.ATTR_METRIC_STRUCT_SMALL, bytes([3, 3])),
                 AVA(A.ATTR_ID_PHYSIO_LIST, u16(3) + u16(6) + u16(18949) + u16(18950) + u16(18951))),
        _numeric(2, 149546, 2720, BASIC, 2),
    ))),
    0x0320: (4104, ConfigReport(0x0320, (  # IEEE 11073-10408 thermometer
        _numeric(1, 150364, 6048, BASIC, 2),
    ))),
    0x05DC: (4111, ConfigReport(0x05DC, (  # IEEE 11073-10415 weighing scale
        _numeric(1, 188736, 1731, SIMP, 4),
    ))),
    0x06A4: (4113, ConfigReport(0x06A4, (  # IEEE 11073-10417 glucose meter
        _numeric(1, 160184, 2130, BASIC, 2),
    ))),
}

# dev-config-id -> the standard that defines it (IEEE 11073-104xx), for people reading phg's messages.
STANDARD_NAMES: dict[int, str] = {
    0x0190: "IEEE 11073-10404 pulse oximeter", 0x02BC: "IEEE 11073-10407 blood pressure monitor",
    0x0320: "IEEE 11073-10408 thermometer", 0x05DC: "IEEE 11073-10415 weighing scale",
    0x06A4: "IEEE 11073-10417 glucose meter",
}

SCANNER_CLASSES = frozenset((16, 17, 18, 19))  # MDC_MOC_SCAN, _SCAN_CFG, _SCAN_CFG_EPI, _SCAN_CFG_PERI

STANDARD_CONFIG_IDS = range(0x0001, 0x4000)  # 20601 §8.4.2: 0x4000..0x7FFF are extended configurations
EXTENDED_CONFIG_IDS = range(0x4000, 0x8000)


@dataclass(frozen=True)
class MetricObject:
    """One object of a configuration, with what the manager needs from its attributes."""

    obj_class: int
    handle: int
    type: int | None  # 32-bit MDC code
    unit: int | None  # unit term (partition DIM)
    value_map: tuple[tuple[int, int], ...]  # Attribute-Value-Map: (attribute id, length)
    components: tuple[int, ...] = ()  # compound: 32-bit codes of the components (Metric-Id-List, SCADA)
    supplemental: tuple[int, ...] = ()
    # scanners (MDC_MOC_SCAN_CFG_EPI / _PERI): Scan-Handle-Attr-Val-Map, (metric handle, AttrValMap) in the order
    # their values follow each other in a grouped report (20601 §6.3.9: ObservationScanGrouped)
    handle_map: tuple[tuple[int, tuple[tuple[int, int], ...]], ...] = ()


@dataclass(frozen=True)
class Configuration:
    config_id: int
    objects: dict[int, MetricObject]
    report: ConfigReport
    profile: int | None = None  # specialization term of a standard configuration

    @classmethod
    def from_report(cls, report: ConfigReport, profile: int | None = None) -> Configuration:
        """Check and index a ConfigReport; raises ApduError naming the object at fault."""
        objects: dict[int, MetricObject] = {}
        for obj in report.objects:
            if obj.handle == 0 or obj.handle in objects:
                raise ApduError(f"configuration {report.config_id:#06x}: handle {obj.handle} is reserved or repeated")
            try:
                values = {a.attr_id: decode_attribute(a.attr_id, a.value) for a in obj.attributes}
            except ApduError as exc:
                raise ApduError(f"configuration object {obj.handle}: {exc.reason}") from None
            vmap = tuple(values.get(A.ATTR_ATTRIBUTE_VAL_MAP, ()))
            if obj.obj_class in (A.MOC_VMO_METRIC_NU, A.MOC_VMO_METRIC_ENUM, 4, 9) and A.ATTR_ID_TYPE not in values:
                raise ApduError(f"configuration object {obj.handle}: metric without Type")
            physio = values.get(A.ATTR_ID_PHYSIO_LIST, ())
            handle_map = tuple((h, tuple(m)) for h, m in values.get(A.ATTR_SCAN_HANDLE_ATTR_VAL_MAP, ()))
            objects[obj.handle] = MetricObject(
                obj.obj_class, obj.handle, values.get(A.ATTR_ID_TYPE), values.get(A.ATTR_UNIT_CODE), vmap,
                tuple(nom.code32(nom.PART_SCADA, t) for t in physio), tuple(values.get(A.ATTR_SUPPLEMENTAL_TYPES, ())),
                handle_map)
        for scanner in objects.values():  # a scanner may only map metrics of this configuration (in any list order)
            for handle, _ in scanner.handle_map:
                target = objects.get(handle)
                if target is None or target.handle_map or target.obj_class in SCANNER_CLASSES:
                    raise ApduError(f"configuration object {scanner.handle}: Scan-Handle-Attr-Val-Map names "
                                    f"{handle}, which is not a metric of configuration {report.config_id:#06x}")
        return cls(report.config_id, objects, report, profile)

    def to_bytes(self) -> bytes:
        return config_report_bytes(self.report)


def standard(config_id: int) -> Configuration | None:
    entry = STANDARD.get(config_id)
    return Configuration.from_report(entry[1], entry[0]) if entry else None


class ConfigStore(Protocol):
    """Where extended configurations are remembered, per agent system id and configuration id. `put` runs
    inside the sans-I/O manager and only touches memory; `flush` writes what changed (the transports call
    it off the event loop after a configuration was accepted)."""

    def get(self, system_id: str, config_id: int) -> Configuration | None: ...

    def put(self, system_id: str, config: Configuration) -> None: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class StoreLimits:
    """Bounds of a configuration store: agents are not authenticated (20601 has no authentication), so
    anyone who reaches the listener can send configurations. Past `max_configs` (or an agent's
    `per_agent`) the least recently used configuration is forgotten: its agent then simply configures again
    at its next association (accepted-unknown-config, 20601 §8.4.3), which costs one configuration report.
    A configuration report longer than `max_bytes` is used for its association but not remembered.
    Memory and file are thus bounded by max_configs x max_bytes (4 MiB by default)."""

    max_configs: int = 256
    per_agent: int = 4
    max_bytes: int = 16384


Key = tuple[str, int]


class MemoryConfigStore:
    """Configurations kept as their ConfigReport bytes (decoded again on `get`, so that a stored
    configuration costs its size in bytes, not a tree of objects), least recently used first."""

    def __init__(self, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self._items: OrderedDict[Key, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, system_id: str, config_id: int) -> Configuration | None:
        with self._lock:
            raw = self._items.get((system_id, config_id))
            if raw is not None:
                self._items.move_to_end((system_id, config_id))
        return None if raw is None else Configuration.from_report(decode_config_report(raw))

    def put(self, system_id: str, config: Configuration) -> None:
        raw = config.to_bytes()
        if len(raw) > self.limits.max_bytes:
            log.warning("11073 configuration %#06x of agent %s not remembered: %d bytes, more than the %d "
                        "allowed (max_bytes); the agent will send it again at its next association",
                        config.config_id, system_id, len(raw), self.limits.max_bytes)
            return
        with self._lock:
            self._set((system_id, config.config_id), raw)
            own = [k for k in self._items if k[0] == system_id]
            for key in own[:max(0, len(own) - self.limits.per_agent)]:
                self._set(key, None)
            while len(self._items) > self.limits.max_configs:
                self._set(next(iter(self._items)), None)

    def flush(self) -> None:
        """Nothing to write: memory only."""

    def _set(self, key: Key, raw: bytes | None) -> None:
        """Remember (raw) or forget (None) one configuration; the lock is held."""
        if raw is None:
            del self._items[key]
        else:
            self._items[key] = raw
            self._items.move_to_end(key)


class FileConfigStore(MemoryConfigStore):
    """A JSON Lines file so that configurations survive restarts: one line per change,
    {"agent": "<SYSTEMID>", "config_id": n, "report": "<ConfigReport hex>" or null (forgotten)}; later lines
    win. `flush` appends the changes since the last flush; when the file holds more than twice as many
    lines as live configurations it is rewritten (temp file + rename). Bounded like the memory store, it
    is a cache: a lost or damaged line costs only a configuration report from that agent. A file of the
    earlier format (one JSON object {"<SYSTEMID>/<config id hex>": "<hex>"}) is read and rewritten."""

    def __init__(self, path: Path, limits: StoreLimits | None = None) -> None:
        super().__init__(limits)
        self.path = Path(path)
        self._pending: list[tuple[Key, bytes | None]] = []
        self._lines = 0
        self._must_rewrite = False  # after a failed write: the file may end in a partial line
        self._write_lock = threading.Lock()
        if self.path.exists():
            self._load()

    def _set(self, key: Key, raw: bytes | None) -> None:
        super()._set(key, raw)
        self._pending.append((key, raw))

    def _load(self) -> None:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        for key, raw in _entries(text, self.path):
            try:
                config = Configuration.from_report(decode_config_report(raw)) if raw is not None else None
            except ApduError as exc:
                log.warning("%s: configuration %s/%#06x skipped: %s", self.path, key[0], key[1], exc)
                continue
            if config is not None:
                self.put(key[0], config)
            elif key in self._items:
                self._set(key, None)
        self._pending.clear()
        self._lines = len(text.splitlines())
        if self._lines != len(self._items):  # forgotten entries, damaged lines or the earlier format
            self._rewrite()

    def flush(self) -> None:
        """Write the changes since the last flush (blocking: the TCP listener runs it in a thread). A write
        that fails is logged, not raised: the configurations stay in memory and the next flush rewrites."""
        with self._write_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending:
                return
            try:
                if self._must_rewrite or self._lines + len(pending) > 2 * max(len(self._items), 16):
                    self._rewrite()
                    return
                with self.path.open("a", encoding="utf-8") as f:
                    f.writelines(_line(key, raw) for key, raw in pending)
                self._lines += len(pending)
            except OSError as exc:
                log.warning("%s: configurations not saved: %s", self.path, exc)
                self._must_rewrite = True

    def _rewrite(self) -> None:
        with self._lock:
            lines = [_line(key, raw) for key, raw in self._items.items()]
            self._pending.clear()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        tmp.replace(self.path)
        self._lines, self._must_rewrite = len(lines), False


def _line(key: Key, raw: bytes | None) -> str:
    return json.dumps({"agent": key[0], "config_id": key[1], "report": None if raw is None else raw.hex()}) + "\n"


def _entries(text: str, path: Path) -> list[tuple[Key, bytes | None]]:
    """(key, report bytes or None) of a store file, in order; unreadable entries are skipped with a warning."""
    out = []
    for n, doc in enumerate(_documents(text, path), 1):
        try:
            cid = doc["config_id"]
            key = (str(doc["agent"]), int(cid, 16) if isinstance(cid, str) else int(cid))
            out.append((key, None if doc["report"] is None else bytes.fromhex(doc["report"])))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: entry %d skipped: %s", path, n, exc)
    return out


def _documents(text: str, path: Path) -> list:
    try:
        legacy = json.loads(text)
    except ValueError:
        legacy = None
    if isinstance(legacy, dict) and "agent" not in legacy:  # {"<SYSTEMID>/<config id hex>": "<hex>"}
        return [{"agent": k.partition("/")[0], "config_id": k.partition("/")[2], "report": v} for k, v in legacy.items()]
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            docs.append(json.loads(line))
        except ValueError:
            log.warning("%s line %d: not JSON, skipped", path, n)
    return docs
