"""Successive halving inside a batch (Jamieson and Talwalkar, AISTATS 2016; Li et al.'s ASHA,
MLSys 2020): at each rung, an epoch, the batch's running points are ranked by a metric they
record and only the best fraction go on; the others stop there.

A pruned point costs nothing after its rung: `runner.descent.loop` starts the engine again from
where it stood (`runner.engines.State`) with the kept points alone, so the work after a rung is
that of the points kept. Points that diverged before a rung are not ranked (they have stopped).

    hydra.sweeper.prune.rungs=[10,30,90]    # judge at these epochs (hydra.sweeper.batch=true)
    hydra.sweeper.prune.keep=0.333          # keep the best third of the running points at each
    hydra.sweeper.prune.metric=val_loss     # by this metric at the rung (default: loss)

The sweeper hands each batch job these settings as `batch.prune`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from runner.descent.outcomes import UNRANKED, higher_is_better
from runner.errors import ConfigError

LOSS = "loss"


@dataclass(frozen=True)
class Prune:
    rungs: tuple[int, ...]  # epochs, increasing, each before the last
    keep: float  # the fraction of the running points each rung keeps, in (0, 1)
    metric: str = LOSS  # what ranks them: the loss, or a measure the run records (val_loss, ...)

    @property
    def better_high(self) -> bool:
        return higher_is_better(self.metric)

    def survivors(self, values: np.ndarray, running: np.ndarray) -> np.ndarray:
        """The indices of the running points a rung keeps, ascending: the best ceil(keep × running)
        by `values` (one per point; NaN ranks last), at least one.

        >>> Prune((5,), 0.5).survivors(np.array([3.0, 1.0, np.nan, 2.0, 0.5]), np.array([0, 1, 2, 3]))
        array([1, 3])
        >>> Prune((5,), 0.3, "val_accuracy").survivors(np.array([0.9, 0.7, 0.95]), np.arange(3))
        array([2])
        """
        count = max(1, math.ceil(self.keep * len(running) - 1e-9))
        scores = values[running].astype(np.float64)
        if self.better_high:
            scores = -scores
        order = np.argsort(np.where(np.isnan(scores), np.inf, scores), kind="stable")
        return np.sort(running[order[:count]])


@dataclass(frozen=True)
class Rung:
    """What one rung did: at `epoch`, `running` points were ranked and `kept` went on; the
    metric's best value among them and the last kept one's (the bar to pass)."""

    epoch: int
    running: int
    kept: int
    best: float
    bar: float


def from_config(cfg: Any, epochs: int, batched: bool, metrics: Sequence[str]) -> Optional[Prune]:
    """The config's `batch.prune` (None: no pruning) checked against the run: `metrics` are the
    measures it records each epoch beside its loss. A ConfigError names the key and what is allowed."""
    if cfg is None or cfg.get("rungs") is None:
        return None
    if not batched:
        raise ConfigError("batch.prune prunes the points of a batch: run a batched sweep (hydra.sweeper.batch=true "
                          "with hydra.sweeper.prune.rungs=[...]), or leave it unset")
    rungs = list(cfg.rungs)
    if not rungs or not all(isinstance(r, int) and not isinstance(r, bool) for r in rungs) \
            or any(b <= a for a, b in zip(rungs, rungs[1:])) or rungs[0] < 1 or rungs[-1] >= epochs:
        raise ConfigError(f"hydra.sweeper.prune.rungs={rungs} is not allowed: increasing epochs from 1 to "
                          f"{epochs - 1} (epochs={epochs}), e.g. [{max(1, epochs // 9)},{max(2, epochs // 3)}]")
    keep = cfg.get("keep")
    if not isinstance(keep, (int, float)) or not 0 < keep < 1:
        raise ConfigError(f"hydra.sweeper.prune.keep={keep} is not allowed: a fraction in (0, 1), of the running "
                          f"points each rung keeps")
    ranked = [LOSS, *(m for m in metrics if m not in UNRANKED)]
    metric = cfg.get("metric") or LOSS
    if metric not in ranked:
        raise ConfigError(f"hydra.sweeper.prune.metric={metric} is not a metric this run records each epoch: "
                          f"allowed are {', '.join(ranked)}")
    return Prune(tuple(rungs), float(keep), metric)
