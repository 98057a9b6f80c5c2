"""submitit: a sweep's jobs on SLURM (or as local processes) waited for to the last and cancelled
with the sweep; each run tagged with its job.

Hydra's submitit launcher submits a sweep as one job array, then waits for each job's result in
turn. The first job that ends without a result (scancel, its time limit, a failed node, a process
killed) raises, and the sweep stops waiting for the others; without Slurm's accounting (`sacct`)
submitit cannot even tell that such a job has ended, and waits forever. Ctrl-C leaves every job
in the queue. So for `hydra/launcher=submitit_slurm` and `submitit_local` the runner submits the
jobs exactly as Hydra's launcher does (`launch`), and then:

- waits for every job: done when its result is written, or when Slurm (`squeue`, which needs no
  accounting) says it ended, or (local) when its process is gone;
- a job that ended without a result is a lost job of the sweep (`JobEnded`), its error Slurm's
  state and reason (`CANCELLED`, `TIMEOUT`, ...; for `FAILED`, srun's word where a signal ended
  its task) or its process's end; the sweeper gives its run
  that reason, or makes the run if the job never did (`runner.sweeps.record_lost_jobs`); a job
  whose result is an error raised outside its run is a failed job with that error (`JobFailed`;
  `TimeLimit` where it was Slurm's time-limit warning, come before the run began), the run made
  for it carrying the job's Slurm ids as its own would;
- Ctrl-C or SIGTERM of the launching process cancels every job of the sweep still queued or
  running and waits until Slurm has ended them: nothing of the sweep is left in the queue.

Inside a job, `job_tags` are the Slurm ids the run is tagged with.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from runner.errors import JobLost
from runner.job import job_return

log = logging.getLogger("runner")

# Slurm's job states that are over (squeue --states=all shows them for MinJobAge seconds).
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"}
# A job Slurm calls COMPLETED writes its result first; on a shared file system the file may show
# up on the launching machine a little later: wait this long for it before calling the job lost.
RESULT_GRACE_S = 60.0
# Slurm looks at time limits every 30 s and sends a job's warning (sbatch --signal) at the first
# look within this much of the moment asked for: measured here, delays of 90, 60 and 30 s on a
# two-minute limit came 93, 63 and 33 s before it.
WARNING_EARLY_S = 30
# How long a job's process may take to start and take the warning over (submitit's handler)
JOB_START_S = 15


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


class JobFailed(RuntimeError):
    """A job that raised before it had made its run, or in the code around it (Hydra's,
    submitit's); `tags` name the job, for the run the sweeper makes for it."""

    def __init__(self, message: str, tags: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.tags = tags or {}

    def run_tags(self) -> dict[str, str]:
        return self.tags


class TimeLimit(JobFailed):
    """A Slurm job signalled before its time limit, and not requeued."""


def slurm_tags(job_id: str) -> dict[str, str]:
    """The tags of a SLURM job's run that name the job (`job_tags`), from its id ('12_3' or '12').

    >>> slurm_tags("12_3"), slurm_tags("12")
    ({'slurm_array_job_id': '12', 'slurm_array_task_id': '3'}, {'slurm_job_id': '12'})
    """
    array, _, task = job_id.partition("_")
    return {"slurm_array_job_id": array, "slurm_array_task_id": task} if task else {"slurm_job_id": array}


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
                        f"{error}", job_tags()) from None


def _this_job() -> str:
    """This job's id as squeue shows it: '12_3' for task 3 of array 12."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "?")


def is_submitit(launcher: Any) -> bool:
    """Hydra's submitit_slurm or submitit_local launcher."""
    return type(launcher).__name__ in ("SlurmLauncher", "LocalLauncher") and getattr(
        launcher, "_EXECUTOR", "") in ("slurm", "local")


class JobEnded(JobLost):
    """A job that ended without a result: its id ('12_3'), the state its cluster gave it (none
    where it cannot say: a local process) and the reason.

    >>> str(JobEnded("4_2", "CANCELLED", "None")), str(JobEnded("12", "", "its process died", kind="submitit"))
    ('SLURM job 4_2 ended CANCELLED without a result', 'submitit job 12 ended without a result (its process died)')
    """

    def __init__(self, job_id: str, state: str, reason: str, kind: str = "SLURM") -> None:
        self.job_id, self.state, self.reason, self.kind = job_id, state, reason, kind
        why = "" if reason in ("", "None") else f" ({reason})"
        super().__init__(f"{kind} job {job_id} ended {state}{why} without a result" if state else
                         f"{kind} job {job_id} ended without a result{why}")

    def run_tags(self) -> dict[str, str]:
        """The tags a SLURM job's run has (`job_tags`) that a run made for it needs too."""
        return slurm_tags(self.job_id) if self.kind == "SLURM" else {}


def early_warning(timeout_min: Optional[int], signal_delay_s: Optional[int]) -> Optional[str]:
    """A line for a time limit whose warning Slurm may send as a job starts, before the job can
    take it (the job then ends at the signal, or, the warning lost, at the limit); None where the
    warning comes while the job runs.

    >>> early_warning(60, 120) is None, early_warning(1, 15) is None
    (True, True)
    >>> said = early_warning(1, 120)
    >>> said.split(": ")[0]
    'hydra.launcher.signal_delay_s=120 on hydra.launcher.timeout_min=1'
    >>> said.split("; ")[-1]
    'a delay of at most 15 s warns a job while it runs'
    """
    if timeout_min is None or signal_delay_s is None:
        return None
    largest = 60 * timeout_min - WARNING_EARLY_S - JOB_START_S  # the longest delay a started job hears
    if signal_delay_s <= largest:
        return None
    return (f"hydra.launcher.signal_delay_s={signal_delay_s} on hydra.launcher.timeout_min={timeout_min}: Slurm may "
            "send its time-limit warning (SIGUSR2) as a job starts, before the job can take it, and the job then ends "
            f"without it (FAILED, or TIMEOUT at the limit); a delay of at most {max(0, largest)} s warns a job "
            "while it runs")


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    """Hydra's submitit launch, waiting for every job: a JobReturn per job, FAILED for a job that
    ended without a result (its error a JobEnded). Ctrl-C or SIGTERM here cancels the jobs still
    queued or running, waits until they are gone, and is raised again."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides

    slurm = launcher._EXECUTOR == "slurm"
    if slurm and (line := early_warning(launcher.params.get("timeout_min"), launcher.params.get("signal_delay_s"))):
        log.warning("Sweep: %s", line)
    executor = _executor(launcher)
    sweep = launcher.config.hydra.sweep
    log.info("Submitit '%s' sweep output dir : %s", launcher._EXECUTOR, sweep.dir)
    Path(str(sweep.dir)).mkdir(parents=True, exist_ok=True)
    if "mode" in sweep:  # hydra.sweep.mode, as Hydra's launcher applies it
        os.chmod(str(sweep.dir), mode=int(str(sweep.mode), 8))
    arguments = []
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        arguments.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*arguments))
    first = jobs[0].job_id
    if slurm:
        log.info("Sweep: submitted to SLURM as %s", f"job array {_array_id(first)}_[0-{len(jobs) - 1}]"
                 if "_" in first else f"job {first}")
    try:
        ended = wait(jobs) if slurm else wait_local(jobs)
    except KeyboardInterrupt:
        if slurm:
            cancel(jobs)
        else:
            for job in jobs:
                job.cancel(check=False)
        raise
    returns = []
    for number, (overrides, job) in enumerate(zip(job_overrides, jobs), start=initial_job_idx):
        if job.job_id in ended:
            returns.append(job_return(overrides, number, error=ended[job.job_id]))
            continue
        try:
            result = job.results()[0]
        except Exception as error:  # the job raised outside Hydra's job (submitit keeps the traceback)
            returns.append(job_return(overrides, number, error=_outside_the_run(job, error, slurm)))
            continue
        if type(result._return_value).__name__ == "UncompletedJobError":  # raised in the job, before its run
            result._return_value = _before_the_run(job, str(result._return_value))
        returns.append(result)
    return returns


# The lines of dashes around the job's traceback in submitit's FailedJobError
_TRACE_EDGE = re.compile(r"^-{10,}$", re.MULTILINE)
# submitit's error where it did not requeue a job warned of its time limit
_NOT_REQUEUED = re.compile(r"UncompletedJobError: (.+)$", re.MULTILINE)


def _outside_the_run(job: Any, error: Exception, slurm: bool) -> JobFailed:
    """What a job raised outside Hydra's job, as one line. submitit's FailedJobError carries the
    job's traceback between two lines of dashes, then where its logs are: the traceback's last
    line says what was raised. Slurm's time-limit warning, come while Hydra was still setting the
    job up, raised submitit's UncompletedJobError wherever the job was; what caught it may have
    raised another error, so it is looked for in the whole traceback."""
    text = str(error)
    edges = list(_TRACE_EDGE.finditer(text))  # the first and the last: the traceback may hold such lines too
    trace = text[edges[0].end():edges[-1].start()] if len(edges) >= 2 else text
    if said := _NOT_REQUEUED.findall(trace):
        return _before_the_run(job, said[0].strip())
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    return JobFailed(f"{'SLURM' if slurm else 'submitit'} job {job.job_id} raised outside its run: {last}",
                     slurm_tags(job.job_id) if slurm else {})


def _before_the_run(job: Any, submitit_message: str) -> TimeLimit:
    """Slurm's time-limit warning came before the job had made its run (`handle_signals` was not
    yet in place): submitit's own handler raised, not requeueing the job."""
    return TimeLimit(f"SLURM job {job.job_id} was warned of its time limit before its run began, and not requeued "
                     f"(hydra.launcher.max_num_timeout): {submitit_message}", slurm_tags(job.job_id))


