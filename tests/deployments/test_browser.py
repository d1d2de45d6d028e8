"""The Prefect UI in a real browser: a run started from the on-demand deployment's form tells
why its batch size changed (the summary's list and the chart on its Artifacts tab).

Debian's Chromium, driven by Playwright for Python; `playwright install` is never needed.
The screenshots stay in a temporary folder of their own, and their paths are printed.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.models import artifact_key
from tests.deployments.support import PrefectServer, Served, final_flow_run, write_items_csv

pytestmark = [pytest.mark.server, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ITEMS = 300
"""Enough for the first change of size (after three stages of 50) and a few more stages."""
RUN_SECONDS = 90.0
SUBMIT_ATTEMPTS = 5
"""A user presses Submit again when the UI says the server is unavailable."""
UI_SECONDS = 30_000
"""Milliseconds Playwright waits for a page's element (the UI loads its data after the page)."""


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # The UI scrolls inside a panel: a tall window shows the whole page in a screenshot.
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.set_default_timeout(UI_SECONDS)
            yield page
        finally:
            browser.close()


def _children(api: httpx.Client, flow_run_id: str) -> list[dict[str, Any]]:
    response = api.post(
        "/flow_runs/filter",
        json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC"},
    )
    response.raise_for_status()
    runs: list[dict[str, Any]] = response.json()
    return runs


def _decision_task_names(api: httpx.Client, flow_run_id: str) -> list[str]:
    response = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}})
    response.raise_for_status()
    return [run["name"] for run in response.json() if run["name"].startswith("decide-")]


def test_a_run_from_the_form_shows_why_its_batch_size_changed(
    served: Served, api: httpx.Client, prefect_server: PrefectServer, page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    write_items_csv(tmp_path / "items.csv", ITEMS, "W")
    pipeline = f"browser-{uuid.uuid4().hex[:8]}"
    # Kept after the test (pytest keeps only its last few temporary folders), to look at.
    folder = Path(tempfile.mkdtemp(prefix="batchpilot-browser-"))
    shots: list[Path] = []

    def shot(name: str) -> None:
        shots.append(folder / f"{len(shots) + 1}-{name}.png")
        page.screenshot(path=str(shots[-1]))

    # The default UI (V2): the deployment's custom-run form, with its generated run name kept.
    page.goto(f"{prefect_server.url}/v2/deployments/deployment/{served.on_demand_id}/run")
    page.get_by_label("Path").fill(str(tmp_path / "items.csv"))
    page.get_by_label("Pipeline (Optional)").fill(pipeline)
    expect(page.get_by_label("Warm Start (Optional)")).to_be_visible()
    shot("form")
    for _ in range(SUBMIT_ATTEMPTS):
        with page.expect_response(lambda response: response.url.endswith("/create_flow_run")) as submitted:
            page.get_by_role("button", name="Submit").click()
        if submitted.value.status != 503:  # a SQLite-backed server busy with its own services
            break
        page.wait_for_timeout(1000)
    assert submitted.value.status == 201, submitted.value.text()
    created = submitted.value.json()
    assert created["parameters"]["pipeline"] == pipeline
    run = final_flow_run(api, created["id"], timeout=RUN_SECONDS)
    assert run["state_type"] == "COMPLETED", run["state"]["message"]
    assert re.fullmatch(rf"{pipeline}-\d{{8}}-\d{{6}}-[0-9a-f]{{4}}", run["name"]), run["name"]
    assert {"batchpilot", f"pipeline:{pipeline}"} <= set(run["tags"])
    children = _children(api, run["id"])
    assert [child["name"] for child in children] == [
        f"{pipeline}-stage-{number}-size-{child['parameters']['batch_size']}"
        for number, child in enumerate(children, start=1)
    ]
    assert all({"batchpilot", f"pipeline:{pipeline}"} <= set(child["tags"]) for child in children)
    assert sorted(_decision_task_names(api, run["id"])) == sorted(
        f"decide-after-stage-{number}" for number in range(1, len(children) + 1)
    )
    sizes = [child["parameters"]["batch_size"] for child in children]
    changed = [
        f"Stage {number}: {'grew' if after > before else 'shrank'} from {before} to {after}."
        for number, (before, after) in enumerate(zip(sizes, sizes[1:]), start=1)
        if after != before
    ]
    assert changed, f"the size never changed: {sizes}"

    page.goto(f"{prefect_server.url}/v2/runs/flow-run/{run['id']}?tab=Artifacts")
    key = artifact_key(pipeline)
    expect(page.get_by_text("Completed").first).to_be_visible()
    for card in ("summary", "stages", "chart"):
        expect(page.get_by_text(f"{key}-{card}", exact=True)).to_be_visible()
    shot("artifacts-tab")

    page.get_by_text(f"{key}-summary", exact=True).click()
    expect(page.get_by_role("heading", name=f"Pipeline {pipeline}")).to_be_visible()
    expect(page.get_by_role("heading", name="Why the size changed")).to_be_visible()
    listed = page.locator("li", has_text=re.compile(r"^Stage \d+: (grew|shrank) from"))
    # Every change between two stages that ran is listed, in order, with its reason after it;
    # so may be the decision after the last stage. (`expect` waits out the page's re-renders.)
    expect(listed).to_contain_text([re.compile("^" + re.escape(change)) for change in changed])
    shown = listed.all_inner_texts()
    assert len(shown) - len(changed) in (0, 1), shown
    assert all(text.split(". ", 1)[1].strip() for text in shown), shown
    chart = page.get_by_role("img", name="Batch size, High share and items per second per stage")
    expect(chart).to_be_visible()
    assert chart.evaluate("image => image.complete && image.naturalWidth") > 0, "the chart did not load"
    shot("summary")

    page.go_back()
    page.get_by_text(f"{key}-chart", exact=True).click()
    image = page.locator("main img[src^='data:image/svg+xml']")
    expect(image).to_be_visible()
    assert image.evaluate("image => image.complete && image.naturalWidth") > 0, "the image artifact did not load"
    shot("chart")
    print("\nscreenshots:\n" + "\n".join(str(path) for path in shots))
