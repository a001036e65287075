"""A JSON description of an APDU, for `phg decode 11073 HEX` and for comparing with the documented
decodings of published APDU samples (the test vectors of tests/shared_vectors.py use the same shape),
and the metrics a scan report becomes.

A fixed-format scan report carries no attribute ids, and no report says its configuration: it can only
be read with its configuration, `config` (a standard one from its dev-config-id, configs.standard; else
the configuration report the agent sent). Raises ApduError.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from phg.model import Metric
from phg.sources.ieee11073 import nomenclature as nom
from phg.sources.ieee11073.apdu import (
    ASSOCIATE_RESULTS,
    AVA,
    MESSAGE_NAMES,
    Aare,
    Aarq,
    Abrt,
    Action,
    ActionResult,
    ApduError,
    DataProto,
    ErrorResult,
    EventReport,
    EventReportResult,
    Get,
    GetResult,
    Prst,
    RejectResult,
    Rlre,
    Rlrq,
    Set,
    SetResult,
    decode,
    decode_attribute,
    decode_config_report,
    decode_config_report_rsp,
    decode_data_request,
    decode_data_response,
    decode_fixed_values,
    decode_grouped_values,
    decode_scan_report,
    handle_attr_val_map_bytes,
)
from phg.sources.ieee11073.configs import STANDARD_NAMES, Configuration
from phg.sources.ieee11073.manager import MdsInfo, scan_observations
from phg.sources.ieee11073.mder import AbsoluteTime, BaseOffsetTime, MderNumber
from phg.sources.ieee11073.readings import metric_of

A = nom


def describe_hex(text: str, config: Configuration | None = None) -> dict[str, Any]:
    try:
        data = bytes.fromhex("".join(text.split()))
    except ValueError:
        raise ApduError("not hexadecimal") from None
    return describe(data, config)


def describe(data: bytes, config: Configuration | None = None) -> dict[str, Any]:
    apdu = decode(data)
    out: dict[str, Any] = {"apdu": type(apdu).__name__ + "Apdu", "length": len(data) - 4, "length_ok": True}
    match apdu:
        case Aarq():
            out["assoc-version"] = f"0x{apdu.assoc_version:08X}"
            out["data-proto-list"] = [_data_proto(p) for p in apdu.protocols]
        case Aare():
            out["result"] = _name(ASSOCIATE_RESULTS, apdu.result)
            out["selected-data-proto"] = _data_proto(apdu.protocol)
        case Rlrq() | Rlre() | Abrt():
            out["reason"] = apdu.reason
        case Prst():
            out["invoke-id"] = f"0x{apdu.invoke_id:04X}"
            out["message"] = MESSAGE_NAMES[apdu.choice]
            out.update(_message(apdu.message, config))
    out["trailing_bytes"] = 0
    return out


def _name(names: tuple[str, ...], value: int) -> str | int:
    return names[value] if 0 <= value < len(names) else value


def _data_proto(p: DataProto) -> dict[str, Any]:
    if isinstance(p.info, bytes):
        return {"data-proto-id": p.proto_id, "info": {"raw": p.info.hex()}}
    i = p.info
    return {"data-proto-id": p.proto_id, "info": {
        "protocolVersion": f"0x{i.protocol_version:08X}", "encodingRules": f"0x{i.encoding_rules:04X}",
        "nomenclatureVersion": f"0x{i.nomenclature_version:08X}", "functionalUnits": f"0x{i.functional_units:08X}",
        "systemType": f"0x{i.system_type:08X}", "system-id": i.system_id.hex().upper(),
        "dev-config-id": f"0x{i.dev_config_id:04X}", "data-req-mode-flags": f"0x{i.data_req_mode_flags:04X}",
        "data-req-init-agent-count": i.data_req_init_agent_count,
        "data-req-init-manager-count": i.data_req_init_manager_count,
        "optionList.count": len(i.options),
        "systemType_decoded": {0x80000000: "sys-type-manager", 0x00800000: "sys-type-agent"}.get(i.system_type, "other"),
    }}


def _message(m, config: Configuration | None) -> dict[str, Any]:
    match m:
        case EventReport():
            return {"obj-handle": m.obj_handle, "event-time": f"0x{m.event_time:08X}",
                    "event-type": nom.name(A.EVENTS, m.event_type),
                    "event-info": _event_info(m.event_type, m.info, config, m.obj_handle)}
        case EventReportResult():
            reply: Any = m.reply_info.hex()
            if m.event_type == A.NOTI_CONFIG and len(m.reply_info) == 4:
                rsp = decode_config_report_rsp(m.reply_info)
                reply = {"config-report-id": f"0x{rsp.config_id:04X}", "config-result": rsp.result}
            return {"obj-handle": m.obj_handle, "current-time": f"0x{m.current_time:08X}",
                    "event-type": nom.name(A.EVENTS, m.event_type), "event-reply-info": reply}
        case Get():
            return {"obj-handle": m.obj_handle, "attribute-id-list": [nom.name(A.ATTRIBUTES, a) for a in m.attr_ids]}
        case GetResult() | SetResult():
            return {"obj-handle": m.obj_handle, "attribute-list": [_ava(a) for a in m.attributes]}
        case Set():
            return {"obj-handle": m.obj_handle,
                    "modification-list": [{"modify-operator": op} | _ava(a) for op, a in m.modifications]}
        case Action():
            out = {"obj-handle": m.obj_handle, "action-type": nom.name(A.ACTIONS, m.action_type), "args": m.args.hex()}
            if m.action_type == A.ACT_DATA_REQUEST:
                r = decode_data_request(m.args)
                out["data-request"] = {
                    "data-req-id": f"0x{r.data_req_id:04X}", "data-req-mode": f"0x{r.mode:04X}",
                    "data-req-time": r.time, "data-req-person-id": r.person_id,
                    "data-req-class": nom.name(A.CLASSES, r.obj_class), "data-req-obj-handle-list.count": len(r.handles)}
            return out
        case ActionResult():
            out = {"obj-handle": m.obj_handle, "action-type": nom.name(A.ACTIONS, m.action_type), "args": m.args.hex()}
            if m.action_type == A.ACT_DATA_REQUEST:
                r = decode_data_response(m.args)
                out["data-response"] = {"rel-time-stamp": r.rel_time_stamp, "data-req-result": r.result,
                                        "event-type": nom.name(A.EVENTS, r.event_type),
                                        "event-info": _event_info(r.event_type, r.event_info, config)}
            return out
        case ErrorResult():
            return {"error-value": m.error_value, "parameter": m.parameter.hex()}
        case RejectResult():
            return {"problem": m.problem}
    raise AssertionError(m)  # pragma: no cover


def _event_info(event_type: int, info: bytes, config: Configuration | None, obj_handle: int | None = None) -> Any:
    if event_type == A.NOTI_CONFIG:
        report = decode_config_report(info)
        return {"config-report-id": f"0x{report.config_id:04X}", "objects": [
            {"obj-class": nom.name(A.CLASSES, o.obj_class), "obj-handle": o.handle,
             "attributes": [_ava(a) for a in o.attributes]} for o in report.objects]}
    if event_type not in A.SCAN_LAYOUT:
        return {"raw": info.hex()}
    report = decode_scan_report(event_type, info)
    out: dict[str, Any] = {"data-req-id": f"0x{report.data_req_id:04X}", "scan-report-no": report.scan_report_no}

    def obs(o) -> dict[str, Any]:
        if o.data is None:
            return {"obj-handle": o.handle, "attributes": [_ava(a) for a in o.attributes]}
        if config is None or o.handle not in config.objects:
            raise ApduError(f"fixed-format observation of handle {o.handle} needs its configuration: the id of "
                            f"a standard one ({standard_ids()}) or the configuration report the agent sent")
        try:
            values = decode_fixed_values(o.data, config.objects[o.handle].value_map)
        except ApduError as exc:
            raise ApduError(f"fixed-format observation of handle {o.handle} does not fit configuration "
                            f"{config.config_id:#06x} (its Attribute-Value-Map): {exc}") from None
        return {"obj-handle": o.handle, "values": [{"attr": nom.name(A.ATTRIBUTES, a), "value": _value(a, v)}
                                                   for a, v in values]}

    if report.layout in ("fixed", "var"):
        out["obs"] = [obs(o) for o in report.persons[0].observations]
    elif report.layout in ("mp-fixed", "mp-var"):
        out["persons"] = [{"person-id": p.person_id, "obs": [obs(o) for o in p.observations]} for p in report.persons]
    else:
        scanner = config.objects.get(obj_handle) if config is not None and obj_handle is not None else None

        def group(g: bytes) -> dict[str, Any]:
            if scanner is None or not scanner.handle_map:
                return {"raw": g.hex()}  # laid out by a scanner's Scan-Handle-Attr-Val-Map: needs the configuration
            return {"raw": g.hex(), "obs": [
                {"obj-handle": h, "values": [{"attr": nom.name(A.ATTRIBUTES, a), "value": _value(a, v)} for a, v in vals]}
                for h, vals in decode_grouped_values(g, scanner.handle_map)]}

        out["groups"] = [{"person-id": p.person_id, "scans": [group(g) for g in p.grouped]} for p in report.persons]
    return out


def _ava(a: AVA) -> dict[str, Any]:
    try:
        value = _value(a.attr_id, decode_attribute(a.attr_id, a.value))
    except ApduError as exc:
        raise ApduError(f"attribute {nom.name(A.ATTRIBUTES, a.attr_id)}: {exc.reason}") from None
    return {"attr": nom.name(A.ATTRIBUTES, a.attr_id), "value": value}


def _number(n: MderNumber) -> dict[str, Any]:
    d = n.decimal
    value: Any = n.special if d is None else (int(d) if n.exponent >= 0 else float(d))
    return {"value": value, "mantissa": n.mantissa, "exponent": n.exponent, "text": n.text}


def _code(code: int) -> dict[str, Any]:
    return {"partition": code >> 16, "term": code & 0xFFFF, "code32": code, "name": nom.TYPES.get(code)}


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _value(attr: int, v: Any) -> Any:
    match attr:
        case A.ATTR_ID_TYPE:
            return _code(v)
        case A.ATTR_METRIC_SPEC_SMALL:
            return f"0x{v:04x}"
        case A.ATTR_UNIT_CODE:
            name, ucum = nom.UNITS.get(v, (None, None))
            return {"term": v, "code32": nom.code32(nom.PART_DIM, v), "name": name, "ucum": ucum}
        case A.ATTR_ATTRIBUTE_VAL_MAP:
            return [{"attr": nom.name(A.ATTRIBUTES, a), "len": n} for a, n in v]
        case A.ATTR_SCAN_HANDLE_ATTR_VAL_MAP:
            return {"raw": handle_attr_val_map_bytes(v).hex(), "entries": [
                {"obj-handle": h, "attr-val-map": [{"attr": nom.name(A.ATTRIBUTES, a), "len": n} for a, n in m]}
                for h, m in v]}
        case A.ATTR_METRIC_STRUCT_SMALL:
            return {"ms-struct": v[0], "ms-comp-no": v[1]}
        case A.ATTR_ID_PHYSIO_LIST:
            return [{"term": t, "name": nom.TYPES.get(nom.code32(2, t)), "code32_if_SCADA": nom.code32(2, t)} for t in v]
        case A.ATTR_SUPPLEMENTAL_TYPES:
            return [_code(c) for c in v]
        case A.ATTR_SYS_TYPE_SPEC_LIST:
            return [{"type": nom.name(nom.PROFILES, t), "code32": nom.code32(nom.PART_INFRA, t), "version": ver}
                    for t, ver in v]
        case A.ATTR_ID_MODEL:
            return {"manufacturer": _text(v[0]), "model-number": _text(v[1])}
        case A.ATTR_SYS_ID:
            return v.hex().upper()
        case A.ATTR_DEV_CONFIG_ID | A.ATTR_OP_STAT | A.ATTR_MSMT_STAT | A.ATTR_POWER_STAT:
            return f"0x{v:04X}"
        case A.ATTR_ID_PROD_SPECN:
            return [{"spec-type": t, "component-id": c, "prod-spec": _text(s)} for t, c, s in v]
        case A.ATTR_ENUM_OBS_VAL_SIMP_OID:
            return {"term": v, "name_if_PHD_DM": nom.DM_TERMS.get(v)}
    match v:
        case AbsoluteTime():
            return {"raw": v.raw.hex()} if v.unset else {"raw": v.raw.hex(), "iso": v.iso}
        case BaseOffsetTime():
            return {"seconds": v.seconds, "fraction": v.fraction, "offset-minutes": v.offset_minutes,
                    "iso": v.datetime.isoformat()}
        case MderNumber():
            return _number(v)
        case tuple() if v and all(isinstance(x, MderNumber) for x in v):
            return [_number(x) for x in v]
        case bytes():
            return {"raw": v.hex()}
        case _ if hasattr(v, "__dataclass_fields__"):
            return {k: (_number(x) if isinstance(x, MderNumber) else x) for k, x in vars(v).items()}
    return v


def standard_ids() -> str:
    """The standard configurations phg knows, for messages: "0x0190 (IEEE 11073-10404 pulse oximeter), ..."."""
    return ", ".join(f"0x{cid:04X} ({name})" for cid, name in STANDARD_NAMES.items())


def specialization(config: Configuration) -> dict[str, Any] | None:
    """The specialization of a standard configuration (its profile), as `phg decode 11073` shows it."""
    if config.profile is None:
        return None
    return {"code32": nom.code32(nom.PART_INFRA, config.profile), "name": nom.name(nom.PROFILES, config.profile)}


def metrics(data: bytes, config: Configuration, utc_offset: timedelta, received: datetime) -> list[list[Metric]]:
    """The metrics an APDU's scan report becomes with its configuration, one list per reading as the
    manager queues them (phg.sources.ieee11073.readings.readings_of: one per person, and per scan of a
    grouped report); [] for an APDU that is no scan report. Absolute times take `utc_offset`,
    base-offset times keep their own; relative times need the MDS clock read at association, which one
    APDU does not carry, so they take `received`, as observations without a time stamp do."""
    apdu = decode(data)
    if not (isinstance(apdu, Prst) and isinstance(apdu.message, EventReport) and apdu.message.event_type in A.SCAN_LAYOUT):
        return []
    mds = MdsInfo("")
    readings: dict[tuple[int | None, int | None], list[Metric]] = {}
    for obs in scan_observations(config, apdu.message):
        metric = metric_of(obs, mds, utc_offset, received, None)
        if metric is not None:
            readings.setdefault((obs.person_id, obs.group), []).append(metric)
    return list(readings.values())