def _executor(launcher: Any) -> Any:
    """The executor Hydra's submitit launcher builds from `hydra.launcher` (its `launch`)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    kind = launcher._EXECUTOR
    params = dict(launcher.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=kind, **init)
    common = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in common else f"{kind}_{key}": value for key, value in params.items()})
    return executor


def wait_local(jobs: Sequence[Any], poll_s: float = 0.5) -> dict[str, JobEnded]:
    """Wait until every local job's process has ended; the jobs that ended without a result."""
    while not all(job.done() for job in jobs):
        time.sleep(poll_s)
    ended = {}
    for job in jobs:
        if not job.paths.result_pickle.exists():  # its process was killed (submitit's controller cannot say how)
            ended[job.job_id] = JobEnded(job.job_id, "", "its process died", kind="submitit")
    return ended


def wait(jobs: Sequence[Any], poll_s: float = 1.0) -> dict[str, JobEnded]:
    """Wait until every job has written its result or ended; the jobs that ended without one.

    Polls `squeue` every `poll_s` seconds for the first minute, then every 5 s."""
    waiting = {job.job_id: job for job in jobs}
    ended: dict[str, JobEnded] = {}
    without_result_since: dict[str, float] = {}
    # sbatch leaves every job PENDING: one gone from the queue before it was ever seen otherwise
    # (cancelled at once, before the first look) never ran.
    last_seen: dict[str, str] = {job.job_id: "PENDING" for job in jobs}
    started = time.monotonic()
    while waiting:
        states = squeue({_array_id(job_id) for job_id in waiting})
        if states is None:  # Slurm did not answer (a busy controller): nothing learnt, look again
            time.sleep(poll_s)
            continue
        for job_id, job in list(waiting.items()):
            if job.paths.result_pickle.exists():
                del waiting[job_id]
                continue
            if job_id in states:
                last_seen[job_id] = states[job_id][0]
            elif last_seen.get(job_id) == "PENDING":
                # Without accounting, Slurm forgets at once an array task cancelled while it was
                # pending (it never became a job record of its own): it never ran, so has no result.
                states[job_id] = ("CANCELLED", "gone from the queue while PENDING")
            state, reason = states.get(job_id, ("UNKNOWN", "no longer known to Slurm"))
            if state in ("COMPLETED", "UNKNOWN"):
                # The result may still be on its way (a shared file system).
                since = without_result_since.setdefault(job_id, time.monotonic())
                if time.monotonic() - since < RESULT_GRACE_S:
                    continue
            elif state not in ENDED:
                continue
            ended[job_id] = JobEnded(job_id, state, _with_what_srun_said(job, reason) if state == "FAILED" else reason)
            del waiting[job_id]
        if waiting:
            time.sleep(poll_s if time.monotonic() - started < 60 else 5.0)
    return ended


