"""SLURM: a sweep's jobs waited for to the last and cancelled with the sweep; each run tagged
with its job.

Hydra's submitit launcher submits a sweep as one job array, then waits for each job's result in
turn. The first job that ends without a result (scancel, its time limit, a failed node) raises,
and the sweep stops waiting for the others; without Slurm's accounting (`sacct`) submitit cannot
even tell that such a job has ended, and waits forever. Ctrl-C leaves every job in the queue. So
for `hydra/launcher=submitit_slurm` the runner submits the jobs exactly as Hydra's launcher does
(`launch`), and then:

- waits for every job: done when its result is written, or when Slurm (`squeue`, which needs no
  accounting) says it ended;
- a job that ended without a result is a failed job of the sweep, its error Slurm's state and
  reason (`CANCELLED`, `TIMEOUT`, ...), which its run gets as its `error` tag; the job itself
  ended the run KILLED on Slurm's SIGTERM (`handle_signals`), or the sweep does;
- Ctrl-C or SIGTERM of the launching process cancels every job of the sweep still queued or
  running and waits until Slurm has ended them: nothing of the sweep is left in the queue.

Inside a job, `job_tags` are the Slurm ids the run is tagged with.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger("runner")

# Slurm's job states that are over (squeue --states=all shows them for MinJobAge seconds).
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"}
# A job Slurm calls COMPLETED writes its result first; on a shared file system the file may show
# up on the launching machine a little later: wait this long for it before calling the job lost.
RESULT_GRACE_S = 60.0


def job_tags() -> dict[str, str]:
    """Inside a Slurm job: the run's tags naming the job (`slurm_job_id`, and for a job of an
    array, as a sweep's jobs are, `slurm_array_job_id` and `slurm_array_task_id`), its node, and
    for a requeued job how many times it was restarted; else none."""
    names = {"slurm_job_id": "SLURM_JOB_ID", "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
             "slurm_array_task_id": "SLURM_ARRAY_TASK_ID", "slurm_node": "SLURMD_NODENAME",
             "slurm_restart_count": "SLURM_RESTART_COUNT"}
    return {tag: os.environ[variable] for tag, variable in names.items() if os.environ.get(variable)}


def handle_signals() -> None:
    """In a submitit job, two signals end the run with a reason instead of leaving it RUNNING:

    - SIGTERM (scancel; the time limit; preemption) unwinds the job like Ctrl-C, so that its run
      ends KILLED (submitit itself ignores SIGTERM in its jobs, until Slurm's SIGKILL);
    - SIGUSR2, which Slurm sends `hydra.launcher.signal_delay_s` before the time limit (or on
      preemption): submitit requeues the job when `hydra.launcher.max_num_timeout` allows, the
      run then ending KILLED and the job starting again from the beginning as a new run; else
      the run ends FAILED, its error saying so.
    """
    from runner.errors import raise_terminated

    if not os.environ.get("SUBMITIT_EXECUTOR") or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, raise_terminated)
    submitit_handler = signal.getsignal(signal.SIGUSR2)
    if callable(submitit_handler):
        signal.signal(signal.SIGUSR2, functools.partial(_near_time_limit, submitit_handler))


class TimeLimit(RuntimeError):
    """A Slurm job signalled before its time limit, and not requeued."""


def _near_time_limit(submitit_handler: Callable, signum: int, frame: Any) -> None:
    try:
        submitit_handler(signum, frame)  # requeues and exits (SystemExit), or raises
    except SystemExit:
        log.warning("SLURM job %s was warned of its time limit and requeued (hydra.launcher.max_num_timeout): "
                    "this run ends KILLED, the job starts again from the beginning as a new run", _this_job())
        raise
    except Exception as error:
        raise TimeLimit(f"SLURM job {_this_job()} was warned of its time limit (SIGUSR2, hydra.launcher.signal_delay_s "
                        f"before hydra.launcher.timeout_min) and not requeued (hydra.launcher.max_num_timeout): "
                        f"{error}") from None


def _this_job() -> str:
    """This job's id as squeue shows it: '12_3' for task 3 of array 12."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "?")


def is_slurm(launcher: Any) -> bool:
    return type(launcher).__name__ == "SlurmLauncher" and getattr(launcher, "_EXECUTOR", "") == "slurm"


class JobEnded(Exception):
    """A job Slurm ended without a result: its id ('12_3'), state and reason."""

    def __init__(self, job_id: str, state: str, reason: str) -> None:
        self.job_id, self.state, self.reason = job_id, state, reason
        why = "" if reason in ("", "None") else f" ({reason})"
        super().__init__(f"SLURM job {job_id} ended {state}{why} without a result")

    def run_tags(self) -> dict[str, str]:
        """The tags of the run the job made (`job_tags`)."""
        array, _, task = self.job_id.partition("_")
        return {"slurm_array_job_id": array, "slurm_array_task_id": task} if task else {"slurm_job_id": array}


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
           on_ended: Callable[[JobEnded], None]) -> list[Any]:
    """Hydra's `SlurmLauncher.launch`, waiting for every job: a JobReturn per job, FAILED for a
    job Slurm ended without a result (after `on_ended(ended)` for it). Ctrl-C or SIGTERM here
    cancels the jobs still queued or running, waits until they are gone, and is raised again."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides

    executor = _executor(launcher)
    sweep = launcher.config.hydra.sweep
    log.info("Submitit 'slurm' sweep output dir : %s", sweep.dir)
    Path(str(sweep.dir)).mkdir(parents=True, exist_ok=True)
    if "mode" in sweep:  # hydra.sweep.mode, as Hydra's launcher applies it
        os.chmod(str(sweep.dir), mode=int(str(sweep.mode), 8))
    arguments = []
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        arguments.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*arguments))
    first = jobs[0].job_id
    log.info("Sweep: submitted to SLURM as %s", f"job array {_array_id(first)}_[0-{len(jobs) - 1}]" if "_" in first
             else f"job {first}")
    try:
        ended = wait(jobs)
    except KeyboardInterrupt:
        cancel(jobs)
        raise
    returns = []
    for number, (overrides, job) in enumerate(zip(job_overrides, jobs), start=initial_job_idx):
        if job.job_id in ended:
            on_ended(ended[job.job_id])
            returns.append(_failed(overrides, number, ended[job.job_id]))
            continue
        try:
            returns.append(job.results()[0])
        except Exception as error:  # the job raised outside Hydra's job (submitit keeps the traceback)
            returns.append(_failed(overrides, number, error))
    return returns


def _executor(launcher: Any) -> Any:
    """The executor Hydra's submitit launcher builds from `hydra.launcher` (its `launch`)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    params = dict(launcher.params)
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    common = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in common else f"slurm_{key}": value for key, value in params.items()})
    return executor


