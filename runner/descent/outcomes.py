"""How each point of a descent ended, read off its rows as they are computed.

The same code serves a single run (one point) and a batch of a million: `Tally` takes the rows
of every point piece by piece, so no point's whole trajectory need be kept, and `Summary` holds
one value per point of each summary quantity (the definitions below, and nowhere else).

- outcome: `diverged` when the point's loss became non-finite or |x| passed the bound (the
  point stops there: that row is its last), `pruned` when a rung of a pruned batch stopped it
  (`runner.descent.pruning`; that rung's row is its last), else `converged` when its last
  gradient norm is within the tolerance, else `not_converged`;
- steps_to_tolerance: the first row whose gradient norm is within the tolerance;
- rate: the measured convergence rate, for a loss that knows its minimiser x*: the geometric
  mean, per epoch, of the contraction (or growth, above 1) of e_k = |x_k - x*| over the epochs
  before e_k settles at the dtype's resolution (`resolution`): (e_K / e_0)^(1/K), K the last
  row at which e_K is above it (a row of exactly x* that momentum carries on past does not end
  the measurement). When every row after the first is there, the rate is e_1 / e_0 (0 when x
  lands on x* for good, as at lr = 0.5 on y = x^2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from runner.descent.schedules import LR
from runner.descent.sharpness import NAME as SHARPNESS
from runner.engines import Rows, alive

CONVERGED, NOT_CONVERGED, DIVERGED, PRUNED = "converged", "not_converged", "diverged", "pruned"
OUTCOMES = (CONVERGED, NOT_CONVERGED, DIVERGED, PRUNED)  # in the order tables count them; pruned last, only in pruned batches

# The summary quantities a run records (as metrics) and a batch (as columns of points.csv),
# compared by runner.reproduce. A point leaves out steps_to_tolerance when it never got within
# the tolerance, diverged_at when it did not diverge, pruned_at when no rung stopped it, and rate
# when it is unknown.
QUANTITIES = ("final_loss", "final_grad_norm", "epochs_run", "steps_to_tolerance", "diverged_at", "pruned_at", "rate")


# Measures no value of which is better than another: their summary is their final value alone
# (the sharpness's, measured every few epochs, the last measured).
UNRANKED = (LR, SHARPNESS)


def measure_columns(names: Sequence[str]) -> list[str]:
    """What the per-epoch measures add to the summary: each one's final value and its best over
    the epochs (the highest of an accuracy, else the lowest); of the unranked, the final alone.

    >>> measure_columns(["val_loss", "val_accuracy", "lr", "sharpness"])
    ['final_val_loss', 'best_val_loss', 'final_val_accuracy', 'best_val_accuracy', 'final_lr', 'final_sharpness']
    """
    return [f"{kind}_{name}" for name in names for kind in (("final",) if name in UNRANKED else ("final", "best"))]


def higher_is_better(name: str) -> bool:
    """Whether a measure (or its summary, `final_val_accuracy`) is best at its highest: an accuracy."""
    return name.endswith("accuracy")


# |x - x*| is measured until it comes within this many units of the last place of x* (or, for
# x* = 0, of the dtype's smallest normal number / eps): below that, rounding, not the rule,
# decides the ratio from one epoch to the next.
RESOLUTION_ULPS = 1024


def resolution(dtype: str, minimiser_norm: np.ndarray) -> np.ndarray:
    """The distance from x* below which a rate is no longer measured, per point.

    >>> resolution("float64", np.array([0.0, 1.0])).tolist()
    [1.0020841800044864e-292, 2.2737367544323206e-13]
    """
    info = np.finfo(dtype)
    return RESOLUTION_ULPS * float(info.eps) * minimiser_norm + float(info.tiny) / float(info.eps)


@dataclass(frozen=True)
class Summary:
    """One value per point of each quantity; -1 or NaN where a point has none."""

    outcome: np.ndarray  # str labels
    final_x: np.ndarray  # (points, *recorded shape)
    final_loss: np.ndarray
    final_grad_norm: np.ndarray
    epochs_run: np.ndarray  # the point's last row
    steps_to_tolerance: np.ndarray  # -1: never within the tolerance
    diverged_at: np.ndarray  # -1: did not diverge
    pruned_at: np.ndarray  # the epoch of the rung that stopped the point; -1: none
    rate: np.ndarray  # NaN: unknown
    measured: Mapping[str, np.ndarray] = field(default_factory=dict)  # `measure_columns`: one value per point

    def values(self, point: int) -> dict[str, float]:
        """The point's summary quantities, leaving out those it has none of, then the final and
        best of what a model measures.

        >>> s = Summary(np.array(["converged"]), np.array([0.0]), np.array([0.0]), np.array([0.0]),
        ...             np.array([15]), np.array([13]), np.array([-1]), np.array([-1]), np.array([0.4]))
        >>> s.values(0)
        {'final_loss': 0.0, 'final_grad_norm': 0.0, 'epochs_run': 15, 'steps_to_tolerance': 13, 'rate': 0.4}
        """
        out = {}
        for name in QUANTITIES:
            value = getattr(self, name)[point].item()
            if (isinstance(value, int) and value >= 0) or (isinstance(value, float) and not (
                    name == "rate" and np.isnan(value))):
                out[name] = value
        for name, values in self.measured.items():
            if np.isfinite(values[point]):
                out[name] = float(values[point])
        return out


def distance(difference: np.ndarray) -> np.ndarray:
    """The Euclidean norm over the last axis, scaled so that it neither underflows nor overflows
    where the squares would (|x - x*| is measured down to 1e-292 in float64).

    >>> distance(np.array([[3e-200, 4e-200], [0.0, 0.0]])).tolist()
    [5e-200, 0.0]
    """
    largest = np.max(np.abs(difference), axis=-1)
    if difference.shape[-1] == 1:
        return largest
    scale = np.where(largest > 0, largest, 1.0)
    return largest * np.sqrt(np.sum(np.square(difference / scale[..., None]), axis=-1))


def _first(mask: np.ndarray) -> np.ndarray:
    """For (rows, points): each point's first row where `mask` holds, or the number of rows.

    >>> _first(np.array([[False, True], [True, True], [False, False]])).tolist()
    [1, 0]
    """
    first = mask.argmax(axis=0)
    return np.where(mask[first, np.arange(mask.shape[1])], first, len(mask))


class _Columns:
    """The points whose rows a piece holds, column by column: every point (`points` None), or
    those at the indices `points`. `at(mask)` indexes the tally's per-point arrays where a mask
    over the columns holds; `at.read(array)` is the columns' values of a per-point array."""

    def __init__(self, points: Optional[np.ndarray]) -> None:
        self.every = slice(None) if points is None else points
        self.points = points

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        return mask if self.points is None else self.points[mask]

    def read(self, array: np.ndarray) -> np.ndarray:
        return array if self.points is None else array[self.points]


