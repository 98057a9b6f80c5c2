"""Batched sweeps as a user runs them: the command line, the MLflow runs, the report, reproduce."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKENDS, FRAMEWORK_OF, run_cli, runs_of, snapshot
from mlflow import MlflowClient

import runner
from runner import report, reproduce
from runner.descent import theory

pytestmark = pytest.mark.slow

INSTALLED = [b for b in BACKENDS if importlib.util.find_spec(FRAMEWORK_OF[b])]


def points_of(run, tmp_path: Path, uri: str) -> list[dict]:
    path = MlflowClient(uri).download_artifacts(run.info.run_id, "points.csv", str(tmp_path / run.info.run_id))
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_dense_lr_sweep_on_every_backend_and_its_points_run_alone(here, store_uri):
    """The issue's command: 1,199 learning rates on every backend, a batch run each. The largest
    lr whose rate is below 1 is 2/L = 1 to within the grid's step, every rate is |1 - 2 lr|, and
    sampled points rerun alone, as their `overrides` say, give the same numbers. Through the
    Python API in this process, which has the frameworks imported already (what the command line
    records: tests/test_api.py; a batched sweep typed on it: `store_with_a_batch` below)."""
    swept = runner.sweep("lr=range(0.001,1.2,0.001)", f"backend={','.join(INSTALLED)}", batch=True)
    (parent,) = runs_of(store_uri, sweeps=True)
    batches = {run.data.tags["backend"]: run for run in runs_of(store_uri)}
    assert parent.info.status == "FINISHED" and sorted(batches) == sorted(INSTALLED)
    samples = {0.123: None, 0.999: None, 1.1: None}
    rows_of = {}
    for backend, run in batches.items():
        assert run.info.status == "FINISHED" and run.data.tags["kind"] == "batch"
        assert run.info.run_name == f"{backend}-sgd-square lr [1199]"
        assert run.data.params["lr"] == "range(0.001,1.2,0.001)" and run.data.params["lr.count"] == "1199"
        assert run.data.metrics["points"] == 1199 and run.data.metrics["largest_stable_lr"] == pytest.approx(0.999)
        artifacts = {a.path for a in MlflowClient(store_uri).list_artifacts(run.info.run_id)}
        assert {"points.csv", "points.json", "trajectories.npz", "batch_lr.png", "hydra"} <= artifacts
        rows = points_of(run, here, store_uri)
        rows_of[backend] = {float(r["lr"]): r for r in rows}
        lr = np.array([float(r["lr"]) for r in rows])
        rate = np.array([float(r["rate"]) for r in rows])
        assert abs(lr[rate < 1].max() - 1.0) <= 0.001 + 1e-12  # 2/L, within one grid step
        away = lr != 0.5
        np.testing.assert_allclose(rate[away], np.abs(1 - 2 * lr[away]), rtol=1e-3)  # float32
        assert rate[~away] == 0.0  # x lands on 0 in one step
        for lr_value in samples:
            assert rows_of[backend][lr_value]["overrides"] == f"backend={backend} lr={lr_value}"
    assert swept.parent_run_id == parent.info.run_id and len(swept.table) == len(INSTALLED)

    # The points alone, as their overrides say
    runner.sweep(f"backend={','.join(INSTALLED)}", f"lr={','.join(map(str, samples))}")
    singles = [r for r in runs_of(store_uri) if r.data.tags.get("kind") != "batch"]
    assert len(singles) == len(INSTALLED) * len(samples)
    for run in singles:
        row = rows_of[run.data.tags["backend"]][float(run.data.params["lr"])]
        assert run.data.tags["outcome"] == row["outcome"]
        assert run.data.metrics["epochs_run"] == float(row["epochs_run"])
        for name in ("final_loss", "rate"):
            if run.data.tags["backend"] == "numpy":  # the same bits
                assert run.data.metrics[name] == float(row[name]), name
            else:
                assert run.data.metrics[name] == pytest.approx(float(row[name]), rel=1e-5), name


def test_the_momentum_map_preset(here, store_uri):
    """Goh's picture on numpy: 40,000 points, the fastest within two grid steps of theory's
    optimum at a rate within 2% of it, the stability bound found for every momentum (through the
    Python API, as the notebook runs it)."""
    runner.sweep("experiment=momentum_map", "hydra.sweeper.params.backend=numpy")
    (run,) = runs_of(store_uri, "momentum_map")
    m = run.data.metrics
    lr_star, beta_star, rate_star = theory.heavy_ball_optimum(0.01, 1.0)
    assert m["points"] == 40_000 and run.info.run_name == "numpy-momentum-ill_conditioned lr×momentum [200×200]"
    assert abs(m["fastest.lr"] - lr_star) <= 2 * 0.02 and abs(m["fastest.optimizer.momentum"] - beta_star) <= 2 * 0.005
    assert m["fastest_rate"] == pytest.approx(rate_star, rel=0.02)
    assert m["stability/within_one_step"] == m["stability/settings"] == 200
    assert run.data.tags["trajectories_kept"].endswith(" of 40000") and run.data.tags["trajectories_kept"] != "40000 of 40000"
    client = MlflowClient(store_uri)
    assert "rate_map.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    (parent,) = runs_of(store_uri, "momentum_map", sweeps=True)
    assert "report/rate_map_numpy_momentum.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


@pytest.fixture(scope="module")
def store_with_a_batch(tmp_path_factory, migrated_store):
    """A store that holds one batched sweep, for bad input to leave unchanged."""
    import shutil

    folder = tmp_path_factory.mktemp("batched")
    shutil.copy(migrated_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:  # in this process, as the `here` fixture runs the API
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        grid = runner.sweep("lr=range(0.1,1.55,0.1)", "epochs=60", batch=True)
    assert grid.status == "FINISHED" and len(grid.run_ids) == 1 and grid.table["points"].tolist() == [15]
    return uri, folder


BAD_BATCHES = [
    (["lr=0.1,abc", "hydra.sweeper.batch=true"], "lr=abc is not allowed in a batch: lr must be a number"),
    (["epochs=10,20", "hydra.sweeper.batch=[epochs]"],
     "hydra.sweeper.batch=['epochs']: epochs cannot be batched (it changes the program); allowed: lr,"),
    (["lr=0.1,-0.1,0.3", "hydra.sweeper.batch=true"],
     "job #0 (lr=0.1,-0.1,0.3): point #1 (lr=-0.1): lr=-0.1 is not allowed: lr must be a finite number > 0"),
    (["dim=1000000", "lr=range(0.001,1,0.001)", "hydra.sweeper.batch=true"], "GB of memory, more than the"),
    (["lr=0.1,0.2", "hydra.sweeper.batch=true", "hydra.sweeper.search.n_trials=3"],
     "hydra.sweeper.batch runs a grid; a search (hydra.sweeper.search.n_trials) runs its trials one by one"),
]


@pytest.mark.parametrize("args, message", BAD_BATCHES, ids=[" ".join(a) for a, _ in BAD_BATCHES])
def test_a_bad_batch_is_one_line_and_records_nothing(store_with_a_batch, tmp_path, monkeypatch, args, message):
    """The first as typed, in a process of its own; the others in this process through the Python
    API, which refuses bad input with the command line's message."""
    import runner

    uri, _ = store_with_a_batch
    before = snapshot(uri)
    if args == BAD_BATCHES[0][0]:
        result = run_cli(*args, cwd=tmp_path, store_uri=uri)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 3, result.stderr
    else:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(runner.ConfigError) as refused:
            runner.sweep(*args)
        assert message in str(refused.value) and len(str(refused.value).strip().splitlines()) <= 3, refused.value
    assert snapshot(uri) == before


