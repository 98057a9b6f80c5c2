"""Presets, vector losses, user expressions and the sweep report, run as a user runs them."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKENDS, REPO, run_cli, runs_of
from mlflow import MlflowClient

import runner

pytestmark = pytest.mark.slow


def test_lr_sweep_preset_and_its_report(tmp_path, store_uri):
    """The preset on two of its three backends (TensorFlow's sweeps are test_cli's) at one learning
    rate of each regime: converging, in one step, cycling, diverging (the notebook runs the whole
    preset in-process); under the joblib launcher the report is checked in test_reliability.py."""
    result = run_cli("experiment=lr_sweep", "hydra.sweeper.params.backend='numpy,torch'",
                     "hydra.sweeper.params.lr='0.1,0.5,1.0,1.2'", cwd=tmp_path, store_uri=store_uri)
    assert result.returncode == 0, result.stderr[-3000:]

    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")  # one folder for the sweep
    assert sorted(int(d.name) for d in sweep_dir.iterdir() if d.name.isdigit()) == list(range(8))
    assert (sweep_dir / "report" / "runs.csv").is_file()

    client = MlflowClient(store_uri)
    (parent,) = runs_of(store_uri, "lr_sweep", sweeps=True)
    children = runs_of(store_uri, "lr_sweep")
    assert len(children) == 2 * 4
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        lr = float(run.data.params["lr"])
        expected = "diverged" if lr > 1 else "not_converged" if lr == 1 else "converged"
        assert run.data.tags["outcome"] == expected, (lr, run.data.tags["backend"])
        epochs_run = int(run.data.metrics["epochs_run"])
        assert epochs_run == 200 or expected == "diverged" and epochs_run < 200
        for name in ("x", "loss", "grad"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, name))
            assert steps == list(range(epochs_run + 1))

    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep experiment=lr_sweep"
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert report == {"report/runs.csv", "report/trajectories.png", "report/final_loss_vs_lr.png", "report/paths.png"}
    table = client.download_artifacts(parent.info.run_id, "report/runs.csv", str(tmp_path))
    rows = list(csv.DictReader(open(table)))
    assert len(rows) == 8 and {r["backend"] for r in rows} == {"numpy", "torch"}
    assert all(float(r["parity"]) < 1e-5 for r in rows)  # float32: the backends agree
    assert {r["outcome"] for r in rows if float(r["lr"]) > 1} == {"diverged"}
    assert parent.data.metrics["jobs"] == 8 and parent.data.metrics["jobs_failed"] == 0
    assert "parity/torch" in parent.data.metrics

    output = result.stdout + result.stderr
    assert "Sweep report: 8 runs (0 reused), 0 failed" in output
    assert "Parity (largest relative difference from the other backends): numpy" in output


# The tests below run in this process through the Python API (`here`), which records what the
# command line records (tests/test_api.py): what a process of its own adds is checked above.

def test_a_vector_loss_logs_coordinates_and_the_gradient_norm(here, store_uri):
    runner.sweep("loss=rosenbrock", "x_start=[-1.5,2]", "lr=0.0005", "epochs=50", "optimizer=adam",
                 "backend=numpy,torch")
    client = MlflowClient(store_uri)
    runs = runs_of(store_uri)
    histories = []
    for run in runs:
        names = set(run.data.metrics)
        assert {"x/0", "x/1", "loss", "grad/0", "grad/1", "grad_norm"} <= names and "x" not in names
        histories.append([m.value for m in sorted(client.get_metric_history(run.info.run_id, "x/1"),
                                                   key=lambda m: m.step)])
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-5)
    assert histories[0][0] == 2.0 and len(histories[0]) == 51


def test_a_user_expression_on_every_backend(here, store_uri):
    runner.sweep("loss=expr", "loss.expr='x**4 - 3*x**2 + x'", f"backend={','.join(BACKENDS)}", "x_start=2",
                 "lr=0.01", "epochs=300", "dtype=float64")
    runs = runs_of(store_uri)
    finals = [run.data.metrics["final_loss"] for run in runs]
    assert len(finals) == len(BACKENDS) and np.ptp(finals) < 1e-10
    # the minimum of x^4 - 3x^2 + x near x = 1.13 is about -1.07
    assert finals[0] == pytest.approx(-1.0702, abs=1e-3)
    assert all(run.data.tags["outcome"] == "converged" for run in runs)


def test_a_malformed_expression_is_a_config_error(here, store_uri):
    with pytest.raises(runner.ConfigError, match=r"loss.expr='x\*\*4 - import\(os\)' is not an expression"):
        runner.run("loss=expr", "loss.expr='x**4 - import(os)'")
    assert runs_of(store_uri) == []


def test_a_diverging_job_is_an_ordinary_result(here, store_uri):
    runner.sweep("lr=0.3,1.5", "epochs=1000")  # it would raise SweepFailed were a job to fail
    outcomes = {run.data.params["lr"]: run for run in runs_of(store_uri)}
    assert outcomes["1.5"].data.tags["outcome"] == "diverged"
    assert outcomes["1.5"].data.metrics["epochs_run"] == 18 and outcomes["1.5"].info.status == "FINISHED"
    assert outcomes["0.3"].data.tags["outcome"] == "converged"


def report(*args, store_uri, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": store_uri}
    return subprocess.run([sys.executable, "-m", "runner.report", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_report_command_prints_a_sweeps_table(here, store_uri, capsys):
    runner.sweep("lr=0.1,0.3,1.5", "epochs=40")  # in this process; the report as typed, in one of its own
    capsys.readouterr()  # what the sweep said
    table = report(store_uri=store_uri, cwd=here)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("sweep ") and lines[0].endswith("'runner': 3 runs")
    assert lines[1].split() == ["backend", "optimizer", "loss", "lr", "final", "x", "final", "loss",
                                "outcome", "steps", "rate", "wall", "s", "parity"]
    assert [line.split()[3] for line in lines[3:]] == ["0.1", "0.3", "1.5"]
    assert lines[-1].split()[6] == "diverged" and lines[-1].split()[7] == "2"  # |1 - 2 lr|: grows 2x an epoch

    # The same command in this process (what a subprocess adds was checked above).
    from runner.report import main as report_command

    assert report_command(["--csv", "--sort", "final_loss"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["lr"] for r in rows] == ["0.3", "0.1", "1.5"] and rows[0]["steps_to_tolerance"] == "13"

    assert report_command(["--experiment", "nope"]) == 2
    assert capsys.readouterr().err.startswith("runner.report: experiment 'nope' is not in")
