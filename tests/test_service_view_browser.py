"""The EHR launch in a real headless browser ends on the view of the launched patient (issue 14,
acceptance; joint with tests/test_service_smart.py): Debian's chromium, driven by Selenium, opens
`/smart/launch` as the EHR would, inside the EHR's own page (an iframe on another origin, allowed by
`[smart] frame_ancestors`), follows oidc-provider's authorization code + PKCE flow with the `patient`
launch context (the gate in front of sekmet-fhir holding the Patient), and lands on `/view/<session>`,
whose charts show the patient's seeded readings and none of another patient's. The service is phg's own
app under uvicorn on 127.0.0.1; no cookie is needed anywhere. Screenshots are kept in tests/artifacts/;
docs/view-in-ehr.png, shown in the README, is one of them.

Skipped without chromium and chromedriver unless PHG_REQUIRE_BROWSER=1, as the status page's test."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import httpx
import pytest

from phg.config import load_config
from phg.intake import Intake
from phg.model import Component, Device, Metric, PatientRef, Reading
from phg.outbox import Outbox
from phg.service.app import ServiceContext, create_app
from phg.viewstore import ViewStore
from test_service_page_browser import browser, screenshot, serving  # noqa: F401 (browser: a fixture; skips without chromium)

SYSTEM = "urn:oid:1.2.3.4.5"
LAUNCH = "launch-" + uuid.uuid4().hex
CUFF = Device(system_id="0A1B2C3D4E5F6101", manufacturer="Acme", model="BP-7")
SCALE = Device(system_id="0A1B2C3D4E5F6102", manufacturer="Acme", model="Scale 2")


def reading(patient: PatientRef, device: Device, days_ago: float, *metrics: tuple[int, str, str]) -> Reading:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
    return Reading(device, patient,
                   tuple(Metric(code=code, value=Decimal(v), unit=unit, time=at) for code, v, unit in metrics))


def blood_pressure(patient: PatientRef, days_ago: float, systolic: int) -> Reading:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
    parts = (Component(150021, Decimal(systolic), "mm[Hg]"), Component(150022, Decimal(systolic - 42), "mm[Hg]"))
    return Reading(CUFF, patient, (Metric(code=150020, time=at, unit="mm[Hg]", components=parts),
                                   Metric(code=149546, value=Decimal(60 + systolic % 9), unit="/min", time=at)))


def seed(intake: Intake, mine: PatientRef, other: PatientRef) -> None:
    """Two weeks of the patient's home readings, and one of another patient's (never shown)."""
    intake.store([blood_pressure(mine, day + 0.3, 124 + 4 * (day % 4)) for day in range(14)]
                 + [reading(mine, SCALE, day + 0.5, (188736, f"{82 - day * 0.2:.1f}", "kg")) for day in range(0, 14, 2)]
                 + [reading(mine, CUFF, day + 0.7, (150456, str(95 + day % 3), "%"), (150364, "36.9", "Cel"))
                    for day in range(0, 14, 3)]
                 + [reading(mine, CUFF, day + 0.9, (160184, f"{5.1 + day % 4 * 0.4:.1f}", "mmol/L")) for day in range(14)]
                 + [reading(other, SCALE, 1, (188736, "123.4", "kg"))])


def free_port() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


class EhrPage(BaseHTTPRequestHandler):
    """The EHR's chart page: the app in an iframe, at another origin than phg's."""

    launch_url = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = (f'<!doctype html><title>EHR chart</title><h1>EHR: patient chart</h1>'
                f'<iframe id="app" src="{self.launch_url}" width="1180" height="1500"></iframe>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def launched(tmp_path) -> Iterator[tuple[str, str]]:
    """The EHR (oidc-provider, gate, sekmet with two Patients, the chart page) and phg's service on
    127.0.0.1 with the patient's readings; the URL of the EHR's chart page that launches phg in its iframe."""
    from phg.demo.peers import smart_stack

    phg_sock, ehr_server = free_port(), ThreadingHTTPServer(("127.0.0.1", 0), EhrPage)
    base, ehr_origin = f"http://127.0.0.1:{phg_sock.getsockname()[1]}", f"http://127.0.0.1:{ehr_server.server_port}"
    redirect = f"{base}/smart/callback"
    patient, other = f"pt{uuid.uuid4().hex[:10]}", f"pt{uuid.uuid4().hex[:10]}"
    (tmp_path / "launches.json").write_text(json.dumps({LAUNCH: patient}))
    client = {"client_id": "phg-view", "token_endpoint_auth_method": "none", "redirect_uris": [redirect],
              "grant_types": ["authorization_code"], "response_types": ["code"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OAUTH_LAUNCHES", str(tmp_path / "launches.json"))
        mp.setenv("OAUTH_PICK_PATIENT", patient)
        with smart_stack(clients=[client], scope_check=False, workdir=tmp_path / "ehr") as stack:
            for id_, value in ((patient, "mrn-1"), (other, "mrn-2")):
                body = {"resourceType": "Patient", "id": id_, "identifier": [{"system": SYSTEM, "value": value}]}
                httpx.put(f"{stack.fhir.base_url}/Patient/{id_}", json=body, timeout=10).raise_for_status()
            config = load_config(document={"outbox": {"path": str(tmp_path / "outbox.sqlite")}, "api": {},
                                           "smart": {"client_id": "phg-view", "redirect_url": redirect,
                                                     "frame_ancestors": [ehr_origin]}}, env={})
            assert config.view is not None and config.view.path == tmp_path / "view.sqlite"
            with Outbox(config.outbox_path) as outbox, ViewStore(config.view.path, config.view.retention) as view:
                ctx = ServiceContext(config, outbox, Intake(outbox, ["fhir"], view=view), view=view)
                seed(ctx.intake, PatientRef(SYSTEM, "mrn-1"), PatientRef(SYSTEM, "mrn-2"))
                outbox.delivered([item.id for item in outbox.lease("fhir", 5, 60)])  # some were written to the EHR
                EhrPage.launch_url = (f"{base}/smart/launch?iss={quote(stack.gate.base_url, safe='')}"
                                      f"&launch={LAUNCH}")
                threading.Thread(target=ehr_server.serve_forever, daemon=True).start()
                with serving(create_app(ctx), phg_sock):
                    yield ehr_origin, base
                ehr_server.shutdown()


def test_the_ehr_launch_in_a_browser_ends_on_the_view_of_the_launched_patient(launched, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ehr_origin, base = launched
    browser.get(ehr_origin)
    browser.switch_to.frame(browser.find_element(By.ID, "app"))
    def here(driver) -> str:  # the frame's own address (current_url is the top window's)
        return driver.execute_script("return location.href")

    WebDriverWait(browser, 30).until(lambda d: here(d).startswith(f"{base}/view/"))
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart"))
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "figcaption")]
    assert captions == ["Blood pressure (mmHg)", "Glucose (mmol/L)", "Weight (kg)", "SpO2 (%)",
                        "Heart rate ({beat}/min)", "Temperature (C)"]
    table = browser.find_element(By.ID, "readings").text
    assert "Acme Scale 2" in table and "82.0" in table and "123.4" not in browser.page_source
    assert "written (fhir)" in table and "not yet" in table
    browser.find_element(By.LINK_TEXT, "7 days").click()
    WebDriverWait(browser, 10).until(lambda d: here(d).endswith("?period=7d"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == 6
    browser.switch_to.default_content()
    assert browser.current_url == f"{ehr_origin}/"  # the EHR's page stays; the session lives in the frame only
    screenshot(browser, "view-in-ehr.png")
