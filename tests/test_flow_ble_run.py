"""`phg run`'s pipeline with the Bluetooth source configured: the emulated devices are found by the
scan, read through the real bleak session, queued and delivered to the FHIR server behind the gate."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from phg.demo.emulator import EmulatedLink, demo_devices
from phg.model import PatientRef, from_canonical_json
from phg.outbox import Outbox
from test_flow_fhir import make_config, matches

pytestmark = pytest.mark.peers


async def test_run_collects_from_allowed_devices_and_delivers(gate, oauth, tmp_path):
    patient = PatientRef("urn:oid:1.2.3.4.5", f"pt-ble-run-{time.monotonic_ns()}")
    devices = demo_devices(datetime.now())
    allowed = [devices[0].address, devices[1].address]  # the glucose meter and the BP cuff, not the others
    config = make_config(tmp_path, gate.base_url, oauth)._replace(patient=patient, ble_allow=tuple(allowed),
                                                                  ble_scan_seconds=0.5)
    from phg.daemon import run_gateway

    with Outbox(config.outbox_path) as outbox:
        async with EmulatedLink(devices) as radio:
            stop = asyncio.Event()
            task = asyncio.create_task(run_gateway(config, outbox, stop, ble_backend=radio.backend))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                counts = outbox.counts("fhir")
                if counts["delivered"] >= 6 and counts["queued"] == counts["inflight"] == 0:
                    break
                await asyncio.sleep(0.2)
            stop.set()
            await asyncio.wait_for(task, 15)
        items = outbox.items("fhir", limit=100)
    readings = [from_canonical_json(i.payload, str(i.id)) for i in items]
    assert {i.state for i in items} == {"delivered"}
    assert len(readings) == 6  # 5 stored glucose records + 1 blood pressure measurement
    assert {r.device.bt_address.replace("-", ":") for r in readings} == {a.upper() for a in allowed}
    assert all(r.patient == patient for r in readings)
    assert [await asyncio.to_thread(matches, gate.upstream, r, m) for r in readings for m in r.metrics] == \
        [1] * sum(len(r.metrics) for r in readings)
