"""report.html in a real browser: headless Chromium (Debian's package, driven by Playwright with
the system browser; no browser download) opens a report built from a synthetic ledger covering
every lesson, and checks that every cut's row and plot rendered and that nothing was fetched from
the network. A full-page screenshot is kept under COSTLAB_RESULTS."""
import os
import re
from pathlib import Path

import pytest

from costlab import course, ledger
from costlab.course import report
from tests.ledgers import full_ledger

CHROMIUM = Path(os.environ.get("COSTLAB_CHROMIUM", "/usr/bin/chromium"))
# No sandbox (CI runs as root in a container), no GPU, and none of Chromium's own network chatter.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = "report_browser_test.png"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"headless Chromium not found at {CHROMIUM}: install Debian's chromium package "
           "(`apt-get install chromium`; .ci/run does this in CI) or set COSTLAB_CHROMIUM")


def test_every_cut_row_and_plot_renders_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    path = tmp_path / "ledger.jsonl"
    full_ledger(path)
    html = report.write(ledger.read_report(path), tmp_path)
    shot = ledger.results_dir() / SCREENSHOT
    external, errors = [], []

    def only_the_file(route):  # the report must be self-contained: any other request fails the test
        if route.request.url.startswith("file://"):
            return route.continue_()
        external.append(route.request.url)
        return route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=120_000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.route("**/*", only_the_file)
            page.goto(html.as_uri(), wait_until="load", timeout=60_000)
            for lesson in course.LESSONS:
                row = page.locator(f'tr.cut[data-lesson="{lesson.name}"]')
                assert row.count() == 1 and row.is_visible(), f"{lesson.name}: row missing"
                assert re.fullmatch(r"[\d.,]+x", row.locator(".ratio").inner_text()), f"{lesson.name}: no ratio"
                img = page.locator(f'figure.cut-plot[data-lesson="{lesson.name}"] img')
                assert img.count() == 1, f"{lesson.name}: plot missing"
                img.scroll_into_view_if_needed()
                size = img.evaluate("i => i.complete ? [i.naturalWidth, i.naturalHeight] : [0, 0]")
                assert min(size) > 50, f"{lesson.name}: plot did not decode ({size})"
                assert img.bounding_box()["height"] > 50, f"{lesson.name}: plot not laid out"
            pareto = page.locator("figure.pareto img")
            assert pareto.count() == 1 and pareto.evaluate("i => i.naturalWidth") > 50
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not external, f"the report fetched from the network: {external}"
    assert not errors, f"script errors in the page: {errors}"
    assert shot.stat().st_size > 10_000
