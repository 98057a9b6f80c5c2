"""Search: Optuna picks the values of some keys, each trial a job (and MLflow child run) of a sweep.

The runner's sweeper (`hydra_plugins/runner_sweeper`) does it when `hydra.sweeper.search` is
set (`n_trials`, `n_jobs`, `sampler`, `seed`): it asks Optuna
for a batch of trials, launches them as Hydra jobs through whatever launcher is configured,
and tells Optuna each job's final loss. The search space is written in Hydra's own sweep
syntax, in `hydra.sweeper.params` or on the command line:

    lr: tag(log, interval(0.001, 0.5))     a float, sampled on a log scale
    optimizer.momentum: interval(0, 0.95)  a float
    epochs: range(100, 1000, 100)          an integer (stop excluded, as in Python)
    optimizer: sgd,momentum,adam           one of these (also `choice(...)`)

Hydra's published Optuna sweeper pins optuna < 3, whose SQLite storage breaks on the
SQLAlchemy 2 that MLflow needs; this is a small sweeper of the runner's own on current Optuna,
with the study held in memory (the trials themselves are MLflow runs).
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from typing import Any, Mapping, Optional, Sequence

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobStatus

from runner.errors import ConfigError

log = logging.getLogger("runner")

SAMPLERS = ("tpe", "random")
FAILED = optuna.trial.TrialState.FAIL  # what Optuna is told of a trial whose job failed


def check_settings(n_trials: int, n_jobs: int, sampler: str) -> None:
    """One line naming the sweeper key and what it allows, for a bad setting.

    >>> check_settings(10, 1, "grid")
    Traceback (most recent call last):
    runner.errors.ConfigError: hydra.sweeper.search.sampler=grid: allowed values are tpe, random
    """
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"hydra.sweeper.search.n_trials={n_trials}: must be an integer >= 1")
    if not isinstance(n_jobs, int) or n_jobs < 1:
        raise ConfigError(f"hydra.sweeper.search.n_jobs={n_jobs}: must be an integer >= 1 (trials launched at once)")
    if sampler not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.search.sampler={sampler}: allowed values are {', '.join(SAMPLERS)}")


def split(parser: OverridesParser, params: Optional[Mapping[str, str]], arguments: Sequence[str]
          ) -> tuple[dict[str, optuna.distributions.BaseDistribution], list[str]]:
    """The search space (from `params` and sweep overrides on the command line) and the fixed
    overrides every trial gets."""
    overrides = parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()] + list(arguments))
    space, fixed = {}, []
    for override in overrides:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(override.input_line)
    if not space:
        raise ConfigError("hydra.sweeper.search.n_trials is set but nothing is searched: give a key a range, "
                          "e.g. lr='tag(log, interval(0.001, 0.5))', or list them in hydra.sweeper.params")
    return space, fixed


def distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one sweep override.

    >>> distribution(OverridesParser.create().parse_override("lr=tag(log, interval(0.001, 0.5))"))
    FloatDistribution(high=0.5, log=True, low=0.001, step=None)
    """
    try:
        return _distribution(override)
    except ValueError as error:  # Optuna's own checks, e.g. a log scale that reaches 0
        raise ConfigError(f"{override.get_key_element()}: {error}") from None


def _distribution(override: Override) -> optuna.distributions.BaseDistribution:
    value, key = override.value(), override.get_key_element()
    log = "log" in getattr(value, "tags", ())
    if isinstance(value, IntervalSweep):
        if value.start >= value.end:
            raise ConfigError(f"{key}: interval({value.start}, {value.end}) is empty")
        return optuna.distributions.FloatDistribution(value.start, value.end, log=log)
    if isinstance(value, RangeSweep):
        if not all(float(v).is_integer() for v in (value.start, value.stop, value.step)) or value.step <= 0:
            raise ConfigError(f"{key}: a searched range() takes integers and a positive step")
        start, stop, step = int(value.start), int(value.stop), int(value.step)
        last = start + (stop - 1 - start) // step * step  # range() leaves `stop` out; Optuna includes `high`
        if last < start:
            raise ConfigError(f"{key}: range({start}, {stop}, {step}) is empty")
        return optuna.distributions.IntDistribution(start, last, log=log, step=1 if log else step)
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(value.list)
    raise ConfigError(f"{key}: a search takes interval(), range() or a choice, not {override.input_line}")


