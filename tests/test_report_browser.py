"""The report of a finished small pipeline, opened in a real browser: Debian's chromium, headless, driven
by playwright's Python API (`tools/install_browser.sh` installs chromium; `make test` runs it first).

Fails on any console error or uncaught exception, any request that leaves the file (the report must be
readable offline), any broken image, any plot without marks or with marks that are not drawn, and a
section header that does not name the suite's protocol and metric. Saves a full-page screenshot and
prints its path; with VPEFT_SCREENSHOT=1 it is also copied to reports/screenshot.png (or to the path
VPEFT_SCREENSHOT names).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def _require_browser() -> None:
    """Skip where the browser is missing, except under CI=true: there the test must run, so it fails."""
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -e '.[test]')")
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (tools/install_browser.sh, or apt-get install -y chromium)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def finished_report(smoke_run) -> Path:
    _require_browser()
    report = smoke_run / "reports" / "index.html"  # the session's finished smoke pipeline
    assert report.is_file()
    return report


# What the smoke pipeline (tests/helpers/configs.smoke_config) trains: suite -> methods with a result.
# (The scratch control is a row of vtab-mini's table, not a section with plots of its own.)
EXPECTED_MARKS = {"vtab-mini": ["linear", "lora"]}
#: the across-backbones plot: vtab-mini's methods and its random-init control's (a row of vtab-mini's table,
#: but a backbone of its own in that plot)
ACROSS_MARKS = {**EXPECTED_MARKS, "vtab-mini-scratch": ["linear"]}

_PLOT_FACTS = """() => [...document.querySelectorAll('figure.plot')].map(fig => {
  const svg = fig.querySelector('svg');
  const box = svg.getBoundingClientRect();
  const marks = [...svg.querySelectorAll(`[id^="${fig.id}-mark-"]`)];
  return {id: fig.id, width: box.width, height: box.height,
          title: (svg.querySelector('title') || {}).textContent || '',
          caption: (fig.querySelector('figcaption') || {}).textContent || '',
          marks: marks.map(m => {
            const r = m.getBoundingClientRect();
            return {id: m.id, width: r.width, height: r.height,
                    inside: r.left >= box.left - 1 && r.right <= box.right + 1 &&
                            r.top >= box.top - 1 && r.bottom <= box.bottom + 1,
                    shapes: m.querySelectorAll('path, use, rect, circle').length};
          })};
})"""


def test_report_in_a_real_browser(finished_report, tmp_path):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    screenshot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}")
                    if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(finished_report.as_uri(), wait_until="load")
            images = page.evaluate("() => [...document.images].map(i => ({src: i.src, ok: i.complete && "
                                   "i.naturalWidth > 0}))")
            plots = page.evaluate(_PLOT_FACTS)
            headers = page.evaluate("() => Object.fromEntries([...document.querySelectorAll('section[id^=suite-]')]"
                                    ".map(s => [s.id.slice(6), {protocol: s.querySelector('.suite-meta .protocol')"
                                    ".textContent, metric: s.querySelector('.suite-meta .metric').textContent}]))")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    print(f"\nreport screenshot: {screenshot}")
    wanted = os.environ.get("VPEFT_SCREENSHOT")
    if wanted:
        target = ROOT / "reports" / "screenshot.png" if wanted in ("1", "true") else Path(wanted)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)
        print(f"report screenshot copied to {target}")

    assert not errors, errors
    assert all(url.startswith(("file:", "data:", "about:")) for url in requests), requests  # offline
    assert not [i for i in images if not i["ok"]], images

    by_id = {plot["id"]: plot for plot in plots}
    kinds = ("tradeoff", "memory", "latency", "ppt")  # every run records its costs: all four plots
    # the two suites share their data on two backbones: one table and plot across backbones (issue #22)
    across = "plot-vtab-mini-backbones"
    assert set(by_id) == {f"plot-{suite}-{kind}" for suite in EXPECTED_MARKS for kind in kinds} | {across}
    assert sorted(m["id"] for m in by_id[across]["marks"]) == sorted(
        f"{across}-mark-{m}-{s}" for s, methods in ACROSS_MARKS.items() for m in methods)
    assert all(m["shapes"] > 0 and m["inside"] and m["height"] > 0 for m in by_id[across]["marks"])
    for suite, methods in EXPECTED_MARKS.items():
        for kind in kinds:
            plot = by_id[f"plot-{suite}-{kind}"]
            assert plot["width"] > 200 and plot["height"] > 100, plot
            assert plot["title"] and plot["caption"], plot["id"]
            assert sorted(m["id"] for m in plot["marks"]) == sorted(f"{plot['id']}-mark-{m}" for m in methods)
            for mark in plot["marks"]:  # drawn, visible and inside its plot
                assert mark["shapes"] > 0 and mark["inside"], mark
                assert mark["width"] > 0 or mark["height"] > 0, mark  # a bar of PPT 0 still has a height

    for suite in EXPECTED_MARKS:
        header = " ".join(headers[suite]["protocol"].split())
        assert header == "protocol vtab1k (trained on train800val200, final model evaluated on test)", header
        assert " ".join(headers[suite]["metric"].split()) == "metric: top-1 accuracy (%)"
    assert screenshot.stat().st_size > 10_000
