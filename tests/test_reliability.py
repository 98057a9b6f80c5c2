"""Reliability, done for real: bad input, failing jobs, signals, parallel writers, a real tracking
server, reproducible runs and skipping finished work."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import (BACKENDS, FIXTURES, FRAMEWORK_OF, LARGEST_GROUP, REPO, TEST_BACKENDS, TEST_ENGINES, free_port,
                      mlflow_server, run_cli, runs_of, snapshot)
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def used_store(tmp_path_factory, migrated_store):
    """A store that already holds one finished sweep, so that we can see nothing else changes;
    made once for the module (bad input changes nothing in it, which every test checks), in this
    process through the Python API."""
    import runner

    folder = tmp_path_factory.mktemp("used")
    shutil.copy(migrated_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as here:
        here.chdir(folder)
        here.setenv("MLFLOW_TRACKING_URI", uri)
        runner.sweep("lr=0.1,0.3", "epochs=3")
    return uri


# --- 1. bad input -------------------------------------------------------------------------------

BAD_INPUT = [
    (["backend=mxnet"], ["Could not find 'backend/mxnet'", "Available options in 'backend'", "numpy", "torch"]),
    (["loss=cubic"], ["Could not find 'loss/cubic'", "Available options in 'loss'", "double_well", "square"]),
    (["optimizer=rmsprop"], ["Could not find 'optimizer/rmsprop'", "adam", "momentum", "nesterov", "sgd"]),
    (["lr=abc"], ["Value 'abc' of type 'str' could not be converted to Float", "full_key: lr"]),
    (["epochs=1.5"], ["Value '1.5' of type 'float' could not be converted to Integer", "full_key: epochs"]),
    (["epochs=-1"], ["epochs=-1 is not allowed: epochs must be an integer >= 0"]),
    (["lr=0"], ["lr=0.0 is not allowed: lr must be a finite number > 0"]),
    (["lr=-0.1"], ["lr=-0.1 is not allowed: lr must be a finite number > 0"]),
    (["x_start=nan"], ["x_start=nan is not allowed: x_start must be a finite number or a list of finite numbers"]),
    (["x_start=inf"], ["x_start=inf is not allowed: x_start must be a finite number"]),
    (["lrr=0.1"], ["Could not override 'lrr'", "Key 'lrr' not in 'RunnerConfig'"]),
    (["device=cuda"], ["device=cuda: backend=numpy computes on the CPU only; use device=cpu or device=auto"]),
    (["optimizer=momentum", "optimizer.momentum=1.5"], ["optimizer.momentum=1.5 is not allowed: optimizer.momentum must be in [0, 1)"]),
    (["optimizer=armijo", "optimizer.shrink=1"], ["optimizer.shrink=1.0 is not allowed: optimizer.shrink must be in (0, 1)"]),
    (["optimizer=polyak", "loss=double_well"],
     ["optimizer=polyak needs the loss's minimum f*: loss=double_well has no loss.minimiser", "square"]),
    (["lr=0.1,-0.1"], ["job #1 (lr=-0.1): lr=-0.1 is not allowed"]),  # a sweep: checked before any job runs
    (["backend=numpy,torch", "device=cuda"], ["job #0 (backend=numpy device=cuda): device=cuda: backend=numpy"]),
    # an expression that used to hang at 100% CPU after its run was created, and one that ended
    # in a RecursionError (the family of such inputs: tests/test_losses.py)
    (["loss=expr", "loss.expr='x**2 + 9**9**9'"],
     ["loss.expr='x**2 + 9**9**9': its constant part '9 ** 387420489' cannot be computed"]),
    (["loss=expr", "loss.expr='" + "+x" * 3000 + "'"],
     ["characters; an expression may have at most 2000"]),
]


# As typed, in a process of its own: a sweep's job; the others run in this process through the
# Python API, which refuses bad input with the command line's own message (tests/test_api.py
# runs one of the runner's checks and Hydra's list of a group's options as typed too, and
# compares the two).
TYPED = {"lr=0.1,-0.1"}


@pytest.mark.parametrize("args, messages", BAD_INPUT, ids=[" ".join(a)[:40] for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_message_and_changes_nothing(tmp_path, used_store, monkeypatch, args, messages):
    before = snapshot(used_store)
    if " ".join(args) in TYPED:
        result = run_cli(*args, cwd=tmp_path, store_uri=used_store)
        assert result.returncode == 1
        said = result.stderr
        assert "Traceback" not in said
        # short: no stack; at most Hydra's list of a group's options and its search path
        assert len(said.strip().splitlines()) <= 10 + LARGEST_GROUP, said
    else:
        import runner
        from runner.__main__ import hydra_argv

        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", used_store)
        with pytest.raises(runner.ConfigError) as refused:
            (runner.sweep if hydra_argv(list(args))[0] == "--multirun" else runner.run)(*args)
        said = str(refused.value)
    for message in messages:
        assert message in said, said
    assert snapshot(used_store) == before


def test_cuda_without_a_gpu_names_the_backend(tmp_path, used_store, monkeypatch):
    """In this process, through the Python API (the command line's one line: bad input above)."""
    import torch

    import runner

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: device=cuda is allowed here")
    before = snapshot(used_store)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", used_store)
    with pytest.raises(runner.ConfigError, match="device=cuda: backend=torch sees no CUDA GPU"):
        runner.run("backend=torch", "device=cuda")
    assert snapshot(used_store) == before


def test_a_backend_whose_framework_is_missing_says_what_to_install(tmp_path, used_store):
    before = snapshot(used_store)
    hidden = {"PYTHONPATH": f"{FIXTURES / 'without_torch'}{os.pathsep}{REPO}"}
    result = run_cli("backend=torch", cwd=tmp_path, store_uri=used_store, env=hidden)
    assert result.returncode != 0
    assert ("backend=torch needs the Python package 'torch', which is not installed: "
            "pip install torch==2.13.0") in result.stderr
    assert "Traceback" not in result.stderr and snapshot(used_store) == before


def test_a_full_traceback_only_with_hydra_full_error(tmp_path, store_uri):
    result = run_cli("lr=-0.1", cwd=tmp_path, store_uri=store_uri, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "lr=-0.1 is not allowed" in result.stderr


# --- 2. a failing job does not sink the sweep ---------------------------------------------------

def test_a_failing_job_does_not_sink_the_sweep(tmp_path, store_uri):
    """lr=0.2 raises once its run exists, lr=0.4 before it has made its run: both are runs of the
    sweep, FAILED with their reason; the jobs after them ran and logged normally."""
    result = run_cli(TEST_BACKENDS, "backend=failing", "lr=0.1,0.2,0.3,0.4", "epochs=5", cwd=tmp_path,
                     store_uri=store_uri, env=TEST_ENGINES)
    assert result.returncode != 0
    assert "2 of 4 jobs failed (the others ran and are recorded):" in result.stderr
    assert "#1 backend=failing lr=0.2 epochs=5: RuntimeError: injected failure at lr=0.2" in result.stderr
    assert "#3 backend=failing lr=0.4 epochs=5: RuntimeError: injected failure before the run" in result.stderr
    assert "Traceback" not in result.stderr

    client = MlflowClient(store_uri)
    runs = {r.data.params["lr"]: r for r in runs_of(store_uri)}
    assert {lr: r.info.status for lr, r in runs.items()} == {
        "0.1": "FINISHED", "0.2": "FAILED", "0.3": "FINISHED", "0.4": "FAILED"}
    failed = runs["0.2"]
    assert failed.data.tags["error"] == "RuntimeError: injected failure at lr=0.2"
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    # the run the sweeper made for the job that failed first: what the job's run would have been
    (parent,) = runs_of(store_uri, sweeps=True)
    before = runs["0.4"]
    assert before.info.run_name == "failing-sgd-square-lr0.4"
    assert before.data.tags["error"] == "RuntimeError: injected failure before the run at lr=0.4"
    assert before.data.tags["mlflow.parentRunId"] == parent.info.run_id and before.data.tags["job_num"] == "3"
    assert before.data.tags["config_hash"] and before.data.params["epochs"] == "5"
    assert "hydra/config.yaml" in {a.path for a in client.list_artifacts(before.info.run_id, "hydra")}
    # the job after the failed one, in the same process, ran and logged normally
    assert len(client.get_metric_history(runs["0.3"].info.run_id, "x")) == 6
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs_failed"] == 2
    assert "Sweep report: 4 runs (0 reused), 2 failed" in result.stdout + result.stderr


def test_a_job_whose_process_dies_does_not_sink_the_sweep(tmp_path, store_uri, capsys, monkeypatch):
    """Two joblib workers; the job at lr=0.2 kills its own process (SIGKILL, as the OOM killer)
    before it has made its run, the one at lr=0.4 once its run exists. joblib stops every worker
    when one dies: the sweep still runs every job, and records each dead job's run KILLED with the
    reason. `reproduce` of the sweep re-runs them too."""
    result = run_cli(TEST_BACKENDS, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "backend=dying",
                     "lr=0.1,0.2,0.4", "epochs=5", cwd=tmp_path, store_uri=store_uri, env=TEST_ENGINES)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "TerminatedWorkerError" not in result.stderr
    assert "2 of 3 jobs failed (the others ran and are recorded):" in result.stderr
    assert not list(tmp_path.rglob(".started"))  # the launch's markers of started jobs are gone
    for number, lr in ((1, 0.2), (2, 0.4)):
        assert (f"#{number} backend=dying lr={lr} epochs=5: job #{number}'s worker process died (SIGKILL(-9)) "
                f"before the job returned") in result.stderr

    runs = runs_of(store_uri)
    (parent,) = runs_of(store_uri, sweeps=True)
    assert parent.info.status == "FAILED"
    newest = {r.data.params["lr"]: r for r in runs}  # oldest first: a job run again has its newest last
    assert newest["0.1"].info.status == "FINISHED"
    assert [r.info.status for r in runs if r.data.params["lr"] == "0.1"][-1] == "FINISHED"
    for lr, number in (("0.2", "1"), ("0.4", "2")):
        dead = newest[lr]
        assert dead.info.status == "KILLED" and dead.data.tags["job_num"] == number
        assert dead.data.tags["error"] == f"job #{number}'s worker process died (SIGKILL(-9)) before the job returned"
        assert dead.info.run_name == f"dying-sgd-square-lr{lr}"
    # any job stopped with a dead worker and run again left its first attempt KILLED, saying so
    for run in runs:
        if run.info.status == "KILLED" and run is not newest[run.data.params["lr"]]:
            assert run.data.tags["error"].startswith("stopped when a joblib worker process of the sweep died")

    from runner import reproduce as command

    monkeypatch.syspath_prepend(str(FIXTURES))  # the test engine, re-run here: in this process it dies not
    assert command.main([parent.info.run_id, "--launcher", "basic", "--tracking-uri", store_uri]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 runs identical" in out and "that had not finished re-run" in out
    assert "it ended KILLED (job #1's worker process died (SIGKILL(-9)) before the job returned); re-run now: " \
           "not_converged, final loss" in out


# --- 3. interrupts ------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_sweep_ends_its_runs_killed(tmp_path, store_uri, interruptible, sig, code):
    env = {**os.environ, **TEST_ENGINES, "MLFLOW_TRACKING_URI": store_uri}
    process = subprocess.Popen([sys.executable, "-m", "runner", TEST_BACKENDS, "backend=hanging",
                                "lr=0.1,0.3"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(r.info.status == "RUNNING" for r in runs_of(store_uri)):
            time.sleep(0.5)
        assert any(r.info.status == "RUNNING" for r in runs_of(store_uri)), "no job started"
        process.send_signal(sig)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code, output[-2000:]
    assert "interrupted; its open MLflow runs were ended as KILLED" in output
    (job,) = runs_of(store_uri)  # the second job never started
    (parent,) = runs_of(store_uri, sweeps=True)
    assert (job.info.status, parent.info.status) == ("KILLED", "KILLED")
    assert MlflowClient(store_uri).search_experiments()  # the store is still readable


# --- 4. parallel writers ------------------------------------------------------------------------

def test_twelve_jobs_four_workers_one_fresh_sqlite_store(tmp_path):
    """Four worker processes write to a store that none of them found: each of the four starts
    at once on a store the sweep has just created, then keeps writing beside the others."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"  # created by the sweep itself, not a template
    result = run_cli("hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "lr=" + ",".join(f"0.{i:02d}" for i in range(1, 13)),
                     cwd=tmp_path, store_uri=uri)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = runs_of(uri)
    assert len(runs) == 12 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.info.run_id for r in runs}) == 12
    for run in runs:
        for name in ("x", "loss", "grad"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, name)) == list(range(16))
    # The report is built from what the workers recorded: every job is in it.
    (parent,) = runs_of(uri, sweeps=True)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 12
    assert "Sweep report: 12 runs (0 reused), 0 failed" in result.stdout + result.stderr


# --- 5. a remote tracking server ----------------------------------------------------------------

@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory, migrated_store):
    """A real `mlflow server` on 127.0.0.1, SQLite behind it (a copy of the migrated template:
    its migrations are test_cli's), artifacts proxied by the server."""
    folder = tmp_path_factory.mktemp("server")
    shutil.copy(migrated_store, folder / "server.db")
    with mlflow_server(folder, f"sqlite:///{folder / 'server.db'}") as url:
        yield url


def test_a_sweep_against_a_tracking_server(tmp_path, sqlite_server):
    result = run_cli("lr=0.1,0.3,0.5,0.7", "epochs=4", cwd=tmp_path, store_uri=sqlite_server)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(sqlite_server)
    runs = runs_of(sqlite_server)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert len(client.get_metric_history(run.info.run_id, "x")) == 5
        assert {"gradient_descent.png", "trajectory.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    (parent,) = runs_of(sqlite_server, sweeps=True)
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/runs.csv"}
    assert f"MLflow: {sqlite_server}/#/experiments/" in result.stdout + result.stderr
    assert "View run" not in result.stdout  # MLflow's own two lines per run are left out
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("args", [["epochs=3"], ["lr=0.1,0.3", "backend=tf"]], ids=["run", "sweep"])
def test_an_unreachable_server_is_said_before_any_work(tmp_path, args):
    """The runner's probe answers, not MLflow's client: that one would retry for about four
    minutes and then fail with its own error, so this message is the probe's, whatever the
    machine's load (no clock needed). Nothing ran: no trajectory anywhere."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli(*args, cwd=tmp_path, store_uri=uri)
    assert result.returncode != 0
    assert f"mlflow.tracking_uri={uri}: no MLflow tracking server answers there" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("trajectory.csv"))


# --- 6. reproducible runs -----------------------------------------------------------------------

def test_reproduce_a_sweep_on_every_backend_a_run_and_a_tampered_run(here, store_uri, capsys):
    """One grid over every backend (Adam, a seed), re-run bit for bit whole through another
    launcher than it ran on (joblib, then the command line's basic), one run of it alone, then a
    logged value tampered with. Every run carries its provenance. The grid runs in this process
    (through the Python API), which has the frameworks imported already."""
    import runner
    from runner import reproduce as command

    installed = [b for b in BACKENDS if importlib.util.find_spec(FRAMEWORK_OF[b])]
    runner.sweep(f"backend={','.join(installed)}", "loss=rosenbrock", "x_start=[-1.5,2]", "lr=0.001",
                 "optimizer=adam", "seed=7", "epochs=30")
    capsys.readouterr()  # what the sweep said
    (parent,) = runs_of(store_uri, sweeps=True)
    runs = runs_of(store_uri)
    for run in runs:
        tags = run.data.tags
        assert run.data.params["seed"] == "7" and len(tags["config_hash"]) == 20
        assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
        assert tags["git_dirty"] in ("true", "false", "unknown")
        assert tags["python_version"] == ".".join(map(str, sys.version_info[:3]))
        assert {"numpy_version", "mlflow_version", "hydra_core_version", "framework_version"} <= set(tags)
    assert command.main([parent.info.run_id, "--launcher", "joblib", "--tracking-uri", store_uri]) == 0
    out = capsys.readouterr().out
    assert f"{len(installed)} runs through joblib (it ran through basic)" in out
    assert out.rstrip().endswith(f"{len(installed)} of {len(installed)} runs identical")
    assert all(f"({run.info.run_id}): identical" in out for run in runs)

    torch_run = next(r for r in runs if r.data.tags["backend"] == installed[-1])
    assert command.main([torch_run.info.run_id, "--tracking-uri", store_uri]) == 0
    out = capsys.readouterr().out
    assert "x/0: 31 logged steps, identical" in out and "every metric matches" in out

    # A record that no longer matches the computation is caught, and named, run and metric.
    MlflowClient(store_uri).log_metric(torch_run.info.run_id, "x/1", 123.0, step=5)
    assert command.main([parent.info.run_id, "--tracking-uri", store_uri]) == 1
    out = capsys.readouterr().out
    assert f"{torch_run.info.run_name} ({torch_run.info.run_id}): DIFFERS" in out
    assert "x/1: 31 logged steps, DIFFERS: 32 values logged, 31 now" in out
    assert out.rstrip().endswith(f"{len(installed) - 1} of {len(installed)} runs identical")


def test_reproduce_an_unknown_run_is_one_line(store_uri, capsys):
    """(`python -m runner.reproduce` as typed: test_slurm.py's whole sweep.)"""
    from runner import reproduce as command

    assert command.main(["0" * 32, "--tracking-uri", store_uri]) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"cannot re-run {'0' * 32}") and len(said.strip().splitlines()) == 1


# --- 7. skip what is done -----------------------------------------------------------------------

def test_skip_done_finishes_an_interrupted_sweep_without_repeating_work(tmp_path, store_uri, monkeypatch):
    import runner

    with monkeypatch.context() as here:  # the first sweep in this process, through the Python API
        here.chdir(tmp_path)
        here.setenv("MLFLOW_TRACKING_URI", store_uri)
        runner.sweep("lr=0.1,0.3", "epochs=5")
    first = {r.info.run_id for r in runs_of(store_uri)}
    # 0.30 is 0.3: the same config, however it is spelt
    result = run_cli("lr=0.1,0.30,0.5", "epochs=5", "skip_done=true", cwd=tmp_path, store_uri=store_uri)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = runs_of(store_uri)
    assert len(runs) == 3 and first <= {r.info.run_id for r in runs}
    assert [r.data.params["lr"] for r in runs if r.info.run_id not in first] == ["0.5"]
    output = result.stdout + result.stderr
    assert "2 of 3 jobs already have a FINISHED run (skip_done=true); running 1" in output
    assert "Sweep report: 3 runs (2 reused), 0 failed" in output

    single = run_cli("lr=0.5", "epochs=5", "skip_done=true", cwd=tmp_path, store_uri=store_uri)
    assert single.returncode == 0 and "skipped: run" in single.stdout + single.stderr
    assert len(runs_of(store_uri)) == 3
