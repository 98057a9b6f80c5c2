"""The runner's sweeper: Hydra's basic sweeper, made failure-resistant and reported.

Hydra only instantiates sweepers found in the `hydra_plugins` namespace package, so the class
lives here; what it does is in `runner.sweep`. Select it with `hydra/sweeper=runner` (the
runner's default). It expands the same sweep syntax and `hydra.sweeper.params` as Hydra's
basic sweeper, then: checks every job's config before any job starts, wraps the jobs in a
parent MLflow run, runs every job even when some fail, and reports at the end.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import HydraContext
from omegaconf import OmegaConf


@dataclass
class RunnerSweeperConf:
    _target_: str = "hydra_plugins.runner_sweeper.runner_sweeper.RunnerSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="runner", node=RunnerSweeperConf, provider="runner")


class RunnerSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        from runner import sweep

        # Resolve the sweep folder (its ${now:...}) before composing any job: each job config copies
        # the master's resolver cache, and so gets this same folder.
        sweep_dir = Path(self.config.hydra.sweep.dir)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        batches = self.split_arguments(overrides, self.max_batch_size)
        jobs = [job for batch in batches for job in batch]
        configs = sweep.check_jobs(self.hydra_context.config_loader, self.config, jobs)

        if isinstance(self.launcher, BasicLauncher):  # in this process: reuse what was composed
            self.launcher.hydra_context = HydraContext(
                config_loader=sweep.ComposedOnce(self.hydra_context.config_loader, jobs, configs),
                callbacks=self.hydra_context.callbacks)

        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        results: List[Any] = []
        with sweep.parent_run(self.config, configs) as (_, to_launch):
            size = self.max_batch_size or len(to_launch) or 1
            for start in range(0, len(to_launch), size):
                batch = [jobs[i] for i in to_launch[start : start + size]]
                results.extend(self.launcher.launch(batch, initial_job_idx=start))
            failures = sweep.failures_error(results)
        if failures:
            raise failures
        return [results]
