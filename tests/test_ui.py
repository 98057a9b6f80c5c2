"""The MLflow UI in a real browser: Debian's Chromium, driven by Playwright, against an
`mlflow server` on a store the runner filled with a small sweep.

Screenshots go to the test's folder, and also to $RUNNER_SCREENSHOTS when it is set (the
README's are made with RUNNER_SCREENSHOTS=docs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import missing_service, mlflow_server, runs_of

import runner

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/lib/chromium/chromium")  # the /usr/bin wrapper prints a shell error first
# A closed network: without these Chromium keeps trying to reach Google's services.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
NAMES = ["numpy-sgd-square-lr0.1", "numpy-sgd-square-lr0.3", "torch-sgd-square-lr0.1", "torch-sgd-square-lr0.3"]


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        missing_service("Chromium", "apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_service("Playwright", "pip install playwright")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def keep(screenshot: Path) -> None:
    if folder := os.environ.get("RUNNER_SCREENSHOTS"):
        shutil.copy(screenshot, Path(folder) / screenshot.name)


def test_the_mlflow_ui_lists_a_sweep_under_its_parent_and_charts_the_loss(tmp_path, here, store_uri, browser):
    # The sweep in this process (it records what the command line records: tests/test_api.py)
    assert runner.sweep("backend=numpy,torch", "lr=0.1,0.3", "epochs=15").status == "FINISHED"
    (parent,) = runs_of(store_uri, sweeps=True)
    children = {r.info.run_name: r for r in runs_of(store_uri)}
    assert sorted(children) == NAMES
    experiment = parent.info.experiment_id

    with mlflow_server(tmp_path / "server", store_uri) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 720})
        page.set_default_timeout(60_000)

        # The experiment's runs table: only the sweep's parent run at first, its jobs folded in.
        page.goto(f"{url}/#/experiments/{experiment}/runs")
        parent_link = page.locator(f'a[href="#/experiments/{experiment}/runs/{parent.info.run_id}"]')
        parent_link.wait_for()
        assert parent_link.inner_text() == "sweep backend=numpy,torch lr=0.1,0.3 epochs=15"
        close_assistant = page.get_by_role("button", name="Close")  # a fresh profile opens it
        if close_assistant.count():
            close_assistant.first.click()
        child_links = {name: page.locator(f'a[href="#/experiments/{experiment}/runs/{run.info.run_id}"]')
                       for name, run in children.items()}
        assert all(link.count() == 0 for link in child_links.values())
        page.locator('[role="row"]', has=parent_link).locator("button").first.click()  # unfold the sweep
        for name, link in child_links.items():
            link.wait_for()
            assert link.inner_text() == name
        # Widen the name column to its content (AG Grid does that on a double click on the
        # column's edge), so that the screenshot shows whole names.
        page.locator('.ag-header-cell[col-id="attributes.`Run Name`"] .ag-header-cell-resize').dblclick()
        page.screenshot(path=tmp_path / "mlflow_ui_experiment.png")
        keep(tmp_path / "mlflow_ui_experiment.png")

        # One run's charts: the loss over the epochs, drawn by Plotly.
        run = children["torch-sgd-square-lr0.3"]
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.goto(f"{url}/#/experiments/{experiment}/runs/{run.info.run_id}/model-metrics")
        page.locator(".js-plotly-plot").nth(1).wait_for()  # charts are drawn by Plotly
        page.get_by_text(f"{run.info.run_name} (loss)").wait_for()  # the loss chart's legend
        page.screenshot(path=tmp_path / "mlflow_ui_run_charts.png")
        keep(tmp_path / "mlflow_ui_run_charts.png")
