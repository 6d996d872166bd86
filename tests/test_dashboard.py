"""`fraudops dashboard` on a small demo workspace: pages with data, charts drawn, analysts' verdicts stored
and turned into labels — through a real browser (Debian's Chromium driven by Playwright) and through the
ASGI app for the error cases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from fraudops.cli import build
from fraudops.dashboard.app import create_app
from fraudops.data.schema import LABEL, TX_ID
from fraudops.modeling.model import LogisticModel
from fraudops.monitoring.step import load_current
from fraudops.workspace import load_settings
from fraudops.workspace.layout import MONITORING_HISTORY, VERDICT_LABELS, VERDICTS
from fraudops.workspace.storage import Storage
from servers import CHROMIUM_ARGS, Dashboard, chromium, start_dashboard

KEY = "s3cret-key"
ARTIFACTS = Path(__file__).parents[1] / ".artifacts" / "dashboard"


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`fraudops demo` with few cards and trees: three executions, two champions, monitoring history."""
    ws = str(tmp_path_factory.mktemp("dash") / "demo")
    result = CliRunner().invoke(build(), ["demo", ws, "--customers", "300", "--trees", "20"])
    assert result.exit_code == 0, result.output
    return ws


@pytest.fixture(scope="module")
def server(demo_ws: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    chromium()  # fails naming the Debian package when the browser is missing
    dash = start_dashboard(demo_ws, tmp_path_factory.mktemp("dash-log"), {"FRAUDOPS_SERVE__API_KEY": KEY})
    yield dash
    dash.stop()


def _canvas_ink(page: object, selector: str) -> int:
    """Non-transparent pixels drawn on the chart's canvas."""
    return int(
        page.eval_on_selector(  # type: ignore[attr-defined]
            f"{selector} canvas",
            "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }",
        )
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the demo fixture: about a minute alone, much longer on a loaded machine
def test_the_dashboard_in_a_real_browser(demo_ws: str, server: Dashboard):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    settings = load_settings(demo_ws)
    storage = Storage(settings.workspace)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)  # a loaded CI machine
            # without the key every page leads to the login form
            page.goto(f"{server.url}/executions")
            assert page.url.endswith("/login")
            page.fill("input[name=api_key]", KEY)
            page.click("button[type=submit]")
            page.wait_for_selector("#decision")
            assert "Retraining required" in page.inner_text("#decision")
            page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

            page.goto(f"{server.url}/executions")
            rows = page.locator("tr.execution")
            assert rows.count() == 3
            assert page.locator("td.status.succeeded").count() == 3
            assert "monitor" in rows.first.inner_text()
            page.screenshot(path=str(ARTIFACTS / "executions.png"), full_page=True)

            page.goto(f"{server.url}/champion")
            assert page.locator("tr.version").count() == 2
            assert "promoted" in page.inner_text("#decisions")
            page.screenshot(path=str(ARTIFACTS / "champion.png"), full_page=True)

            page.goto(f"{server.url}/monitoring")
            history = storage.read_frame(MONITORING_HISTORY)
            assert page.locator("tr.run").count() == history.height >= 2
            for name in ("drift", "ap", "alerts", "daily_ap"):
                chart = f"[data-chart={name}]"
                page.wait_for_selector(f"{chart}[data-drawn=yes]")
                assert _canvas_ink(page, chart) > 500, name
            page.screenshot(path=str(ARTIFACTS / "monitoring.png"), full_page=True)

            page.goto(f"{server.url}/decision")
            assert page.locator("iframe.report").count() == 1
            page.goto(f"{server.url}/alerts")
            alerts = page.locator("tr.alert")
            assert alerts.count() >= 3
            scores = [float(alerts.nth(i).locator("td").first.inner_text()) for i in range(alerts.count())]
            assert scores == sorted(scores, reverse=True)
            page.fill("#analyst", "alice")
            marked = []
            for i, verdict in enumerate(("fraud", "genuine", "fraud")):
                row = alerts.nth(i)
                marked.append((row.get_attribute("data-tx"), verdict))
                row.locator(f"button[data-verdict={verdict}]").click()
                page.wait_for_selector(f"tr.alert.done[data-tx='{marked[-1][0]}']")
            page.screenshot(path=str(ARTIFACTS / "alerts.png"), full_page=True)
            page.reload()
            assert not {tx for tx, _ in marked} & {
                page.locator("tr.alert").nth(i).get_attribute("data-tx") for i in range(3)
            }
        finally:
            browser.close()
    log = storage.read_frame(VERDICTS)
    assert log.select("transaction_id", "verdict").rows() == marked
    assert set(log["analyst"]) == {"alice"} and log["decided_at"].null_count() == 0
    labels = storage.read_frame(VERDICT_LABELS)
    assert dict(zip(labels[TX_ID].cast(pl.String), labels[LABEL], strict=True)) == {
        tx: int(v == "fraud") for tx, v in marked
    }
    # the labels are valid current data: monitoring reads them as realized labels
    model = LogisticModel([], 0.5)
    current = load_current(storage, settings, model)
    verdict_rows = current.filter(pl.col(TX_ID).cast(pl.String).is_in([tx for tx, _ in marked]))
    assert verdict_rows[TX_ID].n_unique() == 3 and verdict_rows[LABEL].null_count() == 0
    # each verdict's label is among them (an alert also labelled in another current_data file appears
    # twice: not deduplicated yet, see the README's known gaps)
    found = set(zip(verdict_rows[TX_ID].cast(pl.String), verdict_rows[LABEL], strict=True))
    assert {(tx, int(v == "fraud")) for tx, v in marked} <= found


def test_api_key_and_bad_verdicts(demo_ws: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FRAUDOPS_SERVE__API_KEY", KEY)
    settings = load_settings(demo_ws)
    client = TestClient(create_app(settings, Storage(settings.workspace)), follow_redirects=False)
    assert client.get("/monitoring").status_code == 303
    assert client.post("/api/verdicts", json={}).status_code == 401
    assert client.get("/health").status_code == 200
    headers = {"X-API-Key": KEY}
    bad = client.post("/api/verdicts", content=b"not json", headers=headers)
    assert bad.status_code == 400 and "request body" in bad.json()["error"]
    unknown = client.post(
        "/api/verdicts",
        json={"transaction_id": "nope", "verdict": "fraud", "analyst": "bob"},
        headers=headers,
    )
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    page = client.get("/alerts", headers=headers)
    tx = page.text.split('data-tx="', 1)[1].split('"', 1)[0]
    wrong = client.post(
        "/api/verdicts", json={"transaction_id": tx, "verdict": "maybe", "analyst": "bob"}, headers=headers
    )
    assert wrong.status_code == 400 and "'fraud' or 'genuine'" in wrong.json()["error"]
    anonymous = client.post(
        "/api/verdicts", json={"transaction_id": tx, "verdict": "fraud", "analyst": " "}, headers=headers
    )
    assert anonymous.status_code == 400 and "analyst" in anonymous.json()["error"]
    detail = client.get(f"/alerts/{tx}", headers=headers)
    assert detail.status_code == 200 and "recent transactions" in detail.text
    assert client.get("/report", headers=headers).text.startswith("<!DOCTYPE html>")


def test_monitor_history_command(demo_ws: str):
    result = CliRunner().invoke(build(), ["monitor", "history", "-w", demo_ws])
    assert result.exit_code == 0, result.output
    table = Storage(demo_ws).read_frame(MONITORING_HISTORY)
    assert f"monitoring history ({table.height} runs)" in result.output
    for alerts, decision in table.select("alerts", "retraining_required").rows():
        assert f"{alerts:,}" in result.output and decision in result.output
