"""The Python API (`runner.run`, `runner.sweep`, `runner.load`, `runner.load_sweep`): the same
records as the command line with the same overrides, bad input refused the same way, and the
calling process left as it was."""

from __future__ import annotations

import gc
import logging
import os

import mlflow
import numpy as np
import pytest
from conftest import FIXTURES, LARGEST_GROUP, TEST_BACKENDS, run_cli, runs_of, snapshot
from mlflow import MlflowClient

import runner

pytestmark = pytest.mark.slow

# What differs between two recordings of the same run: when and where they ran, and their ids.
VOLATILE_TAGS = {"mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit",
                 "mlflow.parentRunId"}
VOLATILE_METRICS = {"wall_time_s"}


def recorded(uri: str, run_id: str) -> dict:
    """Everything a run recorded that two recordings of it must share."""
    client = MlflowClient(uri)
    run = client.get_run(run_id)

    def artifacts(path=None):
        for item in client.list_artifacts(run_id, path):
            yield from (artifacts(item.path) if item.is_dir else [item.path])

    return {
        "name": run.info.run_name, "status": run.info.status, "params": run.data.params,
        "tags": {k: v for k, v in run.data.tags.items() if k not in VOLATILE_TAGS},
        "metrics": {name: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]
                    for name in run.data.metrics if name not in VOLATILE_METRICS},
        "artifacts": sorted(artifacts()),
    }


def test_a_run_from_python_records_what_the_command_line_records(here, store_uri):
    handlers, cwd = list(logging.getLogger().handlers), os.getcwd()
    collector = gc.get_threshold()  # a process of the runner's own sets its own (runner/process.py)
    result = runner.run("backend=numpy", "lr=0.1", "epochs=5")
    again = runner.run("backend=numpy", "lr=0.1", "epochs=5")  # a second call in the same process
    typed = run_cli("backend=numpy", "lr=0.1", "epochs=5", cwd=here, store_uri=store_uri)
    assert typed.returncode == 0, typed.stderr[-2000:]

    cli_run = runs_of(store_uri)[-1]
    assert recorded(store_uri, result.run_id) == recorded(store_uri, again.run_id) == recorded(
        store_uri, cli_run.info.run_id)
    assert result.params == cli_run.data.params
    assert result.tags["config_hash"] == cli_run.data.tags["config_hash"]

    # The result: the trajectory as arrays, the outcome and summary, the article's figure.
    np.testing.assert_allclose(result.trajectory.x, 5 * 0.8 ** np.arange(6), rtol=1e-6)
    assert result.outcome == "not_converged" and result.summary["final_loss"] == pytest.approx(2.68435, rel=1e-5)
    figure = result.figure
    assert [len(line.get_xdata()) for line in figure.axes[0].lines] == [400, 6]
    # The process is as it was: logging, directory, garbage collector, no active MLflow run;
    # outputs land here.
    assert logging.getLogger().handlers == handlers and os.getcwd() == cwd
    assert gc.get_threshold() == collector
    assert mlflow.active_run() is None
    assert len(list(here.glob("outputs/*/*/runner.log"))) == 3


def test_a_sweep_from_python_records_what_the_command_line_records(here, store_uri):
    collector = gc.get_threshold()
    grid = runner.sweep("backend=numpy", "lr=0.1,0.3", "epochs=5")
    assert gc.get_threshold() == collector
    typed = run_cli("backend=numpy", "lr=0.1,0.3", "epochs=5", cwd=here, store_uri=store_uri)
    assert typed.returncode == 0, typed.stderr[-2000:]
    cli_parent = runs_of(store_uri, sweeps=True)[-1]

    assert grid.status == "FINISHED" and len(grid.table) == 2
    assert sorted(grid.table["lr"]) == [0.1, 0.3] and set(grid.table["status"]) == {"FINISHED"}
    ours = sorted((recorded(store_uri, run_id) for run_id in grid.run_ids), key=lambda r: r["name"])
    theirs = sorted((recorded(store_uri, r.info.run_id) for r in runs_of(store_uri)
                     if r.data.tags["mlflow.parentRunId"] == cli_parent.info.run_id), key=lambda r: r["name"])
    assert ours == theirs
    parent = recorded(store_uri, grid.parent_run_id)
    assert parent["artifacts"] == recorded(store_uri, cli_parent.info.run_id)["artifacts"]
    assert (grid.folder / "report" / "final_loss_vs_lr.png").exists()

    # Read back, from the store alone.
    loaded = runner.load_sweep(grid.parent_run_id, store_uri)
    assert loaded.table.equals(grid.table) and sorted(loaded.run_ids) == sorted(grid.run_ids)
    run = runner.load(grid.run_ids[0], store_uri)
    assert run.trajectory is not None and len(run.trajectory.x) == 6


def test_a_batched_sweep_from_python(here, store_uri):
    dense = runner.sweep("backend=numpy", "lr=range(0.1,1.0,0.1)", "epochs=20", batch=True)
    (batch_id,) = dense.run_ids
    batch = runner.load(batch_id)
    assert batch.tags["kind"] == "batch" and batch.trajectory is None
    assert len(batch.points) == 9 and list(batch.points["lr"]) == pytest.approx(np.arange(1, 10) / 10)
    assert "points.csv" in batch.artifacts and len(dense.table) == 1


@pytest.mark.parametrize("overrides, message, as_typed", [
    (("lr=-0.1",), "lr=-0.1 is not allowed", True),  # the runner's check: one line
    (("backend=mxnet",), "Could not find 'backend/mxnet'", True),  # Hydra's: its lines, as the CLI prints them
    (("lr=abc",), "full_key: lr", True),
    (("lr=(",), "Error parsing override 'lr=('", True),
    (("lr=0.1,0.3",), "use runner.sweep", False),
    (("experiment=article",), "use runner.sweep", False),
])
def test_bad_input_raises_the_command_lines_message_and_records_nothing(here, store_uri, overrides, message, as_typed):
    before = snapshot(store_uri)
    with pytest.raises(runner.ConfigError) as refused:
        runner.run(*overrides)
    assert message in str(refused.value)
    assert snapshot(store_uri) == before
    if as_typed:  # the same message, and all the command line says: no stack, at most Hydra's list of options
        typed = run_cli(*overrides, cwd=here, store_uri=store_uri)
        assert typed.returncode == 1 and str(refused.value) in typed.stderr
        assert "Traceback" not in typed.stderr and len(typed.stderr.strip().splitlines()) <= 10 + LARGEST_GROUP


def test_a_sweep_with_a_failing_job_raises_with_the_sweep(here, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    with pytest.raises(runner.SweepFailed) as failed:
        runner.sweep(TEST_BACKENDS, "backend=failing", "lr=0.1,0.2", "epochs=3")  # fails at lr=0.2
    sweep = failed.value.result
    assert sweep.status == "FAILED" and list(sweep.failed["lr"]) == [0.2] and len(sweep.table) == 2
    assert "1 of 2 jobs failed" in str(failed.value) and "injected failure at lr=0.2" in str(failed.value)


def test_a_bad_sweep_raises_before_anything_is_recorded(here, store_uri):
    before = snapshot(store_uri)
    with pytest.raises(runner.ConfigError) as refused:
        runner.sweep("lr=0.1,-0.1", "epochs=3")
    assert str(refused.value).startswith("job #1 (lr=-0.1 epochs=3): lr=-0.1 is not allowed")
    assert snapshot(store_uri) == before and not (here / "outputs").exists()
