"""Shared fixtures: the backends that exist, fresh MLflow stores, real services (an `mlflow
server`, PostgreSQL), and the CLI as a user runs it."""

from __future__ import annotations

import gc
import getpass
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

# One thread a framework (NumPy's BLAS, PyTorch's OpenMP, TensorFlow's pools), here and in every
# process the suite starts (jobs, the notebook's kernel, SLURM's and Ray's): the suite's problems
# are small, one pytest worker per core keeps the cores busy, and each framework's pool of a thread
# per core only contends (its threads spin, then sleep). Measured here, one after the other: the
# `parity` tests 82 s against 94 s (161 CPU-seconds against 185), the `slow` tests 300 s against
# 308 s (465 against 489), the notebook 61 s against 87 s. XLA's threads are left alone: limiting
# them (XLA_FLAGS) made no difference to JAX's tests, and an XLA that no longer knows a flag there
# aborts. Set before NumPy's first import.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_name, "1")

from runner import engines, schema  # noqa: E402
from runner.descent.loop import Loop  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BACKENDS = sorted(path.stem for path in (REPO / "conf" / "backend").glob("*.yaml"))
FRAMEWORK_OF = {"numpy": "numpy", "tf": "tensorflow", "torch": "torch", "jax": "jax"}
FIXTURES = REPO / "tests" / "fixtures"
TEST_BACKENDS = f"hydra.searchpath=[file://{FIXTURES / 'conf'}]"  # backend=failing, hanging, dying, slow
TEST_ENGINES = {"PYTHONPATH": f"{REPO}{os.pathsep}{FIXTURES}"}  # their engines' modules
# Hydra's refusal of an unknown option lists the group's options, a line each
LARGEST_GROUP = max(len(list(group.glob("*.yaml"))) for group in (REPO / "conf").iterdir() if group.is_dir())

# Where the environment turns Python's bytecode cache off (PYTHONDONTWRITEBYTECODE=1, as on this
# project's machines), each of the few hundred Python processes the suite starts (the CLI, launcher
# workers, SLURM and Ray jobs) compiles the runner's modules again, 0.25 s each, and each pytest
# worker its test modules, 1 s. The suite keeps the cache on, for itself and what it starts.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# A pytest worker holds every framework, MLflow and Hydra, millions of objects, and Python's
# collector, by default every 700 allocations, scans the young ones and ever more often the old:
# about 7% of make test-fast's CPU-seconds (bench/suite.py, 64b4a25 against 0a317d1). As for a
# process of the runner's own (runner/process.py), with a threshold of the suite's own so that
# tests/test_api.py sees whether a run from Python set the runner's; and what collection imported
# is frozen, out of every later scan.
gc.set_threshold(50_000, 10, 10)


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.freeze()


def pytest_configure(config: pytest.Config) -> None:
    """`make test`'s `--dist loadgroup` keeps each `xdist_group` (one SLURM cluster, one Ray) on one
    worker, by a suffix pytest-xdist 3.8 writes into each grouped test's id. pytest 9.2 ignores that
    write (pytest-xdist#1386) and nothing says so: the groups were spread over the workers, two SLURM
    clusters ran at once, and one Ray test's `ray stop --force` killed the other's Ray. Refuse instead."""
    from importlib.metadata import version

    def release(package: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version(package).split(".")[:2] if part.isdigit())

    if config.getoption("dist", None) == "loadgroup" and release("pytest") >= (9, 2) and release("pytest-xdist") <= (3, 8):
        raise pytest.UsageError(f"--dist loadgroup does not group tests with pytest {version('pytest')} and "
                                f"pytest-xdist {version('pytest-xdist')} (pytest-xdist#1386): pip install 'pytest<9.2'")


DEFAULTS = schema.defaults()  # conf/config.yaml's values: the one place the defaults live


