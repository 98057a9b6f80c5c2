"""The run lifecycle: every run ends FINISHED, FAILED with its error, or KILLED."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import runs_of
from mlflow import MlflowClient

import runner
from runner.descent.loop import Trajectory
from runner.records import tracking


@pytest.fixture
def store(store_uri):
    return tracking.connect(store_uri, "lifecycle")


def status(store, run_id):
    return store.client.get_run(run_id).info.status


def test_a_run_that_ends_normally_is_finished(store):
    with store.run("ok", tags={"backend": "numpy"}) as run_id:
        store.log_outputs(run_id, {"final_loss": 0.0}, {"outcome": "converged"},
                          Trajectory(np.arange(2500.0), np.zeros(2500), np.ones(2500), "cpu"))
    assert status(store, run_id) == "FINISHED"
    history = store.client.get_metric_history(run_id, "x")
    assert sorted(m.step for m in history) == list(range(2500))  # 7500 values, several batches
    run = store.client.get_run(run_id)
    assert run.data.metrics["final_loss"] == 0.0 and run.data.tags["outcome"] == "converged"


def test_an_error_fails_the_run_and_attaches_the_error(store):
    with pytest.raises(ZeroDivisionError):
        with store.run("boom", tags={}) as run_id:
            1 / 0
    run = store.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "ZeroDivisionError: division by zero"
    assert [a.path for a in store.client.list_artifacts(run_id)] == ["error.txt"]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_kills_the_run(store, interrupt):
    with pytest.raises(interrupt):
        with store.run("stopped", tags={}) as run_id:
            raise interrupt()
    assert status(store, run_id) == "KILLED"


def test_nan_is_kept_and_inf_is_clamped(store):
    with store.run("nan", tags={}) as run_id:
        store.log_outputs(run_id, {}, {}, Trajectory(np.array([1.0, np.nan]), np.array([1.0, np.inf]),
                                                     np.array([1.0, -np.inf]), "cpu"))
    x = {m.step: m.value for m in store.client.get_metric_history(run_id, "x")}
    loss = {m.step: m.value for m in store.client.get_metric_history(run_id, "loss")}
    assert np.isnan(x[1]) and loss[1] > 1e308


def test_a_relative_sqlite_uri_means_the_launch_folder(tmp_path):
    assert tracking.tracking_uri("sqlite:///db/m.db", tmp_path) == f"sqlite:///{tmp_path}/db/m.db"
    assert tracking.tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


def test_a_long_run_logs_an_even_stride_with_the_first_and_last_step(store):
    n = 100_001
    trajectory = Trajectory(np.arange(n, dtype=float), np.zeros(n), np.ones(n), "cpu")
    with store.run("long", tags={}) as run_id:
        store.log_outputs(run_id, {}, {}, trajectory, max_steps=1001)
    steps = sorted(m.step for m in store.client.get_metric_history(run_id, "x"))
    assert len(steps) == 1001 and steps[0] == 0 and steps[-1] == n - 1
    assert set(np.diff(steps)) == {100}


# Whole runs, through the Python API in this process (it records what the command line records:
# tests/test_api.py).

def test_the_store_and_experiment_from_config_keys(here, store_uri):
    other = f"sqlite:///{here / 'other.db'}"
    runner.run("epochs=2", f"mlflow.tracking_uri={other}", "mlflow.experiment_name=article")
    assert runs_of(store_uri, "article") == [] and len(runs_of(other, "article")) == 1
    assert (here / "mlartifacts").is_dir()  # beside other.db


def test_a_long_run_keeps_every_epoch_in_the_csv_and_a_stride_in_mlflow(here, store_uri):
    run = runner.run("epochs=100000", "lr=0.0001", "mlflow.max_logged_steps=1000")
    client = MlflowClient(store_uri)
    steps = sorted(m.step for m in client.get_metric_history(run.run_id, "loss"))
    assert len(steps) == 1000 and (steps[0], steps[-1]) == (0, 100000)
    local = client.download_artifacts(run.run_id, "trajectory.csv", str(here / "csv"))
    assert sum(1 for _ in open(local)) == 1 + 100001


def test_a_large_dim_run_logs_the_first_coordinates_and_the_norms(here, store_uri):
    runner.run("dim=100000", "epochs=5", "lr=0.1")
    (run,) = runs_of(store_uri)
    names = set(run.data.metrics)
    assert {"x/0", "x/9", "grad/9", "loss", "x_norm", "grad_norm"} <= names and "x/10" not in names
    assert run.data.metrics["loss"] == pytest.approx(100000 * 25 * 0.8 ** 10, rel=1e-5)
