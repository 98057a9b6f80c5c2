"""Sweeps on a real SLURM cluster (the session's one-node cluster, `conftest.slurm`), recorded
on the team's `mlflow server` over PostgreSQL: a sweep that lands whole, a job cancelled and a job
at its time limit, and Ctrl-C with jobs in the queue."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy
from conftest import REPO, TEST_BACKENDS, TEST_ENGINES, mlflow_server, runs_of
from mlflow import MlflowClient

# One worker runs them all (make test: --dist loadgroup), so the session starts one cluster.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

EPOCHS = 20
SLURM = ("hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug")


@pytest.fixture(scope="module")
def server(tmp_path_factory, postgres_uri):
    """The team's server: `mlflow server` over the session's PostgreSQL."""
    with mlflow_server(tmp_path_factory.mktemp("server"), postgres_uri) as url:
        yield url


def start_sweep(*overrides: str, cwd: Path, url: str, slurm: dict) -> subprocess.Popen:
    """`python -m runner --multirun OVERRIDES` on the cluster (a sweep even of one job), the test
    engines importable by its jobs (a job gets the environment of the sbatch that submitted it)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**slurm, **TEST_ENGINES, "MLFLOW_TRACKING_URI": url}
    return subprocess.Popen([sys.executable, "-m", "runner", "--multirun", TEST_BACKENDS, *SLURM, *overrides], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, slurm: dict, timeout: float = 300) -> str:
    """All the sweep wrote, once it has ended; past `timeout`, a failure that shows what it had
    written, Slurm's queue and the end of its daemons' logs."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate()[0]
        listed = subprocess.run(["squeue", "--array", "--states=all"], env=slurm, capture_output=True, text=True)
        folder = Path(slurm["SLURM_CONF"]).parent
        logs = "".join(f"\n--- {name} ---\n" + "".join((folder / name).read_text().splitlines(True)[-30:])
                       for name in ("slurmctld.log", "slurmd.log") if (folder / name).exists())
        pytest.fail(f"the sweep had not ended after {timeout:.0f} s; it wrote:\n{output[-3000:]}\n"
                    f"--- squeue ---\n{listed.stdout}{logs}")
    finally:
        process.kill()


def wait_for(condition, what: str, timeout: float = 120):
    deadline = time.time() + timeout
    while not (found := condition()):
        assert time.time() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.5)
    return found


def queue(slurm: dict, array: str) -> list[str]:
    """The jobs of the array still pending or running, as `squeue` lists them."""
    listed = subprocess.run(["squeue", "--noheader", "--array", "--jobs", array, "--format=%i %T"], env=slurm,
                            capture_output=True, text=True)
    return listed.stdout.split("\n")[:-1]


def test_a_sweep_lands_whole(tmp_path, server, slurm, postgres_uri):
    """The README's cluster command, on two backends: a partition and a time limit; every job a
    task of one job array, every run on the server, tagged with its job."""
    experiment = "slurm-whole"
    process = start_sweep("hydra.launcher.timeout_min=10", "backend=numpy,torch", "lr=0.1",
                          f"epochs={EPOCHS}", f"mlflow.experiment_name={experiment}", cwd=tmp_path, url=server,
                          slurm=slurm)
    output = finish(process, slurm)
    assert process.returncode == 0, output[-3000:]

    client = MlflowClient(server)
    runs = runs_of(server, experiment)
    (parent,) = runs_of(server, experiment, sweeps=True)
    assert parent.info.status == "FINISHED" and len(runs) == 2
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
    # One array of two tasks; each run knows its job, which ran its job number.
    tags = [run.data.tags for run in runs]
    assert len({t["slurm_array_job_id"] for t in tags}) == 1
    assert sorted(int(t["slurm_array_task_id"]) for t in tags) == list(range(2))
    assert len({t["slurm_job_id"] for t in tags}) == 2
    for run in runs:
        log = next(tmp_path.glob(f"outputs/multirun/*/*/.submitit/{run.data.tags['slurm_array_job_id']}_"
                                 f"{run.data.tags['slurm_array_task_id']}/*_log.out"))
        assert run.info.run_id in log.read_text()

    # The whole sweep reproduced, through the launcher it ran on: two SLURM jobs again.
    checked = subprocess.run([sys.executable, "-m", "runner.reproduce", parent.info.run_id], cwd=tmp_path,
                             env={**slurm, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": server},
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "2 runs through submitit_slurm" in checked.stdout and "2 of 2 runs identical" in checked.stdout


def held_jobs(slurm: dict) -> list[str]:
    """The ids of jobs held in the queue (sbatch --hold), as squeue lists them ('12_0')."""
    listed = subprocess.run(["squeue", "--noheader", "--array", "--states=PENDING", "--format=%i|%r"], env=slurm,
                            capture_output=True, text=True)
    return sorted(line.split("|")[0] for line in listed.stdout.split() if line.endswith("|JobHeldUser"))


def assert_ended_at_time_limit(run, job_id: str, output: str) -> None:
    """A job at its time limit. The test's limit is one minute and Slurm's warning (SIGUSR2)
    `hydra.launcher.signal_delay_s=15` before it: Slurm looks at time limits every 30 s and
    warns up to 30 s early (measured here: delays of 90, 60 and 30 s on a two-minute limit came
    93, 63 and 33 s before it), so the warning comes 15 to 45 s after the job started and 15 s
    or more before the limit. The job, not requeued, ends FAILED saying so, whether its run
    existed then or not. Under load the warning could still come before the job's process has
    taken the signal over: the run is KILLED with Slurm's FAILED and srun's word for it. Were the
    warning lost (it was, with the default 120 s delay on this limit, when a time check fell
    as the job started), Slurm's SIGTERM at the limit ends the run KILLED, and the sweep hears
    TIMEOUT from Slurm."""
    error = run.data.tags.get("error", "")
    if run.info.status == "FAILED":
        assert error.startswith(f"TimeLimit: SLURM job {job_id} was warned of its time limit"), error
        assert "not requeued" in error
    elif "FAILED" in error:  # the warning came while the job started, before it could take it (seen under load)
        assert run.info.status == "KILLED" and error.startswith(
            f"SLURM job {job_id} ended FAILED (NonZeroExitCode: SIGUSR2 ended it as it started: Slurm's warning"), error
    else:  # the warning lost: Slurm's SIGTERM at the limit ended it
        assert run.info.status == "KILLED" and error.startswith(f"SLURM job {job_id} ended TIMEOUT"), error
    assert error.split(":", 1)[-1].strip()[:60] in output


def test_cancelled_jobs_and_jobs_at_their_time_limit_are_runs_with_their_reason(tmp_path, server, slurm):
    """Three sweeps at once, on four CPUs, every job a run of its sweep whatever the timing:
    - the test scancels a running job: KILLED with Slurm's word for it, the other job lands;
    - a one-minute limit comes for a job that has made its run and for one still before it;
    - the test scancels a job still queued (held), then lets the other go: the cancelled job,
      which never ran, is a run KILLED with the reason, made by the sweeper.
    Each sweep fails, naming its job."""
    cancelled = start_sweep("backend=numpy,hanging", "lr=0.1", "epochs=5", "mlflow.experiment_name=slurm-cancel",
                            cwd=tmp_path / "cancel", url=server, slurm=slurm)
    limited = start_sweep("backend=hanging", "lr=0.05,0.1", "hydra.launcher.timeout_min=1",
                          "hydra.launcher.signal_delay_s=15", "mlflow.experiment_name=slurm-limit",
                          cwd=tmp_path / "limit", url=server, slurm=slurm)
    pending = start_sweep("backend=numpy", "lr=0.1,0.2", "epochs=5", "+hydra.launcher.additional_parameters.hold=true",
                          "mlflow.experiment_name=slurm-pending", cwd=tmp_path / "pending", url=server, slurm=slurm)
    try:
        first, second = wait_for(lambda: len(held := held_jobs(slurm)) == 2 and held, "two held jobs")
        subprocess.run(["scancel", second], env=slurm, check=True)
        subprocess.run(["scontrol", "release", first], env=slurm, check=True)

        def running_hanging_job():
            return [r for r in runs_of(server, "slurm-cancel")
                    if r.info.run_name == "hanging-sgd-square-lr0.1" and r.info.status == "RUNNING"]
        (victim,) = wait_for(running_hanging_job, "running job to cancel")
        job_id = f"{victim.data.tags['slurm_array_job_id']}_{victim.data.tags['slurm_array_task_id']}"
        subprocess.run(["scancel", job_id], env=slurm, check=True)
        cancel_output, limit_output, pending_output = (finish(p, slurm) for p in (cancelled, limited, pending))
    finally:
        for process in (cancelled, limited, pending):
            process.kill()

    # scancel: the job's run ends KILLED with Slurm's word for it; the numpy job lands; the sweep
    # fails, its report and its error naming the job.
    assert cancelled.returncode == 1, cancel_output[-3000:]
    runs = {r.info.run_name: r for r in runs_of(server, "slurm-cancel")}
    (parent,) = runs_of(server, "slurm-cancel", sweeps=True)
    assert parent.info.status == "FAILED"
    assert runs["numpy-sgd-square-lr0.1"].info.status == "FINISHED"
    killed = runs["hanging-sgd-square-lr0.1"]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["error"] == f"SLURM job {job_id} ended CANCELLED without a result"
    assert "1 of 2 jobs failed" in cancel_output and f"SLURM job {job_id} ended CANCELLED" in cancel_output
    report = next(tmp_path.glob("cancel/outputs/multirun/*/*/report/runs.csv")).read_text()
    assert f"KILLED,{killed.info.run_id},SLURM job {job_id} ended CANCELLED" in report

    # The time limit, for a job with its run (lr=0.1) and one without (lr=0.05): both are runs.
    assert limited.returncode == 1, limit_output[-3000:]
    runs = {r.data.params["lr"]: r for r in runs_of(server, "slurm-limit")}
    (parent,) = runs_of(server, "slurm-limit", sweeps=True)
    assert parent.info.status == "FAILED" and sorted(runs) == ["0.05", "0.1"]
    assert "2 of 2 jobs failed" in limit_output
    for run in runs.values():
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id and tags["config_hash"]
        assert "slurm_array_job_id" in tags, (run.info.status, tags)
        assert_ended_at_time_limit(run, f"{tags['slurm_array_job_id']}_{tags['slurm_array_task_id']}", limit_output)
    assert runs["0.05"].data.tags["job_num"] == "0" and runs["0.05"].info.run_name == "hanging-sgd-square-lr0.05"

    # The job cancelled while queued never ran: the sweeper made its run, with the job's ids.
    assert pending.returncode == 1, pending_output[-3000:]
    runs = {r.data.params["lr"]: r for r in runs_of(server, "slurm-pending")}
    assert runs["0.1"].info.status == "FINISHED"
    never = runs["0.2"]
    array, task = second.split("_")
    assert never.info.status == "KILLED" and never.info.run_name == "numpy-sgd-square-lr0.2"
    assert never.data.tags["error"].startswith(f"SLURM job {second} ended CANCELLED"), never.data.tags["error"]
    assert (never.data.tags["slurm_array_job_id"], never.data.tags["slurm_array_task_id"]) == (array, task)
    assert never.data.tags["error"] in pending_output


def test_ctrl_c_with_jobs_in_the_queue_cancels_them_all(tmp_path, server, slurm, interruptible):
    """Six jobs on four CPUs: four running, two queued, when the user presses Ctrl-C."""
    experiment = "slurm-interrupt"
    process = start_sweep("backend=hanging", "lr=0.1,0.2,0.3,0.4,0.5,0.6", f"mlflow.experiment_name={experiment}",
                          cwd=tmp_path, url=server, slurm=slurm)
    try:
        wait_for(lambda: sum(r.info.status == "RUNNING" for r in runs_of(server, experiment)) == 4, "four running jobs")
        (parent,) = runs_of(server, experiment, sweeps=True)
        array = runs_of(server, experiment)[0].data.tags["slurm_array_job_id"]
        assert sorted(line.split()[1] for line in queue(slurm, array)) == ["PENDING"] * 2 + ["RUNNING"] * 4
        process.send_signal(signal.SIGINT)
        output = finish(process, slurm, timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, output[-3000:]
    assert queue(slurm, array) == []
    runs = runs_of(server, experiment)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"KILLED"}
    assert MlflowClient(server).get_run(parent.info.run_id).info.status == "KILLED"
    assert f"cancelling SLURM job array {array}" in output


def test_the_wait_reads_slurm_s_silence_and_a_job_gone_before_it_ran(monkeypatch, tmp_path):
    """Without a cluster: a job gone from the queue before it was ever seen running (cancelled
    at once, while pending) ended CANCELLED, at once; a job at its time limit ended TIMEOUT; a
    poll that Slurm did not answer (a busy controller) is no news, not the end of every job."""
    from types import SimpleNamespace

    from runner.sweeps import cluster

    def job(job_id):
        return SimpleNamespace(job_id=job_id, paths=SimpleNamespace(result_pickle=tmp_path / f"{job_id}.pkl",
                                                                    stderr=tmp_path / f"{job_id}.err"))

    answers = iter([None, {"7_0": ("RUNNING", "None"), "7_2": ("RUNNING", "None"), "7_3": ("RUNNING", "None")},
                    {"7_0": ("RUNNING", "None"), "7_2": ("FAILED", "NonZeroExitCode"), "7_3": ("RUNNING", "None")}])

    def fake_squeue(arrays):
        found = next(answers, {"7_0": ("COMPLETED", "None"), "7_2": ("FAILED", "NonZeroExitCode"),
                               "7_3": ("TIMEOUT", "TimeLimit")})
        if found and found.get("7_0", ("",))[0] == "COMPLETED":
            (tmp_path / "7_0.pkl").touch()  # the running job writes its result
        return found

    # Slurm's time-limit warning, due as the job starts, ended 7_2 before it could take it
    (tmp_path / "7_2.err").write_text("srun: error: node1: task 0: User defined signal 2\n")
    monkeypatch.setattr(cluster, "squeue", fake_squeue)
    ended = cluster.wait([job("7_0"), job("7_1"), job("7_2"), job("7_3")], poll_s=0)
    assert sorted(ended) == ["7_1", "7_2", "7_3"]
    assert str(ended["7_1"]) == "SLURM job 7_1 ended CANCELLED (gone from the queue while PENDING) without a result"
    assert str(ended["7_2"]) == ("SLURM job 7_2 ended FAILED (NonZeroExitCode: SIGUSR2 ended it as it started: "
                                 "Slurm's warning of its time limit, sent hydra.launcher.signal_delay_s before "
                                 "hydra.launcher.timeout_min, came before the job could take it) without a result")
    # Slurm's own end at the limit, where its warning was lost (tests/test_slurm.py's time limit)
    assert str(ended["7_3"]) == "SLURM job 7_3 ended TIMEOUT (TimeLimit) without a result"


def test_a_job_that_raised_around_its_run_is_named_by_its_slurm_ids(tmp_path):
    """Without a cluster, submitit's own reading of a job's error result: Slurm's time-limit
    warning, come while Hydra was composing the job's config (before the run could take it), is a
    TimeLimit even where Hydra's error wraps submitit's; any other error raised around the run
    is said by the traceback's last line. Either way the run the sweeper makes carries the job's
    ids, as the job's own run would."""
    from submitit.core import utils
    from submitit.slurm.slurm import SlurmJob

    from runner.sweeps import cluster

    def failed_with(job_id, trace):
        job = SlurmJob(tmp_path, job_id)
        utils.cloudpickle_dump(("error", trace), job.paths.result_pickle)
        with pytest.raises(utils.FailedJobError) as raised:
            job.results()
        return cluster._outside_the_run(job, raised.value, slurm=True)

    warned = failed_with("7_0", """Traceback (most recent call last):
  File "submitit/core/job_environment.py", line 227, in checkpoint_and_try_requeue
    raise utils.UncompletedJobError(message)
submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "hydra/_internal/config_loader_impl.py", line 216, in _load_configuration_impl
hydra.errors.ConfigCompositionException: Error merging 'backend=hanging'
""")
    assert isinstance(warned, cluster.TimeLimit) and warned.run_tags() == {
        "slurm_array_job_id": "7", "slurm_array_task_id": "0"}
    assert str(warned) == ("SLURM job 7_0 was warned of its time limit before its run began, and not requeued "
                           "(hydra.launcher.max_num_timeout): Job not requeued because: timed-out too many times.")

    other = failed_with("7_1", 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
                               "    print('-' * 40)  # a line of dashes inside the traceback too\n"
                               + "-" * 40 + "\nOSError: [Errno 28] No space left on device\n")
    assert type(other) is cluster.JobFailed and other.run_tags() == {"slurm_array_job_id": "7", "slurm_array_task_id": "1"}
    assert str(other) == "SLURM job 7_1 raised outside its run: OSError: [Errno 28] No space left on device"


def test_a_time_limit_too_short_for_its_warning_is_said_before_submitting(monkeypatch, caplog):
    """Without a cluster: a one-minute limit with the launcher's default delay (120 s) is said as
    the sweep submits, with the largest delay that warns a job while it runs."""
    from types import SimpleNamespace

    from runner.sweeps import cluster

    def submitted(launcher):
        raise RuntimeError("submitted")

    monkeypatch.setattr(cluster, "_executor", submitted)
    launcher = SimpleNamespace(_EXECUTOR="slurm", params={"timeout_min": 1, "signal_delay_s": 120})
    with pytest.raises(RuntimeError, match="submitted"):
        cluster.launch(launcher, [["lr=0.1"]], 0)
    (said,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said.startswith("Sweep: hydra.launcher.signal_delay_s=120 on hydra.launcher.timeout_min=1: Slurm may send")
    assert said.endswith("a delay of at most 15 s warns a job while it runs")
