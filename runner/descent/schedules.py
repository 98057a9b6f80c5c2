"""Learning-rate schedules: the factor of `lr` each epoch's update is taken at.

    schedule=constant   1
    schedule=step       factor ** floor(t / every)                        (torch's StepLR)
    schedule=cosine     floor + (1 - floor) (1 + cos(pi t / E)) / 2         (CosineAnnealingLR)
    schedule=warmup     start + (1 - start) t / warmup for t < warmup, then 1       (LinearLR)
    schedule=wsd        warm-up as above, stable at 1, then in the last `decay` epochs linearly
                        down to `floor` at t = E (warm-up, stable, decay)
    schedule=ramp       from `start` at t = 0 to `end` at t = E, linearly or (`spacing:
                        geometric`) evenly on a log scale: the LR range test's ramp

t is the epoch whose row comes before the update (0 .. E, E = `epochs`): the update from x_t to
x_{t+1} is taken at lr times the factor at t, the lr a run records as its metric `lr` at step
t; an epoch of mini-batches shares its epoch's factor. Every parameter is a config key
(`schedule.every`, ...) that a batch may vary, one value per point: the factors are worked out
on the host, (rows, points), and each engine takes each row's learning rates as it takes a
batch's mini-batch order (`engines.Problem.learning_rates`), in its compiled loop as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import numpy as np

from runner.descent.optimizers import Hyperparameter
from runner.errors import ConfigError

CONSTANT = "constant"
LR = "lr"  # the measure: the learning rate each row's update was taken at
SPACINGS = ("linear", "geometric")


def _at_least_one(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (values >= 1)


def _positive(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (values > 0)


def _not_negative(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (values >= 0)


def _unit(values: np.ndarray) -> np.ndarray:
    return (values >= 0) & (values <= 1)


# The schedules' parameters, each one config key under `schedule.` (null where a schedule does
# not read it), batchable as a rule's hyperparameters are.
PARAMETERS = {
    "every": Hyperparameter("schedule.every", _at_least_one, "a number of epochs >= 1"),
    "factor": Hyperparameter("schedule.factor", _positive, "a finite number > 0"),
    "warmup": Hyperparameter("schedule.warmup", _not_negative, "a number of epochs >= 0"),
    "decay": Hyperparameter("schedule.decay", _not_negative, "a number of epochs >= 0"),
    "start": Hyperparameter("schedule.start", _positive, "a finite number > 0"),
    "end": Hyperparameter("schedule.end", _positive, "a finite number > 0"),
    "floor": Hyperparameter("schedule.floor", _unit, "in [0, 1]"),
}


def _warm(t: np.ndarray, warmup: Any, start: Any) -> np.ndarray:
    """start + (1 - start) t / warmup before `warmup` epochs, 1 after (no warm-up: 1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = start + (1 - start) * t / warmup
    return np.where(t < warmup, rising, 1.0)


def constant(t: np.ndarray, p: Mapping[str, Any], epochs: int, spacing: str) -> np.ndarray:
    return np.ones_like(t)


def step(t: np.ndarray, p: Mapping[str, Any], epochs: int, spacing: str) -> np.ndarray:
    return np.power(p["factor"], np.floor(t / p["every"]))


def cosine(t: np.ndarray, p: Mapping[str, Any], epochs: int, spacing: str) -> np.ndarray:
    return p["floor"] + (1 - p["floor"]) * (1 + np.cos(np.pi * t / max(epochs, 1))) / 2


def warmup(t: np.ndarray, p: Mapping[str, Any], epochs: int, spacing: str) -> np.ndarray:
    return _warm(t, p["warmup"], p["start"])


def wsd(t: np.ndarray, p: Mapping[str, Any], epochs: int, spacing: str) -> np.ndarray:
    begins = epochs - p["decay"]
    with np.errstate(divide="ignore", invalid="ignore"):
        falling = 1 - (1 - p["floor"]) * (t - begins) / p["decay"]
    return np.where(t > begins, falling, _warm(t, p["warmup"], p["start"]))


def ramp(t: np.ndarray, p: Mapping[str, Any], epochs: int, spacing: str) -> np.ndarray:
    share = t / max(epochs, 1)
    if spacing == "geometric":
        return p["start"] * np.power(p["end"] / p["start"], share)
    return p["start"] + (p["end"] - p["start"]) * share


# Each schedule, and the parameters it reads.
SCHEDULES: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...]]] = {
    CONSTANT: (constant, ()),
    "step": (step, ("every", "factor")),
    "cosine": (cosine, ("floor",)),
    "warmup": (warmup, ("warmup", "start")),
    "wsd": (wsd, ("warmup", "start", "decay", "floor")),
    "ramp": (ramp, ("start", "end")),
}