def test_the_report_and_reproduce_a_batch(store_with_a_batch, tmp_path, capsys):
    uri, folder = store_with_a_batch
    (run,) = runs_of(uri)
    assert report.main(["--batch", run.info.run_id, "--sort", "rate", "--limit", "3", "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"batch {run.info.run_id} of experiment 'runner': 15 points, 3 shown"
    assert lines[1].split()[:4] == ["point", "lr", "final", "x"] and [line.split()[1] for line in lines[3:]] == ["0.5", "0.4", "0.6"]

    assert reproduce.main([run.info.run_id, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "points: 15 of 15 identical" in out and "trajectories.npz: x, loss and grad of 15 kept points identical" in out
    (parent,) = runs_of(uri, sweeps=True)  # the whole batched sweep, as one
    assert reproduce.main([parent.info.run_id, "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.rstrip().endswith("1 of 1 runs identical")

    # A record that no longer matches the computation is caught, and named.
    stored = next(folder.glob(f"mlartifacts/**/{run.info.run_id}/artifacts/points.csv"))
    original = stored.read_text()
    rows = original.splitlines()
    cells = rows[4].split(",")
    cells[rows[0].split(",").index("final_loss")] = "123.0"
    stored.write_text("\n".join([*rows[:4], ",".join(cells), *rows[5:]]) + "\n")
    try:
        assert reproduce.main([run.info.run_id, "--tracking-uri", uri]) == 1
        assert "points: 14 of 15 identical; first differing: point #3 (lr=0.4): final_loss was 123.0" in capsys.readouterr().out
    finally:
        stored.write_text(original)


def test_a_finished_batch_is_not_run_again_with_skip_done(store_with_a_batch, tmp_path):
    uri, _ = store_with_a_batch
    before = {r.info.run_id for r in runs_of(uri)}
    result = run_cli("lr=range(0.1,1.55,0.1)", "epochs=60", "hydra.sweeper.batch=true", "skip_done=true",
                     cwd=tmp_path, store_uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {r.info.run_id for r in runs_of(uri)} == before
    assert "1 of 1 jobs already have a FINISHED run (skip_done=true); running 0" in result.stdout + result.stderr


def test_batches_go_through_a_parallel_launcher(tmp_path, store_uri):
    """Two batches (one a rule), each a job of a joblib worker process."""
    result = run_cli("optimizer=sgd,momentum", "lr=range(0.05,1.2,0.05)", "epochs=50", "hydra.sweeper.batch=true",
                     "hydra/launcher=joblib", cwd=tmp_path, store_uri=store_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_of(store_uri)
    assert sorted(r.data.params["optimizer"] for r in runs) == ["momentum", "sgd"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["points"] == 23 for r in runs)
    (parent,) = runs_of(store_uri, sweeps=True)
    assert parent.info.status == "FINISHED" and parent.data.metrics["points"] == 46
