"""The dashboard in headless Chromium (Debian's, through Playwright for Python) against a real
coordinator and worker on 127.0.0.1: workers show, a job submitted from the form succeeds with
its output, a running job is cancelled, the charts move, and the README's screenshot is taken.

Skipped with one line when Playwright or /usr/bin/chromium is missing (`.ci/run` installs
Chromium). Every wait is on something the page shows, never a sleep.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tcpsched.testing.http import get, request, wait_http
from tcpsched.testing.processes import ProcessGroup, free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
WAIT_MS = 30_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A coordinator with --http and workers bw1 and bw2, for the module."""
    group = ProcessGroup(tmp_path_factory.mktemp("browser") / "run")
    try:
        port = free_port()
        _, address = group.coordinator(extra=["--http", f"127.0.0.1:{port}"])
        group.worker(address, "bw1", slots=2, extra=["--tags", "gpu"])
        group.worker(address, "bw2", slots=2)
        url = f"http://127.0.0.1:{port}"
        wait_http(url)
        # Over HTTP, not a SyncClient: Playwright's sync API owns this thread's event loop.
        wait_until(lambda: request("GET", f"{url}/api/workers")[0] == 200 and sorted(
            w["name"] for w in get(f"{url}/api/workers") if w["state"] == "alive")
            == ["bw1", "bw2"], 60, what="workers bw1 and bw2")
        yield url
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, base: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(base + "/")
    try:
        yield page
    finally:
        context.close()


def test_workers_and_cluster_header_show(page: Any) -> None:
    """The live snapshot fills the header (leader, epoch) and the workers table."""
    page.wait_for_selector("#workers tr[data-name=bw1]")
    page.wait_for_selector("#workers tr[data-name=bw2]")
    assert page.text_content("#leader") == "1"
    assert "gpu" in page.text_content("#workers tr[data-name=bw1]")
    assert "alive" in page.text_content("#workers tr[data-name=bw2]")
    assert page.text_content("#live") == "live"


def test_submit_from_form_and_see_output(page: Any) -> None:
    """A shell job submitted from the form shows on its page as succeeded with its output."""
    page.fill("#submit-form input[name=shell]", "echo hello from the browser")
    page.click("#submit-form button[type=submit]")
    page.click("#submit-result a")
    page.wait_for_selector("#job-state .succeeded")
    page.wait_for_function("document.querySelector('#job-stdout').textContent.includes("
                           "'hello from the browser')")
    assert '"state": "succeeded"' in page.text_content("#job-record")


def test_cancel_running_job_from_its_page(page: Any, base: str) -> None:
    """The cancel button on a running job's page cancels it."""
    status, _, value = request("POST", f"{base}/api/jobs", {"shell": "sleep 60"})
    assert status == 201
    job_id = value["id"]
    page.goto(f"{base}/#/job/{job_id}")
    page.wait_for_selector("#job-state .running")
    page.click("#cancel-btn")
    page.wait_for_selector("#job-state .cancelled")
    assert get(f"{base}/api/jobs/{job_id}")["state"] == "cancelled"


def test_retry_without_route_says_so(page: Any, base: str) -> None:
    """Retry on a coordinator without the route shows that it is not available."""
    status, _, value = request("POST", f"{base}/api/jobs", {"shell": "false"})
    assert status == 201
    page.goto(f"{base}/#/job/{value['id']}")
    page.wait_for_selector("#job-state .failed")
    page.click("#retry-btn")
    page.wait_for_selector("#action-error:has-text('not available')")


def test_charts_move_and_screenshot(page: Any, base: str) -> None:
    """Running jobs move the charts' lines; the README's screenshot is taken here."""
    page.wait_for_selector("#workers tr[data-name=bw1]")
    for i in range(6):
        status, _, value = request("POST", f"{base}/api/jobs",
                                   {"shell": f"sleep 1.5; echo {i}"})
        assert status == 201, value
    page.wait_for_function("document.querySelector('#now-running').textContent !== '0'")
    page.wait_for_function("document.querySelector('#now-pending').textContent !== '0' || "
                           "document.querySelector('#now-running').textContent !== '0'")
    page.wait_for_function("document.querySelector('#chart-running polyline')"
                           ".getAttribute('points').split(' ').length > 1")
    page.wait_for_function("document.querySelector('#now-rate').textContent !== '0.0'")
    page.wait_for_selector("#jobs tbody tr")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def test_schedules_degrade_clearly(page: Any) -> None:
    """Without /api/schedules the schedules panel says it is not available."""
    page.wait_for_selector("#schedules:has-text('not available')")
