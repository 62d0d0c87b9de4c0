"""The Airflow UI in a real browser: Debian's Chromium, headless, driven by Playwright (PyPI
`playwright`, told to use /usr/bin/chromium: it downloads no browser). Log in with the generated
password, open the demo DAG, see its run succeed and one task's log, read from S3.

Without Chromium this FAILS (never skips): `apt-get install chromium` (.ci/run does it).
With AIRFLOW_K3S_UPDATE_DOCS=1 the grid view's screenshot is written to docs/ui-grid.png.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from airflow_k3s.generated import ADMIN_USER
from airflow_k3s.settings import ROOT
from tests.harness import DEMO, Stack

pytestmark = pytest.mark.docker
CHROMIUM = os.environ.get("AIRFLOW_K3S_CHROMIUM", "/usr/bin/chromium")
#: Chromium on a closed network: no background connections, no first-run, no sandbox (root).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def page(stack: Stack) -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: the UI tier needs it (apt-get install chromium; "
            "AIRFLOW_K3S_CHROMIUM points elsewhere)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        yield context.new_page()
        browser.close()


def log_in(page: Any, stack: Stack) -> None:
    cfg = stack.settings
    page.goto(cfg.airflow_url + "/")
    page.wait_for_selector("input[type=password]")
    page.locator("input:not([type=password]):not([type=hidden])").first.fill(ADMIN_USER)
    page.locator("input[type=password]").fill(cfg.secrets["AIRFLOW_ADMIN_PASSWORD"])
    page.locator("input[type=password]").press("Enter")
    page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))


def test_log_in_see_the_demo_run_succeed_and_a_task_log(stack: Stack, page: Any) -> None:
    run_id = stack.run_dag(DEMO, timeout=600)
    log_in(page, stack)
    base = stack.settings.airflow_url
    run = quote(run_id, safe="")
    page.goto(f"{base}/dags/{DEMO}/runs/{run}")
    page.get_by_text(re.compile("^success$", re.I)).first.wait_for()
    page.goto(f"{base}/dags/{DEMO}")
    page.get_by_text(DEMO).first.wait_for()
    page.wait_for_timeout(3000)  # the grid fetches its runs after the page renders
    shot = stack.state_dir / "ui-grid.png"
    page.screenshot(path=str(shot))
    if os.environ.get("AIRFLOW_K3S_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "ui-grid.png")
    # The task instance's page opens on its log (there is no .../logs route in Airflow 3.3's UI).
    page.goto(f"{base}/dags/{DEMO}/runs/{run}/tasks/fetch")
    page.get_by_text(re.compile("Wrote 3 orders")).first.wait_for()
    # The log's source, folded under "Log message source details": S3, as the worker left it.
    page.get_by_text("Log message source details").first.click()
    page.get_by_text(re.compile("s3://airflow-logs/logs/dag_id=demo_rest_to_s3/")).first.wait_for()
    assert shot.stat().st_size > 10_000, "the screenshot is empty"
