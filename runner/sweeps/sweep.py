"""A sweep: every job checked before any starts, one parent MLflow run, failures collected, a report.

Hydra's sweeper plugin `hydra_plugins/runner_sweeper` (the default `hydra/sweeper=runner`)
expands the sweep like Hydra's basic sweeper and then calls, in order:

1. `check_jobs`: compose every job's config and check it as a job would (`runner.problem.from_config`),
   so a bad value anywhere in the sweep is one clear error and nothing is recorded; with
   `hydra.sweeper.batch`, a job is a group of points (`batch_jobs`), composed once, its points
   checked as arrays;
2. `parent_run`: open the store once in the launching process (a new SQLite file is created
   and migrated here, not by parallel workers at the same time), create the parent run and
   write its id into the sweep folder, where every job finds it whatever process or machine the
   launcher runs it in (`parent_run_id`); jobs whose config already has a FINISHED run are left
   out when `skip_done=true`;
3. the launcher, for the remaining jobs; a failed job does not stop the others;
4. on the way out of `parent_run`, whatever happened: runs left RUNNING by stopped or crashed
   workers are ended KILLED, the report is built from what the jobs recorded (`runner.report`), and the
   parent ends FINISHED, FAILED (a job failed) or KILLED (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from hydra.core.utils import JobStatus
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from runner import app, job, report
from runner.errors import FAILED, FINISHED, KILLED, RUNNING, ConfigError, JobLost, one_line
from runner.problem import from_config
from runner.records import batch_report, provenance
from runner.sweeps import compose, points

log = logging.getLogger("runner")


class JobsFailed(CompactHydraException):
    """Some jobs of a sweep failed; the others ran and were recorded."""


@dataclass
class ParentRun:
    store: Any  # runner.records.tracking.Store
    run_id: str
    folder: Path
    reused: list[str] = field(default_factory=list)  # FINISHED runs standing in for skipped jobs

    def reuse_finished(self, job_configs: Sequence[DictConfig]) -> list[Optional[str]]:
        """For each job: with skip_done=true, a FINISHED run of the experiment with the same
        config, which then stands in for the job (in `reused`, and so in the report); else None."""
        found = [self.store.finished_run(provenance.config_hash(cfg)) if cfg.skip_done else None
                 for cfg in job_configs]
        self.reused.extend(run_id for run_id in found if run_id)
        return found


def check_grid(overrides: Sequence[Any]) -> None:
    """A grid cannot run an interval (Hydra's basic sweeper would fail with a traceback): say
    how to search it instead."""
    for override in overrides:
        if override.is_sweep_override() and override.is_interval_sweep():
            raise ConfigError(f"{override.input_line}: an interval is searched, not swept: add "
                              "hydra.sweeper.search.n_trials=N (or use a list or range())")


def batch_jobs(overrides: Sequence[Any], setting: Any, split_arguments: Any, prune: Any = None
               ) -> tuple[list[list[str]], list[str]]:
    """The jobs of a batched grid, and a label for each: one job per group of the keys that
    change the program, running every point of the batched keys (`runner.sweeps.points.split`),
    each pruning its points where `prune` (hydra.sweeper.prune) has rungs. No batched key: the
    ordinary grid."""
    grouped, batched = points.split(overrides, setting)
    groups = [job for chunk in split_arguments(grouped, None) for job in chunk]
    if not batched:
        log.info("Sweep: hydra.sweeper.batch is set but no swept key can be batched (%s): one job per setting",
                 points.ALLOWED)
        return groups, [" ".join(group) for group in groups]
    extra = points.job_overrides(batched)
    if prune is not None and prune.rungs is not None:
        extra += [f"batch.prune.rungs=[{','.join(str(r) for r in prune.rungs)}]", f"batch.prune.keep={prune.keep!r}",
                  f"batch.prune.metric={prune.metric}"]
    labels = [" ".join([*group, *(points.sweep_text(o) for o in batched)]) for group in groups]
    return [[*group, *extra] for group in groups], labels


def check_jobs(config_loader: Any, sweep_config: DictConfig, jobs: Sequence[Sequence[str]],
               labels: Optional[Sequence[str]] = None) -> list[DictConfig]:
    """Every job's composed config (`runner.sweeps.compose`), each checked; a ConfigError names
    the job and the key.

    An unreachable tracking server is reported first, before any framework is imported.
    """
    from runner.records import tracking

    tracking.check_reachable(tracking.tracking_uri(sweep_config.mlflow.tracking_uri, Path.cwd()))
    configs = []
    for number, cfg in enumerate(compose.jobs(config_loader, sweep_config, jobs)):
        try:
            from_config(cfg)
        except ConfigError as error:
            what = labels[number] if labels else " ".join(jobs[number])
            raise ConfigError(f"job #{number} ({what}): {error}") from None
        configs.append(cfg)
    return configs


@contextmanager
def parent_run(sweep_config: DictConfig, job_configs: Sequence[DictConfig], jobs: Optional[int] = None
               ) -> Iterator[tuple[ParentRun, list[int]]]:
    """The sweep's parent run around its jobs; yields it and the indices of the jobs to launch.

    `jobs`: how many jobs will run, where `job_configs` cannot tell (a search's trials).
    """
    from runner.records import tracking

    folder = Path(sweep_config.hydra.sweep.dir)
    folder.mkdir(parents=True, exist_ok=True)
    uri = tracking.tracking_uri(sweep_config.mlflow.tracking_uri, Path.cwd())
    store = tracking.connect(uri, sweep_config.mlflow.experiment_name)
    sweep = ParentRun(store, store.create(sweep_name(sweep_config.hydra.overrides.task), tags={
        "kind": "sweep", "sweep_dir": str(folder.resolve()),
        "sweep_overrides": " ".join(sweep_config.hydra.overrides.task), **provenance.code_tags()}), folder)
    log.info("Sweep: parent MLflow %s", store.describe(sweep.run_id))

    to_launch = [index for index, done in enumerate(sweep.reuse_finished(job_configs)) if done is None]
    if sweep.reused:
        log.info("Sweep: %d of %d jobs already have a FINISHED run (skip_done=true); running %d",
                 len(sweep.reused), len(job_configs), len(to_launch))
    job.write_parent(folder, uri, sweep.run_id, len(to_launch) if jobs is None else jobs)

    status = FAILED
    try:
        yield sweep, to_launch
        status = FINISHED
    except (KeyboardInterrupt, SystemExit):
        status = KILLED
        raise
    finally:
        try:
            # Every job has returned, or been stopped: a run still RUNNING belonged to a worker
            # process that died or was stopped with the sweep.
            store.kill_running_children(sweep.run_id)
            all_finished = build_report(sweep)
            if status == FINISHED and not all_finished:
                status = FAILED
        finally:
            store.end(sweep.run_id, status)


def build_report(sweep: ParentRun) -> bool:
    """The sweep's report, from what its jobs recorded (a batched sweep's, where they are
    batches); True when every run FINISHED."""
    records = [*(sweep.store.record(run_id) for run_id in sweep.reused), *sweep.store.children(sweep.run_id)]
    batched = any(record.tags.get("kind") == "batch" for record in records)
    write = batch_report.report_batches if batched else report.report_grid
    return write(sweep.store, sweep.run_id, sweep.folder, records, reused=len(sweep.reused))


def sweep_name(overrides: Sequence[str], limit: int = 100) -> str:
    """The parent run's name: what was typed, so the MLflow UI says what each sweep was.

    >>> sweep_name(["backend=numpy,torch", "lr=0.1,0.3"]), sweep_name([])
    ('sweep backend=numpy,torch lr=0.1,0.3', 'sweep')
    """
    name = " ".join(["sweep", *overrides])
    return name if len(name) <= limit else name[: limit - 3] + "..."


class ComposedOnce:
    """A config loader that hands each job the config `check_jobs` already composed for it.

    Hydra composes every job's config again when launching it, which costs more than a short
    job's own work. An in-process launcher gets one for every job; a joblib worker one for its
    job, pickled with it. Each config is handed out once, as a fresh composition would be;
    anything else goes to the real loader.
    """

    def __init__(self, loader: Any, jobs: Sequence[Sequence[str]], configs: Sequence[DictConfig]) -> None:
        self._loader = loader
        self._composed = {tuple(job): cfg for job, cfg in zip(jobs, configs)}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        cfg = self._composed.pop(tuple(sweep_overrides), None)
        return cfg if cfg is not None else self._loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        if name in ("_loader", "_composed") or name.startswith("__"):  # not set yet: being unpickled in a worker
            raise AttributeError(name)
        return getattr(self._loader, name)


def failures_error(results: Sequence[Any]) -> Optional[JobsFailed]:
    """One error listing every failed job and why, or None when all succeeded."""
    failed = [r for r in results if r.status == JobStatus.FAILED]
    if not failed:
        return None
    lines = [f"{len(failed)} of {len(results)} jobs failed (the others ran and are recorded):"]
    for r in failed:
        error = r._return_value  # JobReturn keeps the job's exception here
        lines.append(f"  #{r.hydra_cfg.hydra.job.num} {' '.join(r.overrides)}: {one_line(error)}")
    return JobsFailed("\n".join(lines))


def record_lost_jobs(sweep: ParentRun, launched: Sequence[tuple[int, DictConfig]], results: Sequence[Any]) -> None:
    """Every job launched is a run under the sweep's parent, whatever became of its process.

    `launched` pairs each job's number with its config, `results` are the launcher's JobReturns
    in the same order. A failed job with no run of its number (its process died, its cluster
    ended it, or it failed before it made its run) gets the run it would have made, ended FAILED
    (it raised) or KILLED (it was lost) with the reason as its `error`, its config as
    `hydra/config.yaml` (so that `runner.reproduce` can run it again); a lost job's newest run,
    and any earlier attempt of it still RUNNING (a launcher's retries), gets the reason and ends
    KILLED if it was still RUNNING.
    """
    failed = [(number, cfg, result._return_value) for (number, cfg), result in zip(launched, results)
              if result.status == JobStatus.FAILED]
    if not failed:
        return
    children = sweep.store.children(sweep.run_id)  # oldest first: a job's newest run is its last
    newest = {record.tags.get(job.NUMBER_TAG): record for record in children}
    for number, cfg, error in failed:
        reason = one_line(error)
        lost = isinstance(error, JobLost)
        record = newest.get(str(number))
        if record is None:
            tags = error.run_tags() if hasattr(error, "run_tags") else {}  # where the job ran (a SLURM job's ids)
            app.record_lost(sweep.store, sweep.run_id, cfg, number, KILLED if lost else FAILED, reason, tags)
        elif lost:  # its runs: the newest, and any earlier attempt left RUNNING (a launcher's retries)
            for attempt in children:
                if attempt.tags.get(job.NUMBER_TAG) == str(number) and (attempt is record or attempt.status == RUNNING):
                    sweep.store.end_lost(attempt, reason)

