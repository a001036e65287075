"""`phg demo`: the whole pipeline on this machine, with real third-party peers.

FHIR server (sekmet-fhir or Medplum's router) behind the SMART gate, oidc-provider as the
authorization server; a fresh ES384 key registered as a SMART backend-services client; simulated
readings from the five device types queued and delivered; the same readings delivered again from
a fresh queue to show that the server stores nothing twice; and a summary of what the server holds.
Everything binds 127.0.0.1 and lives in a temporary directory.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from phg import mdc
from phg.auth import generate_key, jwks, load_key
from phg.config import DEFAULT_SCOPE, Config
from phg.daemon import deliver
from phg.demo.peers import PeerError, smart_stack
from phg.doctor import run_checks
from phg.model import Gateway, PatientRef
from phg.outbox import Outbox
from phg.sources.sim import simulated_readings

Echo = Callable[[str], None]
PATIENT = PatientRef("urn:oid:1.2.3.4.5", "demo-patient-001")
GATEWAY = Gateway(system_id="02AB7FFFFE000001", serial="DEMO-GW-1")


def run_demo(per_device: int = 2, server: str = "sekmet", echo: Echo = print) -> int:
    with tempfile.TemporaryDirectory(prefix="phg-demo-") as tmp:
        work = Path(tmp)
        echo(f"starting local peers ({server} FHIR server, oidc-provider, SMART gate) on 127.0.0.1 ...")
        try:
            with smart_stack(server, workdir=work / "peers") as stack:
                return _run(stack, work, per_device, echo)
        except PeerError as exc:
            echo(f"error: a local peer did not start: {exc}")
            return 3


def _run(stack, work: Path, per_device: int, echo: Echo) -> int:
    key_file = work / "gateway-key.pem"
    generate_key(key_file, "ES384")
    client = stack.register_client(jwks([load_key(key_file)]), scope=DEFAULT_SCOPE)
    echo(f"FHIR base (behind the gate): {stack.base_url}")
    echo(f"registered SMART backend-services client {client['client_id']} (ES384 key, kid {load_key(key_file).kid})")
    config = Config(
        gateway=GATEWAY,
        outbox_path=work / "outbox.sqlite",
        fhir_base=stack.base_url,
        client_id=client["client_id"],
        key_file=key_file,
        source="phg demo",
    )

    echo("\nphg doctor:")
    if not asyncio.run(run_checks(config, echo)):
        return 3

    readings = simulated_readings(PATIENT, datetime.now().astimezone(), per_device)
    metrics = sum(len(r.metrics) for r in readings)
    echo(
        f"\nsimulated {len(readings)} readings ({metrics} metrics) from 5 devices: "
        "glucose meter, BP cuff, scale, thermometer, pulse oximeter"
    )
    for attempt, label in ((1, "first delivery"), (2, "same readings again, from a fresh queue")):
        with Outbox(work / f"outbox-{attempt}.sqlite") as outbox:
            outbox.enqueue("fhir", [(r.key, r.to_json()) for r in readings])
            run_config = config.with_overrides(outbox_path=outbox.path)
            summary = asyncio.run(deliver(run_config, outbox, until_idle=True))
        echo(f"{label}: delivered {summary.delivered}, dead {summary.dead}")
        if summary.dead or summary.delivered != len(readings):
            echo("error: not everything was delivered; see the reasons above")
            return 1

    echo("\nwhat the FHIR server holds now:")
    held = _server_summary(stack.upstream_base_url)
    for line in held:
        echo(f"  {line}")
    return 0


def _server_summary(base: str) -> list[str]:
    """Count resources by type and Observations by code, straight from the FHIR server behind the gate."""
    lines = []
    with httpx.Client(timeout=30) as client:
        for rtype in ("Patient", "Device"):
            lines.append(f"{rtype}: {len(_search(client, f'{base}/{rtype}'))}")
        codes: Counter[str] = Counter()
        for obs in _search(client, f"{base}/Observation"):
            mdc_code = next((c["code"] for c in obs["code"]["coding"] if c["system"] == mdc.MDC_SYSTEM), "?")
            known = mdc.MEASUREMENTS.get(int(mdc_code)) if mdc_code.isdigit() else None
            codes[f"{known.display if known else 'MDC ' + mdc_code}"] += 1
        lines.append(f"Observation: {sum(codes.values())}")
        lines += [f"  {name}: {n}" for name, n in sorted(codes.items())]
    return lines


def _search(client: httpx.Client, url: str) -> list[dict]:
    """All resources of a search, following next links (bounded)."""
    found: list[dict] = []
    next_url: str | None = f"{url}?_count=100"
    for _ in range(100):
        if not next_url:
            break
        bundle = client.get(next_url, headers={"Accept": "application/fhir+json"}).raise_for_status().json()
        found += [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
        next_url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return found