def composed(*overrides: str):
    """The config of `python -m runner OVERRIDES`, as Hydra composes it."""
    from hydra import compose, initialize_config_dir

    schema.register()  # as python -m runner does: conf/config.yaml's defaults list names the schema
    with initialize_config_dir(config_dir=str(schema.CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def built(*overrides: str, backend: str = "numpy"):
    """The problem, engine and loop of `python -m runner OVERRIDES`, on `backend`."""
    from runner import problem

    prob, loop_, engine, _ = problem.from_config(composed(*overrides, f"backend={backend}"))
    return prob, engine, loop_


def one_point(loss, x_start, optimizer, dtype: str, engine, diverge_above: Optional[float] = None) -> engines.Problem:
    """The problem of one run on `engine`'s CPU, its other settings the defaults."""
    return engines.single(loss, x_start, optimizer, dtype, engine.resolve_device("cpu"),
                          DEFAULTS.stop.diverge_above if diverge_above is None else diverge_above, DEFAULTS.seed)


def loop(epochs: int, **settings) -> Loop:
    """The loop of `epochs` epochs, at the default tolerance."""
    return Loop(epochs, DEFAULTS.stop.tolerance, **settings)


def installed(backend: str) -> bool:
    """Whether `backend`'s framework is installed here."""
    return importlib.util.find_spec(FRAMEWORK_OF.get(backend, backend)) is not None


def backend_params(backends=BACKENDS, parity: bool = False):
    """Every backend, each skipped (with the reason) where its framework is not installed.

    With `parity`, for a test that holds each framework to NumPy (or to the framework's own library)
    over a matrix of cases: its framework cases are marked `parity`. `make test` runs them; `make
    test-fast` leaves them out and keeps each framework's engine tests (tests/test_engines.py,
    tests/test_outcomes.py and the like) and one model a framework (tests/test_models.py)."""
    def marks(backend: str) -> list:
        missing = pytest.mark.skipif(not installed(backend), reason=f"backend={backend}: the package "
                                     f"{FRAMEWORK_OF.get(backend, backend)} is not installed")
        return [missing, pytest.mark.parity] if parity and backend != "numpy" else [missing]

    return [pytest.param(backend, id=backend, marks=marks(backend)) for backend in backends]


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


@pytest.fixture
def here(tmp_path, store_uri, monkeypatch) -> Path:
    """For the Python API in this process (`runner.run`, `runner.sweep`), as a notebook uses it:
    the test's folder is the current directory, and its store the default one there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    return tmp_path


@pytest.fixture
def interruptible() -> Iterator[None]:
    """The processes this test starts take Ctrl-C (SIGINT) as a terminal's do. A shell's background
    job (`make test &`) starts with SIGINT ignored, every process it starts inherits that, and a
    Python started so never raises KeyboardInterrupt: the test's Ctrl-C would go unheard. A handler
    is not inherited, so under this one the processes started get SIGINT's default."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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


# As the README starts a team server: without MLflow 3's job runner, which the runner never uses
# (two more Python processes, and 3-4 s more for the server to stop).
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


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
         "--workers", "1"], cwd=folder, stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, **SERVER_ENV})
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


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[dict]:
    """A one-node SLURM cluster of Debian's packages (slurm-wlm, munge), started for this test
    session in a temporary folder: munged on a socket of its own, slurmctld and slurmd on free
    loopback ports, 4 CPUs, no accounting (see ../shared/FACTS.md, "SLURM"). Yields the
    environment under which sbatch, squeue and scancel use it. At the end, whatever happened:
    every job cancelled, every daemon stopped by its pid file, the folder removed."""
    for program in ("munged", "slurmctld", "slurmd", "sbatch"):
        if not shutil.which(program, path=f"{os.environ.get('PATH', '')}:/usr/sbin"):
            missing_service("SLURM", "apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        missing_service("SLURM as root (slurmd runs jobs as their users)", "run the tests as root")
    folder = Path(tempfile.mkdtemp(prefix="runner-slurm-"))
    folder.chmod(0o755)  # munged runs as `munge` and must reach its socket's folder
    munge = folder / "munge"
    munge.mkdir()
    shutil.chown(munge, user="munge", group="munge")
    host = socket.gethostname()
    conf = folder / "slurm.conf"
    conf.write_text(f"""\
ClusterName=runnertest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs=4 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pid_files = [folder / "slurmd.pid", folder / "slurmctld.pid", munge / "munged.pid"]
    try:
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", f"--socket={munge}/munge.socket",
                        f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                        f"--seed-file={munge}/munged.seed", "--force"], check=True)
        for daemon in ("slurmctld", "slurmd"):
            (folder / ("state" if daemon == "slurmctld" else "spool")).mkdir()
            subprocess.run([f"/usr/sbin/{daemon}", "-f", str(conf)], check=True, env=env)
        deadline = time.time() + 60
        while (state := subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True,
                                       text=True).stdout.strip()) != "idle":
            assert time.time() < deadline, f"the SLURM node is {state!r}, not idle, after 60 s"
            time.sleep(0.3)
        yield env
    finally:
        subprocess.run(["scancel", "--partition=debug"], env=env, capture_output=True)
        for pid_file in pid_files:
            stop_by_pid_file(pid_file)
        shutil.rmtree(folder, ignore_errors=True)


def stop_by_pid_file(pid_file: Path, patience_s: float = 30.0) -> None:
    """SIGTERM to the process whose pid the file holds, then wait until it is gone."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 15)
    except (OSError, ValueError):
        return
    deadline = time.time() + patience_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)


def pytest_collection_modifyitems(items: list) -> None:
    """The longest first: the SLURM group (one worker, 80-200 s, much of it waiting on Slurm),
    then the notebook (50-80 s of CPU), while the other worker takes the short tests; those then
    fill both workers to the end, instead of one worker running a long test alone at the end (a
    subset with the SLURM group: 161 s against 170 s). The Ray group keeps its place: its waits
    beside the SLURM group's would leave both cores idle."""
    def rank(item) -> int:
        group = item.get_closest_marker("xdist_group")
        if group and group.args == ("slurm",):
            return 0
        return 1 if item.path.name == "test_notebook.py" else 2

    items.sort(key=rank)  # stable: the rest keep their order