def extremes(space: Mapping[str, optuna.distributions.BaseDistribution], start: Mapping[str, Any]
             ) -> list[dict[str, Any]]:
    """Points of the space to check before any trial runs: `start` with one key moved to each end
    of its range (each choice for a choice), so that a value the config refuses anywhere in the
    space is an error before anything is recorded, not a failed trial in the middle.

    >>> extremes({"lr": optuna.distributions.FloatDistribution(0.1, 0.5)}, {"lr": 0.3})
    [{'lr': 0.1}, {'lr': 0.5}]
    """
    points = []
    for key, dist in space.items():
        ends = dist.choices if isinstance(dist, optuna.distributions.CategoricalDistribution) else (dist.low, dist.high)
        points += [{**start, key: value} for value in ends]
    return points


def overrides(params: Mapping[str, Any]) -> list[str]:
    """`key=value` for each value; floats in full (repr), so the run holds the exact value.

    >>> overrides({"lr": 0.1, "optimizer": "adam"})
    ['lr=0.1', 'optimizer=adam']
    """
    return [f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}" for key, value in params.items()]


def create_study(sampler: str, seed: int) -> optuna.Study:
    """An in-memory study minimising the final loss; with the same seed, the same trials in the
    same order."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    return optuna.create_study(direction="minimize", sampler=samplers[sampler](seed=seed))


def objective(job_return: Any) -> Optional[float]:
    """What Optuna is told of a finished job: its final loss; +inf for a run that diverged to a
    non-finite loss (a poor trial, not a failed one); None when the job failed."""
    if job_return.status != JobStatus.COMPLETED:
        return None
    return _finite_or_inf(float(job_return.return_value))


def recorded_objective(record: Any) -> float:
    """What Optuna is told of a trial an earlier search recorded (a runner.records.tracking.RunRecord)."""
    return _finite_or_inf(record.metrics.get("final_loss", math.inf))


def _finite_or_inf(value: float) -> float:
    """MLflow keeps NaN and stores inf as the largest float: both are +inf to the search.

    >>> _finite_or_inf(1.5), _finite_or_inf(float("nan")), _finite_or_inf(sys.float_info.max)
    (1.5, inf, inf)
    """
    return value if math.isfinite(value) and value < sys.float_info.max else math.inf


def record_best(parent: Any, study: optuna.Study) -> None:
    """The best trial on the sweep's parent run (params `best.KEY`, metric `best_final_loss`,
    tag `best_trial`), every trial in `search/trials.csv` beside the report, and one line."""
    folder = parent.folder / "search"
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for t in study.trials for k in t.params))
    with (folder / "trials.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["trial", *keys, "final_loss", "state"])
        for t in study.trials:
            writer.writerow([t.number, *(t.params.get(k, "") for k in keys),
                             "" if t.value is None else t.value, t.state.name])
    parent.store.log_artifacts(parent.run_id, [], {"search": folder})
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        log.warning("Search: no trial finished; nothing to call best")
        return
    best = study.best_trial
    parent.store.log_params(parent.run_id, {f"best.{key}": value for key, value in best.params.items()})
    parent.store.log_metrics(parent.run_id, {"best_final_loss": best.value})
    parent.store.set_tags(parent.run_id, {"best_trial": str(best.number)})
    log.info("Search: best of %d trials is #%d, %s: final loss %.6g", len(study.trials), best.number,
             " ".join(overrides(best.params)), best.value)
