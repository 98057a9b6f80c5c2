"""Shared fixtures: the backends that exist, fresh MLflow stores, and the CLI as a user runs it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BACKENDS = sorted(path.stem for path in (REPO / "conf" / "backend").glob("*.yaml"))
FRAMEWORK_OF = {"numpy": "numpy", "tf": "tensorflow", "torch": "torch", "jax": "jax"}


def backend_params(backends=BACKENDS):
    """Every backend, each skipped (with the reason) where its framework is not installed."""
    params = []
    for backend in backends:
        module = FRAMEWORK_OF.get(backend, backend)
        missing = importlib.util.find_spec(module) is None
        params.append(pytest.param(backend, id=backend, marks=pytest.mark.skipif(
            missing, reason=f"backend={backend}: the package {module} is not installed")))
    return params


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """One SQLite file with MLflow's schema, made once: migrations cost several seconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_uri(tmp_path, migrated_store) -> str:
    """A fresh, empty store of this test's own."""
    path = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, path)
    return f"sqlite:///{path}"


def run_cli(*args: str, cwd: Path, store_uri: str | None = None, env: dict | None = None,
            python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m runner ARGS` in `cwd`, as a user types it."""
    inherited = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env = {**inherited, "PYTHONPATH": str(REPO), **(env or {})}
    if store_uri:
        full_env["MLFLOW_TRACKING_URI"] = store_uri
    return subprocess.run([sys.executable, *python_flags, "-m", "runner", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=600)


def runs_of(uri: str, experiment: str = "runner", sweeps: bool = False) -> list:
    """The job runs of `experiment` in the store at `uri`, oldest first (with `sweeps`: the
    sweeps' parent runs instead)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    return [run for run in runs if (run.data.tags.get("kind") == "sweep") == sweeps]
