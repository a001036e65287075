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
import threading
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
    """Where extended configurations are remembered, per agent system id and configuration id."""

    def get(self, system_id: str, config_id: int) -> Configuration | None: ...

    def put(self, system_id: str, config: Configuration) -> None: ...


class MemoryConfigStore:
    def __init__(self) -> None:
        self._items: dict[tuple[str, int], Configuration] = {}
        self._lock = threading.Lock()

    def get(self, system_id: str, config_id: int) -> Configuration | None:
        with self._lock:
            return self._items.get((system_id, config_id))

    def put(self, system_id: str, config: Configuration) -> None:
        with self._lock:
            self._items[(system_id, config.config_id)] = config


class FileConfigStore(MemoryConfigStore):
    """A JSON file {"<SYSTEMID>/<config id hex>": "<ConfigReport hex>"} so that configurations survive
    restarts. Written atomically (temp file + rename) on every new configuration; small and rare."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        if self.path.exists():
            for key, hexed in json.loads(self.path.read_text()).items():
                system_id, config_id = key.split("/")
                report = decode_config_report(bytes.fromhex(hexed))
                self._items[(system_id, int(config_id, 16))] = Configuration.from_report(report)

    def put(self, system_id: str, config: Configuration) -> None:
        super().put(system_id, config)
        with self._lock:
            doc = {f"{s}/{c:04x}": cfg.to_bytes().hex() for (s, c), cfg in self._items.items()}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        tmp.replace(self.path)
