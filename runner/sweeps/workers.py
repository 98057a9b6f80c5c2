"""joblib and Ray: a sweep's jobs in worker processes, any of which may die (the kernel's OOM
killer, a crash in a framework's C code) without taking the others with it.

Ray (`launch_ray`): Hydra's Ray launcher waits for its jobs' results in turn, and the first job
whose worker died (after Ray's own retries, `hydra.launcher.ray.remote.max_retries`) raises out
of the sweep, abandoning the others' results. The runner submits the jobs as Hydra's launcher
does and takes each job's result on its own: a job whose worker died is a lost job
(`WorkerDied`), the others are recorded as they ran.

Hydra's joblib launcher runs every job in one `joblib.Parallel` call. When a worker process dies,
joblib's loky executor stops all of its workers and raises `TerminatedWorkerError` for the whole
call: the sweep ends in that traceback, the jobs that were running are killed with the one that
died, and the jobs not yet started never run. So for `hydra/launcher=joblib` the runner calls
Hydra's own `execute_job` through `joblib.Parallel` itself (`launch`), taking each result as it
comes, and when the pool breaks:

- the jobs that had not started run again in a new pool, as before;
- a job that had started (each writes a marker before it starts) and had already FINISHED its
  run lost only its return value: it is done;
- the other jobs that had started run again one at a time, their first attempt's run ended
  KILLED with the reason: the one whose process dies alone is the one that died, a lost job
  (`WorkerDied`) whose run the sweeper ends KILLED, or makes so when it had none
  (`runner.sweeps.record_lost_jobs`).
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig

from runner.errors import JobLost
from runner.job import job_return

log = logging.getLogger("runner")

STARTED_DIR = ".started"  # in the sweep folder: a file per job number, written as the job starts


class WorkerDied(JobLost):
    """A job whose worker process died while it ran alone in it."""


def is_joblib(launcher: Any) -> bool:
    return type(launcher).__name__ == "JoblibLauncher"


def is_ray(launcher: Any) -> bool:
    return type(launcher).__name__ == "RayLauncher"


def launch_ray(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
               configs: Sequence[DictConfig]) -> list[Any]:
    """Hydra's `RayLauncher.launch`, each job's result taken on its own: a JobReturn per job,
    FAILED with a `WorkerDied` (or, for another of Ray's errors, a `JobLost` saying it) for a job
    whose worker did not return. `configs`: each job's, as the sweep composed it to check it."""
    # Ray and its launcher live in an environment of their own (`make ray-env`): imported here.
    import ray
    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, filter_overrides, setup_globals
    from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray, start_ray
    from omegaconf import open_dict

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("Ray Launcher is launching %d jobs, sweep output dir: %s", len(job_overrides), sweep_dir)
    # As Hydra's launcher: too little object store memory fails on small machines (ray#11966)
    launcher.ray_cfg.init.setdefault("object_store_memory", 78643200)
    start_ray(launcher.ray_cfg.init)
    running = []
    for number, (overrides, composed) in enumerate(zip(job_overrides, configs, strict=True), start=initial_job_idx):
        log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        sweep_config = copy.deepcopy(composed)  # the sweep's own stays as it checked it
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"job_id_for_{number}"
            sweep_config.hydra.job.num = number
        running.append(launch_job_on_ray(launcher.hydra_context, launcher.ray_cfg.remote, sweep_config,
                                         launcher.task_function, Singleton.get_state()))
    returns = []
    for number, (overrides, result) in enumerate(zip(job_overrides, running), start=initial_job_idx):
        try:
            returns.append(ray.get(result))
        except ray.exceptions.WorkerCrashedError:
            returns.append(job_return(overrides, number, error=WorkerDied(
                f"job #{number}'s Ray worker process died before the job returned")))
        except ray.exceptions.RayError as error:  # its node died, its task was cancelled, ...
            # Ray's messages run on with advice and ids: the first sentence says what happened
            first = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
            returns.append(job_return(overrides, number, error=JobLost(
                f"job #{number} ended without a result on Ray: {type(error).__name__}: {first}")))
    return returns


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, configs: Sequence[DictConfig],
           on_stopped: Callable[[int, str], Optional[float]]) -> list[Any]:
    """Hydra's `JoblibLauncher.launch`, surviving dead workers: a JobReturn per job, FAILED with
    a `WorkerDied` for a job whose process died. `on_stopped(number, reason)` is told of each job
    stopped when another's process died: it returns the job's value if the job's run had
    FINISHED, else None (and ends the run KILLED with `reason`), and the job runs again."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, filter_overrides, setup_globals
    from hydra.types import HydraContext
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

    from runner.sweeps.sweep import ComposedOnce
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    started = sweep_dir / STARTED_DIR
    started.mkdir(parents=True, exist_ok=True)
    options = dict(launcher.joblib)
    options["backend"] = "loky"
    process_joblib_cfg(options)
    log.info("Joblib.Parallel(%s) is launching %d jobs", ",".join(f"{k}={v}" for k, v in options.items()),
             len(job_overrides))
    log.info("Launching jobs, sweep output dir : %s", sweep_dir)
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
    state = Singleton.get_state()

    def call(i: int) -> Any:
        # The job's config as the sweep composed it to check it: the worker need not compose it again.
        context = HydraContext(config_loader=ComposedOnce(launcher.hydra_context.config_loader, [job_overrides[i]],
                                                          [configs[i]]), callbacks=launcher.hydra_context.callbacks)
        return delayed(_execute)(str(started), initial_job_idx + i, job_overrides[i], context,
                                 launcher.config, launcher.task_function, state)

    returns: dict[int, Any] = {}
    waiting, alone = list(range(len(job_overrides))), []
    while waiting or alone:
        try:
            if alone:  # a job that was running when a worker died: alone, it alone can be to blame
                batch = [alone.pop(0)]
                function, args, kwargs = call(batch[0])
                # a worker process of its own: joblib would run n_jobs=1 in this process
                results = [get_reusable_executor(max_workers=1).submit(function, *args, **kwargs).result()]
            else:
                batch, waiting = waiting, []
                results = Parallel(**options, return_as="generator_unordered")(call(i) for i in batch)
            for result in results:
                returns[int(result.hydra_cfg.hydra.job.num) - initial_job_idx] = result
        except TerminatedWorkerError as error:
            unfinished = [i for i in batch if i not in returns]
            how = _how(error)
            if len(batch) == 1:
                number = initial_job_idx + batch[0]
                returns[batch[0]] = job_return(job_overrides[batch[0]], number, error=WorkerDied(
                    f"job #{number}'s worker process died ({how}) before the job returned"))
                continue
            began = [i for i in unfinished if (started / str(initial_job_idx + i)).exists()] or unfinished
            for i in list(began):
                (started / str(initial_job_idx + i)).unlink(missing_ok=True)
                value = on_stopped(initial_job_idx + i, f"stopped when a joblib worker process of the sweep died "
                                                        f"({how}); the job ran again as a new run")
                if value is not None:  # it had recorded everything: only its return value was lost
                    returns[i] = job_return(job_overrides[i], initial_job_idx + i, value)
                    began.remove(i)
            log.warning("Sweep: a joblib worker process died (%s), and joblib stopped the others: %d job(s) that were "
                        "running run again one at a time, %d not yet started run as before", how, len(began),
                        len([i for i in unfinished if i not in began and i not in returns]))
            alone += began
            waiting = [i for i in unfinished if i not in began and i not in returns]
    shutil.rmtree(started, ignore_errors=True)  # the markers served this launch only
    return [returns[i] for i in range(len(job_overrides))]


def _execute(started: str, idx: int, *arguments: Any) -> Any:
    """Hydra's `execute_job`, in a worker, after marking the job as started."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    (Path(started) / str(idx)).touch()
    return execute_job(idx, *arguments)


def _how(error: BaseException) -> str:
    """How the worker died, from loky's message ('The exit codes of the workers are {SIGKILL(-9)}').

    >>> _how(RuntimeError("... The exit codes of the workers are {SIGKILL(-9)}"))
    'SIGKILL(-9)'
    """
    found = re.search(r"exit codes of the workers are \{([^}]*)\}", str(error))
    return found.group(1) if found else type(error).__name__


