"""The typed schema of a runner config, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `runner_schema` first in its defaults, so every YAML file and every
command-line override is merged into these dataclasses: a wrong type (`lr=abc`), a misspelt
key (`lrr=0.1`) or a bad enum value (`device=gpu`) fails while Hydra composes the config,
before anything is computed or logged.

Types cannot say "greater than zero"; `check_ranges` does, right after composition, for one
run's values or for arrays of a batch's values (one per point) alike.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from enum import Enum
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from runner.descent.optimizers import HYPERPARAMETERS
from runner.descent.schedules import PARAMETERS as SCHEDULE_PARAMETERS
from runner.errors import ConfigError


class Refused(CompactHydraException):
    """A ConfigError on its way out through Hydra, which prints this kind as one line."""


def reported(function: Callable) -> Callable:
    """`function`, with any ConfigError it raises turned into one Hydra prints as one line."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ConfigError as error:
            raise Refused(str(error)) from None

    return wrapper


class Device(Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"  # the GPU when the backend sees one, else the CPU


class DType(Enum):
    float32 = "float32"
    float64 = "float64"


@dataclass
class BackendConfig:
    """Which engine computes the gradient: the module `runner.engines.<name>` unless `module` says."""

    name: str = MISSING
    module: Optional[str] = None


@dataclass
class LossConfig:
    """A loss of the parameter `x`, written as expressions (see `runner.problems.losses`)."""

    name: str = MISSING
    value: str = MISSING  # e.g. "x**2"
    # The hand-written derivative used by backend=numpy: "2*x", or a list with one partial
    # derivative per coordinate when `dim` is set; null: worked out symbolically.
    grad: Any = None
    dim: Optional[int] = None  # a fixed number of coordinates x[0], x[1], ...; null: any shape
    params: Dict[str, float] = field(default_factory=dict)  # constants the expressions may use
    minimiser: Any = None  # a number, a list (one per coordinate) or an expression of params
    curvature: Any = None  # largest 2nd derivative at the minimiser: GD is stable for lr < 2/L
    expr: Optional[str] = None  # loss=expr: the expression typed on the command line
    online: Optional[List[str]] = None  # an online loss: f_t = online[t mod n], one step each
    domain: Optional[List[float]] = None  # [low, high]: every update projected onto it


@dataclass
class DataConfig:
    """A dataset a model is trained on, and how it is prepared (see `runner.problems.datasets`);
    the synthetic problem's own keys are null for the others."""

    name: str = MISSING
    validation: float = MISSING  # the fraction of rows held out
    split_seed: int = MISSING
    standardize: bool = MISSING
    intercept: bool = MISSING
    rows: Optional[int] = None
    features: Optional[int] = None
    condition: Optional[float] = None
    noise: Optional[float] = None
    seed: Optional[int] = None


@dataclass
class ModelConfig:
    """A model whose parameters are x, trained on `data` (see `runner.problems.models`)."""

    name: str = MISSING
    l2: float = MISSING  # the L2 penalty's strength, (l2 / 2) |w|^2, the intercept and biases left out
    hidden: Optional[List[int]] = None  # model=mlp: the hidden layers' sizes
    activation: Optional[str] = None  # model=mlp: tanh | relu


# The update rule (see `runner.descent.optimizers`): its name, and a field per hyperparameter under
# `optimizer.` (lr is the config's own); a rule reads only its own.
OptimizerConfig = make_dataclass("OptimizerConfig", [("name", str, MISSING), *(
    (name, Optional[float], None) for name, h in HYPERPARAMETERS.items() if h.key == f"optimizer.{name}")])


# The learning rate's schedule (see `runner.descent.schedules`): its name, the spacing of a ramp,
# and a field per parameter under `schedule.`; a schedule reads only its own.
ScheduleConfig = make_dataclass("ScheduleConfig", [("name", str, MISSING), ("spacing", Optional[str], None), *(
    (name, Optional[float], None) for name in SCHEDULE_PARAMETERS)])


# The run's settings: their types here, their values (and what each means) in conf/config.yaml,
# the one place that sets a default; `defaults()` reads them back for a config that lacks a key.

@dataclass
class StopConfig:
    tolerance: float = MISSING
    diverge_above: float = MISSING


@dataclass
class MlflowConfig:
    tracking_uri: Optional[str] = MISSING
    experiment_name: str = MISSING
    max_logged_steps: Optional[int] = MISSING


@dataclass
class PruneConfig:  # set by the runner's sweeper from hydra.sweeper.prune (runner.descent.pruning)
    rungs: Optional[List[int]] = MISSING
    keep: Optional[float] = MISSING
    metric: Optional[str] = MISSING


@dataclass
class BatchConfig:
    sweep: List[str] = MISSING  # set by the runner's sweeper (hydra.sweeper.batch=true)
    trajectory_mb: int = MISSING
    spread: bool = MISSING  # with seed batched: mean ± std over the seeds of each setting
    prune: PruneConfig = field(default_factory=PruneConfig)


@dataclass
class RunnerConfig:
    backend: BackendConfig = MISSING
    loss: LossConfig = MISSING
    model: Optional[ModelConfig] = None  # model=NAME: x is its parameters, the loss its own on data
    data: Optional[DataConfig] = None
    optimizer: OptimizerConfig = MISSING
    schedule: Optional[ScheduleConfig] = None
    x_start: Any = MISSING  # a number, or a list: one number per coordinate
    dim: Optional[int] = MISSING
    epochs: int = MISSING
    batch_size: Optional[int] = MISSING
    lr: float = MISSING
    device: Device = MISSING
    dtype: DType = MISSING
    stop: StopConfig = field(default_factory=StopConfig)
    seed: int = MISSING
    skip_done: bool = MISSING
    sharpness_every: Optional[int] = MISSING
    sharpness_iterations: int = MISSING
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # Hydra's config_path: the project's conf/


def defaults() -> DictConfig:
    """The run's settings as conf/config.yaml sets them, typed (its defaults list, Hydra's own
    settings and the groups left out): what a config recorded before a key existed is
    completed with (`runner.reproduce`)."""
    values = OmegaConf.load(CONF_DIR / "config.yaml")
    for key in ("defaults", "hydra"):
        values.pop(key, None)
    return OmegaConf.merge(OmegaConf.structured(RunnerConfig), values)


def register() -> None:
    ConfigStore.instance().store(name="runner_schema", node=RunnerConfig)


def check_ranges(cfg: DictConfig, points: Optional[Mapping[str, np.ndarray]] = None) -> None:
    """Raise ConfigError naming the key and what is allowed, for values no type can exclude.

    `points` holds a batch's values of its batched keys, one per point (x_start: one row of
    coordinates per point): each is checked like the config's own value, and the error names the
    value of the first point that fails, and the point (`ConfigError.point`).
    """
    points = points or {}

    def check(key: str, ok: Callable[[np.ndarray], np.ndarray], allowed: str) -> None:
        if key in points:
            values, shown = points[key], lambda i: _shown(points[key][i])
        elif (given := OmegaConf.select(cfg, key)) is None:
            return
        else:
            values = np.array([start_point(given) if key == "x_start" else given], dtype=np.float64)
            shown = lambda i: str(given)  # noqa: E731 - as the config holds it
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~ok(values))
        if bad.size:
            point = int(bad[0])
            raise ConfigError(f"{key}={shown(point)} is not allowed: {allowed}",
                              point=point if key in points else None)

    if cfg.epochs < 0:
        raise ConfigError(f"epochs={cfg.epochs} is not allowed: epochs must be an integer >= 0")
    positive = (lambda v: np.isfinite(v) & (v > 0))
    for h in (*HYPERPARAMETERS.values(), *SCHEDULE_PARAMETERS.values()):
        check(h.key, h.allowed, f"{h.key} must be {h.says}")
    if cfg.sharpness_every is not None and cfg.sharpness_every < 1:
        raise ConfigError(f"sharpness_every={cfg.sharpness_every} is not allowed: an integer >= 1 (measure the "
                          f"sharpness every that many epochs), or null (never)")
    if cfg.sharpness_iterations < 1:
        raise ConfigError(f"sharpness_iterations={cfg.sharpness_iterations} is not allowed: an integer >= 1 "
                          f"(power iterations a measurement)")
    if cfg.dim is not None and cfg.dim < 1:
        raise ConfigError(f"dim={cfg.dim} is not allowed: dim must be an integer >= 1, or null")
    if cfg.mlflow.max_logged_steps is not None and cfg.mlflow.max_logged_steps < 2:
        raise ConfigError(f"mlflow.max_logged_steps={cfg.mlflow.max_logged_steps} is not allowed: "
                          f"it must be an integer >= 2 (the first and the last step), or null for all")
    if cfg.batch.trajectory_mb < 0:
        raise ConfigError(f"batch.trajectory_mb={cfg.batch.trajectory_mb} is not allowed: it must be an integer >= 0")
    check("model.l2", lambda v: np.isfinite(v) & (v >= 0), "it must be a finite number >= 0")
    check("stop.tolerance", positive, "stop.tolerance must be a finite number > 0")
    check("stop.diverge_above", positive, "stop.diverge_above must be a finite number > 0")
    check("x_start", lambda v: np.all(np.isfinite(v), axis=1),
          "x_start must be a finite number or a list of finite numbers")
    check("x_start", lambda v: np.all(np.abs(v) <= cfg.stop.diverge_above, axis=1),
          f"|x_start| must not exceed stop.diverge_above={cfg.stop.diverge_above}")


def _shown(value: np.ndarray) -> str:
    """A point's value as the config would print it.

    >>> _shown(np.float64(-0.1)), _shown(np.array([1.0, np.nan])), _shown(np.array([np.inf]))
    ('-0.1', '[1.0, nan]', 'inf')
    """
    if np.ndim(value) and len(value) > 1:
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(float(np.asarray(value).reshape(-1)[0]))


def start_point(x_start: Any) -> list[float]:
    """x_start as a list of finite numbers (one number for a scalar start), or a ConfigError.

    >>> start_point(5), start_point([1, -2.5])
    ([5.0], [1.0, -2.5])
    """
    values = list(x_start) if isinstance(x_start, (list, tuple, ListConfig)) else [x_start]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if not numbers or not all(math.isfinite(v) for v in numbers) or any(isinstance(v, bool) for v in values):
        raise ConfigError(f"x_start={x_start} is not allowed: x_start must be a finite number "
                          f"or a list of finite numbers")
    return numbers