@dataclass(frozen=True)
class Schedule:
    """A schedule of a run of `epochs` epochs; its parameters numbers, or arrays of one per point.

    >>> Schedule("step", 10, {"every": 4, "factor": 0.5}).factors(0, 11)[:, 0].tolist()
    [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    >>> Schedule("ramp", 4, {"start": 1e-3, "end": 10.0}, "geometric").factors(0, 5)[:, 0].round(6).tolist()
    [0.001, 0.01, 0.1, 1.0, 10.0]
    """

    name: str
    epochs: int
    parameters: Mapping[str, Any] = field(default_factory=dict)
    spacing: str = "linear"

    def factors(self, first: int, count: int) -> np.ndarray:
        """The factors of rows first .. first + count - 1: (count, 1), or (count, points) where a
        parameter holds one value per point."""
        function, reads = SCHEDULES[self.name]
        p = {name: np.asarray(self.parameters[name], dtype=np.float64) for name in reads}
        t = np.arange(first, first + count, dtype=np.float64)[:, None]
        values = function(t, {k: v.reshape(1, -1) for k, v in p.items()}, self.epochs, self.spacing)
        return np.broadcast_to(values, (count, max([1, *(v.size for v in p.values())]))).astype(np.float64)


def from_config(cfg: Any, epochs: int, values: Optional[Mapping[str, np.ndarray]] = None) -> Optional[Schedule]:
    """The schedule `cfg` (the config's `schedule` node) names for a run of `epochs` epochs,
    its batched parameters from `values` (key -> one value per point); None for the constant
    one. A ConfigError names the key and what is allowed."""
    values = values or {}
    if cfg is None or cfg.name == CONSTANT:
        return None
    if cfg.name not in SCHEDULES:
        raise ConfigError(f"schedule={cfg.name} is not a schedule: allowed are {', '.join(SCHEDULES)}")
    spacing = cfg.get("spacing") or "linear"
    if spacing not in SPACINGS:
        raise ConfigError(f"schedule.spacing={spacing} is not allowed: {'|'.join(SPACINGS)}")
    reads = SCHEDULES[cfg.name][1]
    parameters = {}
    for name in reads:
        key = PARAMETERS[name].key
        value = values.get(key, cfg.get(name))
        if value is None:
            raise ConfigError(f"schedule={cfg.name} needs {key}: {PARAMETERS[name].says}")
        parameters[name] = value
    for name in ("warmup", "decay"):
        if name in parameters and np.any(np.asarray(parameters[name]) > epochs):
            raise ConfigError(f"{PARAMETERS[name].key}={_shown(parameters[name], epochs)} is not allowed: at most "
                              f"epochs={epochs}, the run's length")
    if cfg.name == "wsd" and np.any(np.asarray(parameters["warmup"]) + np.asarray(parameters["decay"]) > epochs):
        raise ConfigError(f"schedule.warmup + schedule.decay is more than epochs={epochs}: the warm-up and the "
                          f"decay must fit in the run")
    return Schedule(cfg.name, epochs, parameters, spacing)


def _shown(value: Any, limit: int) -> str:
    """The first value over `limit`, as the config holds it."""
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    first = values[np.flatnonzero(values > limit)[0]]
    return str(int(first)) if float(first).is_integer() else str(float(first))


def range_test(lr: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """The LR range test (Smith, "Cyclical Learning Rates for Training Neural Networks", 2017) read
    off a run whose lr ramps up: (the suggested lr, where the loss falls fastest, the steepest
    drop of log loss from one epoch to the next; the lr where the loss starts to blow up, that of
    the first update after which it rose), NaN where there is none. `lr[t]` is the learning rate
    of the update from row t to row t + 1. On y = x^2, x <- (1 - 2 lr) x: the loss falls fastest
    at lr = 1/2 and rises from lr = 1 = 2/L on.

    >>> lr = np.array([0.1, 0.3, 0.45, 0.9, 1.1, 1.3])
    >>> x = np.cumprod(np.concatenate([[5.0], 1 - 2 * lr[:-1]]))
    >>> range_test(lr, x * x)
    (0.45, 1.1)
    """
    loss = np.asarray(loss, dtype=np.float64)
    before, after = loss[:-1], loss[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        fall = np.where(before > 0, np.log(after) - np.log(before), np.nan)  # -inf where it lands on 0
    fall[~np.isfinite(after)] = np.inf  # the update that diverged rose
    steps = lr[:len(fall)]
    suggested = math.nan if np.isnan(fall).all() else float(steps[np.nanargmin(fall)])
    rising = np.flatnonzero(fall > 0)
    return suggested, float(steps[rising[0]]) if rising.size else math.nan
