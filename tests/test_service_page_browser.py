"""The status page in a real headless browser (Debian's chromium, driven by Selenium through chromedriver),
served by uvicorn on 127.0.0.1 from a gateway whose outbox is seeded directly: the page loads, shows the
queued and dead items, and its retry button queues a dead letter again (through the service's same-origin
check on POST, as a browser sends it). Screenshots are kept in tests/artifacts/ (ignored by git);
docs/status-page.png, shown in the README, is one of them.

Skipped when chromium or chromedriver is missing, unless PHG_REQUIRE_BROWSER=1 (.ci/run sets it after
installing both): CI never passes without the browser having run."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from starlette.types import ASGIApp

from phg.service.app import ServiceContext, create_app
from phg.service.page import WAITING_LISTED
from test_service_page import ALICE, BOB, CUFF, SCALE, blood_pressure, seeded, single  # noqa: F401 (seeded: a fixture)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"

if not (CHROMIUM and CHROMEDRIVER) and os.environ.get("PHG_REQUIRE_BROWSER") != "1":
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver")
By = pytest.importorskip("selenium.webdriver.common.by").By
WebDriverWait = pytest.importorskip("selenium.webdriver.support.wait").WebDriverWait


def more_history(ctx: ServiceContext) -> None:
    """A week of readings for the charts, and the queue's last hour: deliveries spread over it."""
    ctx.intake.store([blood_pressure(ALICE, 6 * day, 118 + 3 * (day % 4)) for day in range(2, 9)]
                     + [single(SCALE, BOB, 188736, f"{80 - day * 0.3:.1f}", "kg", 8 * day)
                        for day in range(8)]
                     + [single(CUFF, BOB, 160184, f"{5.2 + (day % 3) * 0.6:.1f}", "mmol/L", 7 * day) for day in range(2, 9)])
    delivered = [item.id for item in ctx.outbox.lease("fhir", 10, 60)]
    ctx.outbox.delivered(delivered)
    now = time.time()
    with sqlite3.connect(ctx.outbox.path) as db:  # as if stored and delivered over the last hour
        for n, item in enumerate(delivered):
            db.execute("UPDATE item SET created = ?, updated = ? WHERE id = ?",
                       (now - 3500 + 200 * n, now - 3000 + 280 * n, item))


@contextmanager
def serving(app: ASGIApp, sock: socket.socket) -> Iterator[str]:
    """`app` served by uvicorn on the listening `sock`, in a thread, until the block ends; its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):  # up to 10 s
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def served(seeded: ServiceContext) -> Iterator[str]:  # noqa: F811 (the fixture imported above)
    """The service on a free 127.0.0.1 port, in a thread; its base URL."""
    more_history(seeded)
    with serving(create_app(seeded), socket.create_server(("127.0.0.1", 0))) as base:
        yield base


@pytest.fixture
def browser() -> Iterator:
    assert CHROMIUM and CHROMEDRIVER, "PHG_REQUIRE_BROWSER=1 but chromium or chromedriver is missing (make browser)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900"):  # --no-sandbox: CI runs as root, where Chromium's sandbox cannot
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    """The whole page as a PNG in tests/artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    driver.set_window_size(1280, driver.execute_script("return document.documentElement.scrollHeight") + 40)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def rows(driver, section: str) -> list[str]:
    return [row.text for row in driver.find_elements(By.CSS_SELECTOR, f"#{section} table tbody tr")]


def test_the_page_shows_queued_and_dead_items_and_retry_queues_a_dead_letter(served, browser, seeded):  # noqa: F811
    browser.get(served)
    assert browser.title == "phg gateway status"
    dead = rows(browser, "dead")
    assert len(dead) == 1 and "Patient not found (OperationOutcome)" in dead[0]
    waiting = seeded.outbox.counts()["queued"]
    assert len(rows(browser, "queued")) == min(waiting, WAITING_LISTED)
    assert f"The oldest {WAITING_LISTED} of {waiting} waiting items." in browser.page_source
    assert "stopped: the server refused the token" in browser.find_element(By.ID, "destinations").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) >= 4  # queues and patients' values
    screenshot(browser, "status-page.png")

    browser.find_element(By.CSS_SELECTOR, "#dead table button").click()

    # The click starts the POST and the 303 back; wait (bounded) for that navigation to end before reading the page.
    WebDriverWait(browser, 10).until(lambda driver: driver.current_url != f"{served}/")
    assert browser.current_url == f"{served}/#dead"
    assert browser.find_element(By.CSS_SELECTOR, "#dead p.empty").text == "No dead letters."
    assert rows(browser, "queued")[0].startswith("2 fhir queued 0")  # the oldest waiting item now
    assert seeded.outbox.get(2).state == "queued"
    screenshot(browser, "status-page-after-retry.png")
