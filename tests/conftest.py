"""Shared fixtures: the backends that exist, fresh MLflow stores, real services (an `mlflow
server`, PostgreSQL), and the CLI as a user runs it."""

from __future__ import annotations

import getpass
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
            python_flags: tuple[str, ...] = (), python: str = sys.executable) -> subprocess.CompletedProcess:
    """`python -m runner ARGS` in `cwd`, as a user types it."""
    inherited = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env = {**inherited, "PYTHONPATH": str(REPO), **(env or {})}
    if store_uri:
        full_env["MLFLOW_TRACKING_URI"] = store_uri
    return subprocess.run([python, *python_flags, "-m", "runner", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def ray_python() -> str:
    """The Python of the Ray launcher's environment of its own (`make ray-env`: it pins
    cloudpickle < 3, which the joblib launcher of the main environment refuses)."""
    python = REPO / ".venv-ray" / "bin" / "python"
    if not python.exists():
        missing_service("the Ray launcher's environment", "make ray-env")
    return str(python)


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


def snapshot(uri: str) -> list:
    """Everything a bad command could have changed: experiments, and every run's state."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    return sorted([("experiment", e.name, e.lifecycle_stage) for e in experiments]) + sorted(
        (r.info.run_id, r.info.status, r.info.end_time, len(r.data.metrics), len(r.data.params),
         len(r.data.tags)) for r in runs)


def missing_service(what: str, how: str) -> None:
    """Skip a test whose outside program is not installed here; under `.ci/run`
    (RUNNER_REQUIRE_SERVICES=1) that is a failure instead, so CI cannot pass by skipping."""
    message = f"{what} is not installed ({how})"
    if os.environ.get("RUNNER_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(folder: Path, backend_store_uri: str) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 over `backend_store_uri`, artifacts proxied by it into
    `folder`; yields its URL once it answers /health, stops it on the way out."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=folder, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                assert time.time() < deadline, "mlflow server did not answer /health in 120 s"
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A PostgreSQL server of Debian's packages, started for this test session in a temporary
    folder on 127.0.0.1 (fsync off), with an empty database `mlflow`; its SQLAlchemy URI."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        missing_service("PostgreSQL", "apt-get install postgresql")
    bindir = found[-1].parent
    # PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user, who
    # must be able to enter the folder (pytest's own temporary folders are private to root).
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    user = "postgres" if as_user else getpass.getuser()
    folder = Path(tempfile.mkdtemp(prefix="runner-postgres-"))
    if as_user:
        shutil.chown(folder, user="postgres")
    port = free_port()

    def pg(program: str, *args: str) -> None:
        subprocess.run([*as_user, str(bindir / program), *args], check=True, capture_output=True, text=True)

    pg("initdb", "-D", f"{folder}/data", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "-U", user)
    pg("pg_ctl", "-D", f"{folder}/data", "-l", f"{folder}/server.log", "-w", "start",
       "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off")
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, "mlflow")
        yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/mlflow"
    finally:
        pg("pg_ctl", "-D", f"{folder}/data", "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
