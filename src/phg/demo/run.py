"""`phg demo`: the whole pipeline on this machine, with real third-party peers.

FHIR server (sekmet-fhir or Medplum's router) behind the SMART gate, oidc-provider as the
authorization server; a fresh ES384 key registered as a SMART backend-services client; the five
emulated Bluetooth LE devices (Bumble, on a virtual link) read through the gateway's real bleak
session, their readings queued and delivered; the same stored records fetched and delivered again
from a fresh queue to show that the server stores nothing twice; and a summary of what it holds.
Everything binds 127.0.0.1 and lives in a temporary directory. The OAuth server, the gate and Medplum
run on Node.js (their npm packages are installed once into the user cache directory); with
``auth=False`` (``phg demo --no-auth``) sekmet-fhir runs alone, without Node.js.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from phg import mdc
from phg.auth import generate_key, jwks, load_key
from phg.config import DEFAULT_SCOPE, Config, load_config
from phg.daemon import deliver
from phg.demo.emulator import collect_emulated
from phg.demo.peers import (
    NODE_MISSING,
    PeerError,
    SekmetServer,
    SmartStack,
    install_node_peers,
    node_peers_installed,
    smart_stack,
)
from phg.doctor import run_checks
from phg.intake import Intake
from phg.model import MDC_ATTR_TIME_ABS, Gateway, PatientRef
from phg.outbox import Outbox

Echo = Callable[[str], None]
CLOCK_NAMES = {str(MDC_ATTR_TIME_ABS): "Coincident time stamp (device clock)"}
PATIENT = PatientRef("urn:oid:1.2.3.4.5", "demo-patient-001")
GATEWAY = Gateway(system_id="02AB7FFFFE000001", serial="DEMO-GW-1")


def run_demo(server: str = "sekmet", *, auth: bool = True, echo: Echo = print) -> int:
    """Run the demo; the exit status: 0 all delivered, 1 not, 3 a peer missing or not started (then one
    line says what to install). ``auth=False`` runs the FHIR server alone, without the OAuth server and
    the gate: with sekmet-fhir that needs Python only."""
    try:
        _check_installed(server, auth)
    except PeerError as exc:
        echo(f"error: {exc}")
        return 3
    with tempfile.TemporaryDirectory(prefix="phg-demo-") as tmp:
        work = Path(tmp)
        try:
            if not auth:
                echo("starting sekmet-fhir on 127.0.0.1 (--no-auth: no OAuth server, no gate) ...")
                with SekmetServer(workdir=work / "sekmet") as fhir:
                    return _run(_config(work, fhir.base_url), fhir.base_url, work, echo)
            if not node_peers_installed():
                echo("installing the Node peers (npm ci, first run only) ...")
                install_node_peers()
            echo(f"starting local peers ({server} FHIR server, oidc-provider, SMART gate) on 127.0.0.1 ...")
            with smart_stack(server, workdir=work / "peers") as stack:
                return _run(_register(stack, work, echo), stack.upstream_base_url, work, echo)
        except PeerError as exc:
            echo(f"error: a local peer did not start: {exc}")
            return 3


def _check_installed(server: str, auth: bool) -> None:
    """Raise :class:`PeerError` naming, in one line, what this demo needs and does not find."""
    if not auth and server != "sekmet":
        raise PeerError("--no-auth runs sekmet-fhir alone: leave out --server or give --server sekmet")
    if server == "sekmet":
        SekmetServer.executable()
    if auth and (shutil.which("node") is None or (shutil.which("npm") is None and not node_peers_installed())):
        raise PeerError(f"{NODE_MISSING}; or run `phg demo --no-auth` (sekmet-fhir alone, Python only)")


def _config(work: Path, fhir_base: str, **auth: str) -> Config:
    return load_config(env={}, document={
        "gateway": {"system_id": GATEWAY.system_id, "serial": GATEWAY.serial or ""}, "fhir": {"base_url": fhir_base},
        "auth": auth, "patient": {"system": PATIENT.system, "value": PATIENT.value},
        "outbox": {"path": str(work / "outbox.sqlite")}})


def _register(stack: SmartStack, work: Path, echo: Echo) -> Config:
    """A fresh ES384 key registered as a SMART backend-services client of the stack's OAuth server."""
    key_file = work / "gateway-key.pem"
    generate_key(key_file, "ES384")
    client = stack.register_client(jwks([load_key(key_file)]), scope=DEFAULT_SCOPE)
    echo(f"FHIR base (behind the gate): {stack.base_url}")
    echo(f"registered SMART backend-services client {client['client_id']} (ES384 key, kid "
         f"{load_key(key_file).kid})")
    return _config(work, stack.base_url, client_id=client["client_id"], key_file=str(key_file))


def _run(config: Config, upstream: str, work: Path, echo: Echo) -> int:
    """Doctor, two collections from the emulated devices and their deliveries, and what the server
    (``upstream``: its own base, behind any gate) holds then."""
    echo("\nphg doctor:")
    if not asyncio.run(run_checks(config, echo)):
        return 3

    now = datetime.now()
    for attempt, label in ((1, "first delivery"), (2, "the same records again, from a fresh queue")):
        with Outbox(work / f"outbox-{attempt}.sqlite") as outbox:
            fetched = asyncio.run(collect_emulated(Intake(outbox, config.destination_names), PATIENT, now))
            echo(f"\nBluetooth LE: {_describe(fetched)}")
            summary = asyncio.run(deliver(config._replace(outbox_path=outbox.path), outbox, until_idle=True))
            collected = sum(f.readings for f in fetched)
        echo(f"{label}: delivered {summary.delivered}, dead {summary.dead}")
        if summary.dead or summary.delivered != collected:
            echo("error: not everything was delivered; see the reasons above")
            return 1

    echo("\nwhat the FHIR server holds now (the device clock is recorded once per connection, per the PHD IG):")
    for line in _server_summary(upstream):
        echo(f"  {line}")
    return 0


def _describe(fetched) -> str:
    parts = [f"{f.profile} {f.readings}" for f in fetched]
    return (f"collected {sum(f.readings for f in fetched)} readings from {len(fetched)} emulated devices "
            f"({', '.join(parts)})")


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
            name = known.display if known else CLOCK_NAMES.get(mdc_code, f"MDC {mdc_code}")
            codes[name] += 1
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