# srun's line in a job's stderr log for a task that a signal ended ("srun: error: node1: task 0: Killed")
_SRUN_ENDED = re.compile(r"^srun: error: \S+: tasks? [\d,-]+: (.+)$", re.MULTILINE)


def _with_what_srun_said(job: Any, reason: str) -> str:
    """Slurm's reason for a FAILED job, and how srun says its task ended where a signal ended it.

    Slurm sends SIGUSR2 `hydra.launcher.signal_delay_s` before the time limit: when that is
    already due as the job starts (a limit shorter than the delay), the signal can come before
    the job has taken it over, and it ends the process. Slurm says only NonZeroExitCode."""
    try:
        said = _SRUN_ENDED.findall(Path(job.paths.stderr).read_text(errors="replace"))
    except (AttributeError, OSError):
        return reason
    if not said:
        return reason
    how = said[-1].strip()
    if how == "User defined signal 2":
        how = ("SIGUSR2 ended it as it started: Slurm's warning of its time limit, sent hydra.launcher.signal_delay_s "
               "before hydra.launcher.timeout_min, came before the job could take it")
    else:
        how = f"srun: {how}"
    return how if reason in ("", "None") else f"{reason}: {how}"


def cancel(jobs: Sequence[Any], patience_s: float = 300.0) -> None:
    """scancel every job of `jobs` still queued or running, and wait until Slurm has ended them."""
    arrays = sorted({_array_id(job.job_id) for job in jobs})
    log.warning("Sweep: cancelling SLURM job array %s", ", ".join(arrays))
    subprocess.run(["scancel", *arrays], check=False, capture_output=True, text=True)
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        states = squeue(set(arrays))
        if states is not None and all(state in ENDED for state, _ in states.values()):
            return
        time.sleep(0.5)
    log.error("Sweep: SLURM jobs of %s still in the queue after %.0f s", ", ".join(arrays), patience_s)


def squeue(arrays: set[str]) -> Optional[dict[str, tuple[str, str]]]:
    """State and reason of each job of the job arrays, by id ('12_3'), ended ones included for as
    long as Slurm keeps them (MinJobAge); a job Slurm no longer knows is missing. None when Slurm
    did not answer (its controller busy or down): that says nothing of the jobs."""
    found: dict[str, tuple[str, str]] = {}
    for array in arrays:  # squeue refuses a whole list when one id in it is unknown
        listed = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--jobs", array,
                                 "--format=%i|%T|%r"], capture_output=True, text=True)
        if listed.returncode != 0 and "Invalid job id" not in listed.stderr:  # an unknown array has no jobs
            log.debug("squeue did not answer: %s", listed.stderr.strip())
            return None
        for line in listed.stdout.splitlines():
            job_id, state, reason = (line.split("|") + ["", ""])[:3]
            found[job_id.strip()] = (state.strip(), reason.strip())
    return found


def _array_id(job_id: str) -> str:
    return job_id.split("_")[0]

