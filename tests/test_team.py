"""The launchers of the README's team section that are not SLURM (tests/test_slurm.py): Hydra's
submitit launcher on one machine (`submitit_local`), and the Ray launcher, from its environment
of its own (`make ray-env`), starting Ray and joining a cluster."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, TEST_BACKENDS, TEST_ENGINES, free_port, missing_service, run_cli, runs_of
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

EPOCHS = 20


def test_a_submitit_local_sweep(tmp_path, store_uri):
    """Each job a submitit process of its own, its output in the sweep's .submitit folder (the
    SLURM path, with the server on PostgreSQL, is tests/test_slurm.py's). The job at lr=0.2 kills
    its own process before it has made its run: the other job lands, and the sweep makes the dead
    job's run, KILLED with the reason."""
    result = run_cli(TEST_BACKENDS, "hydra/launcher=submitit_local", "backend=dying", "lr=0.1,0.2", f"epochs={EPOCHS}",
                     cwd=tmp_path, store_uri=store_uri, env=TEST_ENGINES)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 of 2 jobs failed" in result.stderr and "Traceback" not in result.stderr
    client = MlflowClient(store_uri)
    runs = {r.data.params["lr"]: r for r in runs_of(store_uri)}
    (parent,) = runs_of(store_uri, sweeps=True)
    assert sorted(r.info.run_name for r in runs.values()) == ["dying-sgd-square-lr0.1", "dying-sgd-square-lr0.2"]
    assert parent.info.status == "FAILED"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs.values())
    assert runs["0.1"].info.status == "FINISHED"
    assert len(client.get_metric_history(runs["0.1"].info.run_id, "x")) == EPOCHS + 1
    dead = runs["0.2"]
    assert dead.info.status == "KILLED" and dead.data.tags["job_num"] == "1"
    assert re.fullmatch(r"submitit job \d+ ended without a result \(its process died\)",
                        dead.data.tags["error"]), dead.data.tags["error"]
    assert dead.data.tags["error"] in result.stderr
    logs = list((tmp_path / "outputs" / "multirun").rglob(".submitit/*/*_0_log.out"))
    assert len(logs) == 2


RAY_SWEEP = ("hydra/launcher=ray", "backend=numpy", "lr=0.1,0.3", f"epochs={EPOCHS}")


def assert_two_ray_jobs_landed(store_uri):
    runs = runs_of(store_uri)
    assert sorted(r.info.run_name for r in runs) == ["numpy-sgd-square-lr0.1", "numpy-sgd-square-lr0.3"]
    assert all(r.info.status == "FINISHED" for r in runs)
    client = MlflowClient(store_uri)
    assert all(len(client.get_metric_history(r.info.run_id, "x")) == EPOCHS + 1 for r in runs)


@pytest.fixture
def ray_home():
    """A home and a temporary folder of Ray's own for the test (short: Ray's socket paths must
    fit 107 characters), so that no state of another Ray, an auth token in ~/.ray say, leaks in."""
    folder = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    try:
        yield {"HOME": str(folder), "RAY_TMPDIR": str(folder), "RAY_ADDRESS": ""}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.xdist_group("ray")  # one Ray at a time on this machine
def test_a_sweep_through_the_ray_launcher_starting_ray(tmp_path, store_uri, ray_python, ray_home):
    """Ray starts a local instance for the sweep, as on a laptop. The job at lr=0.2 kills its
    worker (SIGKILL) before it has made its run, the one at lr=0.4 once its run exists, each
    time Ray retries it (once here): the sweep goes on, the job at lr=0.1 lands, and each dead
    job's attempts are runs KILLED with the reason, the first one's made by the sweeper."""
    result = run_cli(TEST_BACKENDS, "hydra/launcher=ray", "backend=dying", "lr=0.1,0.2,0.4", f"epochs={EPOCHS}",
                     "+hydra.launcher.ray.remote.max_retries=1", cwd=tmp_path, store_uri=store_uri, python=ray_python,
                     env={**ray_home, **TEST_ENGINES})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Started a local Ray instance" in output and "Traceback" not in output
    assert "2 of 3 jobs failed" in output
    (parent,) = runs_of(store_uri, sweeps=True)
    runs = runs_of(store_uri)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
    (landed,) = [r for r in runs if r.data.params["lr"] == "0.1"]
    assert landed.info.status == "FINISHED"
    assert len(MlflowClient(store_uri).get_metric_history(landed.info.run_id, "x")) == EPOCHS + 1
    (before,) = [r for r in runs if r.data.params["lr"] == "0.2"]  # it never made a run: the sweeper did
    in_run = [r for r in runs if r.data.params["lr"] == "0.4"]  # a run for each attempt
    assert 1 <= len(in_run) <= 2
    for number, run in [(1, before), *((2, r) for r in in_run)]:
        assert run.info.status == "KILLED" and run.data.tags["job_num"] == str(number)
        # Ray says a worker died; on a loaded machine it has also said, of the same death, that
        # the node died (NodeDiedError) or that its local raylet died (LocalRayletDiedError, in
        # CI): each is the job's lost result, said as one line.
        assert re.fullmatch(rf"job #{number}('s Ray worker process died before the job returned"
                            rf"| ended without a result on Ray: (NodeDiedError|LocalRayletDiedError): [^\n]+)",
                            run.data.tags["error"]), run.data.tags
        assert run.data.tags["error"] in output


@pytest.mark.xdist_group("ray")
def test_a_sweep_joins_an_existing_ray_cluster(tmp_path, store_uri, ray_python, ray_home):
    """`ray start --head`, then the sweep joins it. Ray joins through the machine's network
    address, and tests here may talk over loopback only: both run in a network namespace of
    their own (`unshare`), where loopback is the only network there is. A process namespace too:
    `ray stop --force` stops every Ray it sees, and it must not see another's (a second suite's,
    or the user's own); and when the script ends, whatever it started ends with it."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        missing_service("unshare and ip", "apt-get install util-linux iproute2")
    port = free_port()
    ray = Path(ray_python).parent / "ray"
    command = shlex.join([ray_python, "-m", "runner", *RAY_SWEEP, f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
                          "+hydra.launcher.ray.init.object_store_memory=null"])  # Ray refuses it when joining
    script = f"""
ip link set lo up
{ray} start --head --node-ip-address=127.0.0.1 --port={port} --num-cpus=2 --include-dashboard=false \\
    --disable-usage-stats --temp-dir={ray_home["RAY_TMPDIR"]} >ray-start.log 2>&1 || {{ cat ray-start.log; exit 3; }}
{command}
status=$?
{ray} stop --force >/dev/null 2>&1
exit $status
"""
    # network, process (-p, -f: the script is its first process) and, for /proc, mount namespaces;
    # -r, a user namespace, where the tests do not run as root
    isolate = ["unshare", "-npf" if os.geteuid() == 0 else "-rnpf", "--mount-proc"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": store_uri, **ray_home}
    result = subprocess.run([*isolate, "bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    output = result.stdout + result.stderr
    assert "Connected to Ray cluster" in output and "Started a local Ray instance" not in output
    assert_two_ray_jobs_landed(store_uri)
