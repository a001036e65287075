"""The full SMART EHR launch in a real headless browser (Debian's chromium through Selenium, as
test_service_page_browser.py): the EHR (oidc-provider with the launch context, the gate in front of
sekmet holding the Patient) sends the browser to phg's launch URL; phg discovers the EHR, the browser goes
through the authorization endpoint and back to phg's callback, and ends on the view of the launched
patient, whose seeded readings are in the charts and another patient's are not. Launched at the top
level and inside an iframe of the EHR's page (no third-party cookie involved: the session is in the URL).
Screenshot in tests/artifacts/smart-view.png (the README shows docs/view-in-ehr.png, from
test_service_view_browser.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest

from phg.config import load_config
from phg.intake import Intake
from phg.model import PatientRef
from phg.outbox import Outbox
from phg.service.app import ServiceContext, create_app
from phg.viewstore import ViewStore
from test_service_page import CUFF, SCALE, blood_pressure, single
from test_service_page_browser import By, browser, screenshot, serving  # noqa: F401 (browser: a fixture)
from test_service_smart import LAUNCH, SYSTEM, ehr, register  # noqa: F401 (ehr: a fixture)

LAUNCHED, OTHER = PatientRef(SYSTEM, "mrn-1"), PatientRef(SYSTEM, "mrn-2")


@pytest.fixture
def phg(ehr, tmp_path) -> Iterator[str]:  # noqa: F811 (the fixture imported above)
    """phg's service on a free 127.0.0.1 port, registered with the EHR as a public SMART app, its reading
    store seeded with a week of the launched patient's blood pressure and weight and another's glucose."""
    stack, _, _ = ehr
    sock = socket.create_server(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = register(stack, redirect_uris=[f"{base}/smart/callback"], token_endpoint_auth_method="none")
    config = load_config(env={}, document={
        "outbox": {"path": str(tmp_path / "outbox.sqlite")}, "api": {},
        "smart": {"client_id": client["client_id"], "redirect_url": f"{base}/smart/callback",
                  "frame_ancestors": [base]}})
    assert config.view is not None
    outbox = Outbox(config.outbox_path, config.keep_delivered)
    view = ViewStore(config.view.path, config.view.retention)
    intake = Intake(outbox, ["fhir"], view=view)
    intake.store([blood_pressure(LAUNCHED, 6 * day, 118 + 3 * (day % 4)) for day in range(-7, 0)]
                 + [single(SCALE, LAUNCHED, 188736, f"{80 - day * 0.3:.1f}", "kg", 8 * day) for day in range(-7, 0)]
                 + [single(CUFF, OTHER, 160184, "9.9", "mmol/L", -5)])
    with serving(create_app(ServiceContext(config, outbox, intake, view=view)), sock):
        yield base
    view.close()


def wait_for_view(driver) -> None:
    """Until the (current frame's) document is a view; current_url would name the top-level page."""
    for _ in range(100):  # up to 10 s
        if "/view/" in driver.execute_script("return location.href"):
            return
        time.sleep(0.1)
    raise AssertionError(f"the launch ended at {driver.execute_script('return location.href')}")


@pytest.mark.peers
def test_ehr_launch_in_a_browser_ends_on_the_launched_patients_charts(ehr, phg, browser):  # noqa: F811
    stack, _, _ = ehr
    browser.get(f"{phg}/smart/launch?{urlencode({'iss': stack.gate.base_url, 'launch': LAUNCH})}")
    wait_for_view(browser)
    page = browser.page_source
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg")) >= 2  # blood pressure and weight
    assert "mrn-1" in page and "mrn-2" not in page and "9.9" not in page
    screenshot(browser, "smart-view.png")


@pytest.mark.peers
def test_ehr_launch_inside_the_ehrs_iframe(ehr, phg, browser):  # noqa: F811
    """The EHR's page frames the launch: the whole flow runs in the iframe and ends on the view there."""
    stack, _, _ = ehr
    launch = f"{phg}/smart/launch?{urlencode({'iss': stack.gate.base_url, 'launch': LAUNCH})}"
    browser.get(f"{phg}/openapi.json")  # a page of the framing origin ([smart] frame_ancestors)
    browser.execute_script("document.body.innerHTML = '<iframe id=ehr width=1200 height=800></iframe>';"
                           "document.getElementById('ehr').src = arguments[0];", launch)
    browser.switch_to.frame(browser.find_element(By.ID, "ehr"))
    wait_for_view(browser)
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg")) >= 2
