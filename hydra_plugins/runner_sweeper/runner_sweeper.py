"""The runner's sweeper. Hydra only instantiates sweepers found in the `hydra_plugins`
namespace package, so the class lives here; what it does is in `runner.sweeps` and
`runner.sweeps.search`.

- `hydra/sweeper=runner` (the default): Hydra's basic sweeper, made failure-resistant and
  reported. It expands the same sweep syntax and `hydra.sweeper.params`, then: checks every
  job's config before any job starts, wraps the jobs in a parent MLflow run, runs every job
  even when some fail, and reports at the end.
  With `hydra.sweeper.search.n_trials` set, the same sweeper runs an Optuna search over
  `params` instead of a grid: each trial is a job, with the same checks, parent run and report.
  With `hydra.sweeper.batch=true` (or a list of keys), the grid's values of keys that do not
  change the program (lr, momentum, ..., see `runner.sweeps.points`) run as one batch job per group of
  the other keys; with `hydra.sweeper.prune.rungs` too, each batch prunes its points by successive
  halving (`runner.descent.pruning`).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf


@dataclass
class SearchConf:
    n_trials: Optional[int] = None  # a number: search with this many trials; null: run a grid
    n_jobs: int = 1  # trials asked for and launched at once (a parallel launcher runs them together)
    sampler: str = "tpe"  # tpe or random
    seed: int = 0  # the sampler's seed: the same seed, the same trials


@dataclass
class PruneConf:
    rungs: Optional[List[int]] = None  # epochs at which a batch ranks its running points; null: no pruning
    keep: float = 1 / 3  # the fraction of them each rung keeps (successive halving's 1/eta, eta = 3)
    metric: str = "loss"  # what ranks them: loss, or a measure the run records (val_loss, val_accuracy, ...)


@dataclass
class RunnerSweeperConf:
    _target_: str = "hydra_plugins.runner_sweeper.runner_sweeper.RunnerSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None  # a grid, or with search.n_trials set, the search space
    search: SearchConf = field(default_factory=SearchConf)
    # true: run the values of every swept key that can be batched as one job per group of the
    # other keys; a list of keys: batch those; false: one job per setting
    batch: Any = False
    prune: PruneConf = field(default_factory=PruneConf)  # successive halving inside each batch


ConfigStore.instance().store(group="hydra/sweeper", name="runner", node=RunnerSweeperConf, provider="runner")


def _reuse_composed(launcher: Launcher, hydra_context: HydraContext, jobs: List[List[str]], configs: List[Any]) -> None:
    """An in-process launcher gets the configs the check already composed."""
    from runner.sweeps import sweep

    if isinstance(launcher, BasicLauncher):
        launcher.hydra_context = HydraContext(config_loader=sweep.ComposedOnce(hydra_context.config_loader, jobs, configs),
                                              callbacks=hydra_context.callbacks)


class RunnerSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[Dict[str, str]] = None,
                 search: Optional[DictConfig] = None, batch: Any = False, prune: Optional[DictConfig] = None) -> None:
        super().__init__(max_batch_size, params)
        self.search = search
        self.batch = batch
        self.prune = prune

    def sweep(self, arguments: List[str]) -> Any:
        from runner import schema

        return schema.reported(self._sweep)(arguments)

    def _sweep(self, arguments: List[str]) -> Any:
        from runner.errors import ConfigError
        from runner.sweeps import sweep

        # Resolve the sweep folder (its ${now:...}) before composing any job: each job config copies
        # the master's resolver cache, and so gets this same folder.
        sweep_dir = Path(self.config.hydra.sweep.dir)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        if self.batch not in (False, None) and not isinstance(self.batch, bool) and not OmegaConf.is_list(self.batch):
            raise ConfigError(f"hydra.sweeper.batch={self.batch}: allowed values are true, false or a list of keys")
        if self.prune is not None and self.prune.rungs is not None and not self.batch:
            raise ConfigError(f"hydra.sweeper.prune.rungs={list(self.prune.rungs)} prunes the points of a batch: add "
                              f"hydra.sweeper.batch=true, or drop the rungs")
        if self.search is not None and self.search.n_trials is not None:
            if self.batch:
                raise ConfigError("hydra.sweeper.batch runs a grid; a search (hydra.sweeper.search.n_trials) runs "
                                  "its trials one by one: set one of them")
            results = self._search(parser, arguments, sweep_dir)
        else:
            results = self._grid(parser, arguments, sweep_dir)
        failures = sweep.failures_error(results)
        if failures:
            raise failures
        return [results]

    def _grid(self, parser: OverridesParser, arguments: List[str], sweep_dir: Path) -> List[Any]:
        from runner.sweeps import sweep

        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        sweep.check_grid(overrides)
        if self.batch:
            jobs, labels = sweep.batch_jobs(overrides, self.batch, self.split_arguments, self.prune)
        else:
            jobs, labels = [job for chunk in self.split_arguments(overrides, None) for job in chunk], None
        configs = sweep.check_jobs(self.hydra_context.config_loader, self.config, jobs, labels)
        _reuse_composed(self.launcher, self.hydra_context, jobs, configs)

        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        results: List[Any] = []
        with sweep.parent_run(self.config, configs) as (parent, to_launch):
            size = self.max_batch_size or len(to_launch) or 1
            for start in range(0, len(to_launch), size):
                chosen = to_launch[start : start + size]
                results.extend(self._launch(parent, [jobs[i] for i in chosen], [configs[i] for i in chosen], start))
        return results

    def _launch(self, parent: Any, jobs: List[List[str]], configs: List[Any], initial_job_idx: int) -> List[Any]:
        """The launcher's jobs, then a run for each job that did not make its own
        (`runner.sweeps.sweep.record_lost_jobs`). On submitit, joblib and Ray the runner launches them
        itself (`runner.sweeps.cluster`, `runner.sweeps.workers`): Hydra's launchers stop at the first job that
        ends without a result, and leave a SLURM sweep's jobs queued on Ctrl-C."""
        from runner.sweeps import cluster, workers
        from runner.sweeps import sweep

        if cluster.is_submitit(self.launcher):
            results = cluster.launch(self.launcher, jobs, initial_job_idx)
        elif workers.is_joblib(self.launcher):
            results = workers.launch(self.launcher, jobs, initial_job_idx, configs, on_stopped=lambda number, why: (
                parent.store.stop_job(parent.run_id, number, why)))
        elif workers.is_ray(self.launcher):
            results = workers.launch_ray(self.launcher, jobs, initial_job_idx, configs)
        else:
            results = list(self.launcher.launch(jobs, initial_job_idx=initial_job_idx))
        sweep.record_lost_jobs(parent, list(zip(range(initial_job_idx, initial_job_idx + len(jobs)), configs)), results)
        return results

    def _search(self, parser: OverridesParser, arguments: List[str], sweep_dir: Path) -> List[Any]:
        from runner.sweeps import search
        from runner.sweeps import sweep

        n_trials, n_jobs = self.search.n_trials, self.search.n_jobs
        search.check_settings(n_trials, n_jobs, self.search.sampler)
        space, fixed = search.split(parser, self.params, arguments)
        study = search.create_study(self.search.sampler, self.search.seed)
        # Checked before the parent run exists, at the first trial and at the ends of every
        # range: a misspelt key or a value the config refuses is one clear error, nothing recorded.
        first = study.ask(space)
        points = [first.params, *search.extremes(space, first.params)]
        sweep.check_jobs(self.hydra_context.config_loader, self.config, [[*fixed, *search.overrides(p)] for p in points])

        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        results: List[Any] = []
        with sweep.parent_run(self.config, [], jobs=n_trials) as (parent, _):
            pending, told = [first], 0
            while told < n_trials:
                size = min(n_jobs, n_trials - told)
                trials = pending + [study.ask(space) for _ in range(size - len(pending))]
                pending = []
                jobs = [[*fixed, *search.overrides(t.params)] for t in trials]
                configs = sweep.check_jobs(self.hydra_context.config_loader, self.config, jobs)
                # skip_done=true: a trial already recorded is told its recorded loss, not run
                # again; with the same seed the search then goes on where it stopped.
                done = parent.reuse_finished(configs)
                for trial, run_id in zip(trials, done):
                    if run_id:
                        study.tell(trial, search.recorded_objective(parent.store.record(run_id)))
                launch = [i for i, run_id in enumerate(done) if run_id is None]
                if launch:
                    _reuse_composed(self.launcher, self.hydra_context, [jobs[i] for i in launch],
                                    [configs[i] for i in launch])
                    returns = self._launch(parent, [jobs[i] for i in launch], [configs[i] for i in launch], told)
                    for i, job_return in zip(launch, returns):
                        value = search.objective(job_return)
                        study.tell(trials[i], value, state=None if value is not None else search.FAILED)
                    results.extend(returns)
                told += len(trials)
            search.record_best(parent, study)
        return results