class Tally:
    """Builds the Summary of a batch from its rows, piece by piece (`add`, then `summary`)."""

    def __init__(self, points: int, tolerance: float, bound: float, dtype: str,
                 minimiser: Optional[np.ndarray] = None, by_norm: bool = False,
                 measure_names: Sequence[str] = ()) -> None:
        """`minimiser`: x* broadcastable against one row of x (points, *recorded shape); with
        `by_norm` x is recorded by its head and norms, and |x - x*| is the norm of x where x* = 0,
        else the distance of the head (the same asymptotic rate: the slowest mode's)."""
        self.tolerance, self.bound = tolerance, bound
        self.minimiser, self.by_norm = minimiser, by_norm
        self.rows = 0
        self.alive = np.ones(points, bool)
        self.diverged_at = np.full(points, -1)
        self.pruned_at = np.full(points, -1)
        self.steps = np.full(points, -1)
        self.last = np.full(points, -1)
        self.final_x: Optional[np.ndarray] = None
        self.final_loss = np.full(points, np.nan)
        self.final_grad_norm = np.full(points, np.nan)
        # the rate: e at rows 0 and 1, and the last row at which e was above the resolution
        self.resolution = None if minimiser is None else resolution(
            dtype, np.sqrt(np.sum(np.square(minimiser.reshape(-1, np.prod(minimiser.shape[1:], dtype=int))), axis=1)))
        self.e0, self.e1 = np.full(points, np.nan), np.full(points, np.nan)
        self.k_last, self.e_last = np.full(points, -1), np.full(points, np.nan)
        self.measure_names = tuple(measure_names)
        self.measured_final = np.full((points, len(measure_names)), np.nan)
        self.measured_best = np.full((points, len(measure_names)), np.nan)

    def prune(self, points: np.ndarray) -> None:
        """Stop `points` at the last row added: a rung of a pruned batch did not keep them."""
        self.alive[points] = False
        self.pruned_at[points] = self.rows - 1

    def add(self, rows: Rows, points: Optional[np.ndarray] = None) -> None:
        """The next rows of every point, or of `points` alone (the indices of the rows' columns:
        a pruned batch's running points; the others have stopped)."""
        with np.errstate(over="ignore", invalid="ignore"):  # a diverged point's values overflow
            self._add(rows, _Columns(points))
        self.rows += len(rows)

    def _add(self, rows: Rows, at: "_Columns") -> None:
        n, points = rows.loss.shape
        counted = at.read(self.alive).copy()  # points still running: their rows here count up to `last`
        first_bad = _first(~alive(rows.x, rows.loss, self.bound))
        diverged = counted & (first_bad < n)
        last = np.where(diverged, first_bad, n - 1)  # each point's last row in this piece
        self.diverged_at[at(diverged)] = self.rows + last[diverged]
        self.alive[at(diverged)] = False

        every = np.arange(points)
        grad_norm = self._grad_norm(rows)
        if self.final_x is None:
            self.final_x = np.full((len(self.alive), *rows.x.shape[2:]), np.nan, dtype=np.float64)
        self.final_x[at(counted)] = rows.x[last, every][counted]
        self.final_loss[at(counted)] = rows.loss[last, every][counted]
        self.final_grad_norm[at(counted)] = grad_norm[last, every][counted]
        self.last[at(counted)] = self.rows + last[counted]

        first_within = _first(grad_norm <= self.tolerance)
        hit = counted & (at.read(self.steps) < 0) & (first_within <= last)
        self.steps[at(hit)] = self.rows + first_within[hit]

        if self.resolution is not None:
            self._add_distances(rows, np.where(counted, last, -1), at)
        if rows.measured is not None:
            self._add_measures(rows.measured, counted, last, at)

    def _add_measures(self, measured: np.ndarray, counted: np.ndarray, last: np.ndarray, at: "_Columns") -> None:
        """Each measure's value at each point's last row so far, and its best over the rows that
        count; the sharpness's last value measured (NaN at the rows between measurements)."""
        n, points = measured.shape[:2]
        values = measured.astype(np.float64)
        counts = (np.arange(n)[:, None] <= last[None]) & counted[None]
        for m, name in enumerate(self.measure_names):
            if name == SHARPNESS:  # measured every few rows, NaN between: its last value measured
                taken = counts & ~np.isnan(values[..., m])
                has = taken.any(axis=0)
                latest = n - 1 - taken[::-1].argmax(axis=0)
                self.measured_final[at(has), m] = values[latest[has], np.flatnonzero(has), m]
                continue
            self.measured_final[at(counted), m] = values[last, np.arange(points), m][counted]
            if name in UNRANKED:
                continue
            column = np.where(counts & np.isfinite(values[..., m]), values[..., m], np.nan)
            if not np.isfinite(column).any():
                continue
            better = np.fmax if higher_is_better(name) else np.fmin
            piece = better.reduce(column, axis=0)  # NaN only where a point has no value here
            self.measured_best[at.every, m] = better(at.read(self.measured_best[:, m]), piece)

    def _grad_norm(self, rows: Rows) -> np.ndarray:
        if rows.norms is not None:
            return rows.norms[..., 1]
        if rows.grad.ndim == 2:  # a scalar parameter
            return np.abs(rows.grad)
        grad = rows.grad.reshape(*rows.loss.shape, -1).astype(np.float64)
        return np.sqrt(np.sum(np.square(grad), axis=-1))

    def _add_distances(self, rows: Rows, last: np.ndarray, at: "_Columns") -> None:
        """`last`: each point's last row in this piece that counts (-1: none)."""
        n, points = rows.loss.shape
        minimiser = at.read(self.minimiser)
        if self.by_norm and not self.minimiser.any():
            e = rows.norms[..., 0].astype(np.float64)
        elif rows.x.ndim == 2:  # a scalar parameter: |x - x*| in x's dtype, in place (the bulk of the work)
            e = rows.x - minimiser.astype(rows.x.dtype)
            np.abs(e, out=e)
        else:
            e = distance((rows.x.astype(np.float64) - minimiser).reshape(n, points, -1))
        for row, value in ((0, self.e0), (1, self.e1)):  # e_0 and e_1, in whichever piece they come
            if self.rows <= row < self.rows + n:
                value[at.every] = np.where(last >= row - self.rows, e[row - self.rows], np.nan)
        above = e > at.read(self.resolution).astype(e.dtype)
        above &= e < np.inf
        cut = np.flatnonzero(last < n - 1)  # points that diverged here, or before
        if cut.size:
            above[:, cut] &= np.arange(n)[:, None] <= last[cut]
        has = above.any(axis=0)
        last_above = n - 1 - above[::-1].argmax(axis=0)
        self.k_last[at(has)] = self.rows + last_above[has]
        self.e_last[at(has)] = e[last_above[has], np.flatnonzero(has)]

    def summary(self) -> Summary:
        outcome = np.where(self.diverged_at >= 0, DIVERGED, np.where(self.pruned_at >= 0, PRUNED, np.where(
            self.final_grad_norm <= self.tolerance, CONVERGED, NOT_CONVERGED)))
        measured = {}
        for m, name in enumerate(self.measure_names):
            measured[f"final_{name}"] = self.measured_final[:, m]
            if name not in UNRANKED:
                measured[f"best_{name}"] = self.measured_best[:, m]
        return Summary(outcome, self.final_x, self.final_loss, self.final_grad_norm, self.last,
                       self.steps, self.diverged_at, self.pruned_at.copy(), self._rate(), measured)

    def _rate(self) -> np.ndarray:
        rate = np.full(len(self.alive), np.nan)
        if self.resolution is None:
            return rate
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            start = (self.e0 > self.resolution) & np.isfinite(self.e0)
            over_epochs = start & (self.k_last >= 1)
            rate[over_epochs] = (self.e_last[over_epochs] / self.e0[over_epochs]) ** (1.0 / self.k_last[over_epochs])
            in_one = start & (self.k_last == 0) & np.isfinite(self.e1)
            rate[in_one] = self.e1[in_one] / self.e0[in_one]
        return rate
