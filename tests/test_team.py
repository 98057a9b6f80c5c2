"""The team setup of the README, for real: PostgreSQL (Debian's packages, started by the test
session), an `mlflow server` on it, and a sweep launched through Hydra's submitit launcher
(`submitit_local`: the path `submitit_slurm` takes on a cluster, on one machine)."""

from __future__ import annotations

import pytest
import sqlalchemy
from conftest import mlflow_server, run_cli, runs_of
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

EPOCHS = 20


def test_a_submitit_sweep_lands_on_a_postgresql_backed_server(tmp_path, postgres_uri):
    (tmp_path / "work").mkdir()
    with mlflow_server(tmp_path / "server", postgres_uri) as url:
        result = run_cli("hydra/launcher=submitit_local", "backend=numpy,torch", "lr=0.1,0.3",
                         f"epochs={EPOCHS}", cwd=tmp_path / "work", store_uri=url)
        assert result.returncode == 0, result.stderr[-3000:]

        client = MlflowClient(url)
        runs = runs_of(url)
        assert sorted(r.info.run_name for r in runs) == [
            "numpy-sgd-square-lr0.1", "numpy-sgd-square-lr0.3", "torch-sgd-square-lr0.1", "torch-sgd-square-lr0.3"]
        (parent,) = runs_of(url, sweeps=True)
        assert parent.info.status == "FINISHED"
        for run in runs:
            assert run.info.status == "FINISHED"
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            for name in ("x", "loss", "grad"):
                steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, name))
                assert steps == list(range(EPOCHS + 1)), (run.info.run_name, name)
            assert {"trajectory.csv", "gradient_descent.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "report/runs.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}

    # The runs are rows of PostgreSQL's tables, not of a file somewhere.
    engine = sqlalchemy.create_engine(postgres_uri)
    with engine.connect() as connection:
        names = {row[0] for row in connection.execute(sqlalchemy.text("SELECT name FROM runs"))}
    engine.dispose()
    assert names >= {r.info.run_name for r in runs} | {parent.info.run_name}
    # Each job ran as a submitit job of its own, its output in the sweep's .submitit folder.
    logs = list((tmp_path / "work" / "outputs" / "multirun").rglob(".submitit/*/*_0_log.out"))
    assert len(logs) == 4


def test_a_sweep_through_the_ray_launcher(tmp_path, store_uri):
    """Optional (`pip install -e '.[ray]'` in an environment of its own: the Ray launcher pins
    cloudpickle < 3, which the joblib launcher refuses), so not installed in CI: there this test
    is skipped. Ray starts a local instance for the sweep, as on a laptop."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the Ray launcher is an optional extra: .[ray]")
    result = run_cli("hydra/launcher=ray", "backend=numpy", "lr=0.1,0.3", f"epochs={EPOCHS}",
                     cwd=tmp_path, store_uri=store_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_of(store_uri)
    assert sorted(r.info.run_name for r in runs) == ["numpy-sgd-square-lr0.1", "numpy-sgd-square-lr0.3"]
    assert all(r.info.status == "FINISHED" for r in runs)
    client = MlflowClient(store_uri)
    assert all(len(client.get_metric_history(r.info.run_id, "x")) == EPOCHS + 1 for r in runs)