def wait(jobs: Sequence[Any], poll_s: float = 1.0) -> dict[str, JobEnded]:
    """Wait until every job has written its result or ended; the jobs that ended without one.

    Polls `squeue` every `poll_s` seconds for the first minute, then every 5 s."""
    waiting = {job.job_id: job for job in jobs}
    ended: dict[str, JobEnded] = {}
    without_result_since: dict[str, float] = {}
    started = time.monotonic()
    while waiting:
        states = squeue({_array_id(job_id) for job_id in waiting})
        for job_id, job in list(waiting.items()):
            if job.paths.result_pickle.exists():
                del waiting[job_id]
                continue
            state, reason = states.get(job_id, ("UNKNOWN", "no longer known to Slurm"))
            if state in ("COMPLETED", "UNKNOWN"):
                # The result may still be on its way (a shared file system).
                since = without_result_since.setdefault(job_id, time.monotonic())
                if time.monotonic() - since < RESULT_GRACE_S:
                    continue
            elif state not in ENDED:
                continue
            ended[job_id] = JobEnded(job_id, state, reason)
            del waiting[job_id]
        if waiting:
            time.sleep(poll_s if time.monotonic() - started < 60 else 5.0)
    return ended


def cancel(jobs: Sequence[Any], patience_s: float = 300.0) -> None:
    """scancel every job of `jobs` still queued or running, and wait until Slurm has ended them."""
    arrays = sorted({_array_id(job.job_id) for job in jobs})
    log.warning("Sweep: cancelling SLURM job array %s", ", ".join(arrays))
    subprocess.run(["scancel", *arrays], check=False, capture_output=True, text=True)
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        if all(state in ENDED for state, _ in squeue(set(arrays)).values()):
            return
        time.sleep(0.5)
    log.error("Sweep: SLURM jobs of %s still in the queue after %.0f s", ", ".join(arrays), patience_s)


def squeue(arrays: set[str]) -> dict[str, tuple[str, str]]:
    """State and reason of each job of the job arrays, by id ('12_3'), ended ones included for as
    long as Slurm keeps them (MinJobAge); a job Slurm no longer knows is missing."""
    found: dict[str, tuple[str, str]] = {}
    for array in arrays:  # squeue refuses a whole list when one id in it is unknown
        listed = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--jobs", array,
                                 "--format=%i|%T|%r"], capture_output=True, text=True)
        for line in listed.stdout.splitlines():
            job_id, state, reason = (line.split("|") + ["", ""])[:3]
            found[job_id.strip()] = (state.strip(), reason.strip())
    return found


def _array_id(job_id: str) -> str:
    return job_id.split("_")[0]


def _failed(overrides: Sequence[str], number: int, error: BaseException) -> Any:
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    return JobReturn(overrides=list(overrides), hydra_cfg=OmegaConf.create({"hydra": {"job": {"num": number}}}),
                     status=JobStatus.FAILED, _return_value=error)

