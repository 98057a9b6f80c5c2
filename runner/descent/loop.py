"""The one loop every engine shares: a problem's rows computed piece by piece, each point's
summary tallied as they come, whole trajectories kept for as many points as memory allows.

    descent = descend(problem, engine, Loop(epochs=15, tolerance=1e-4))   # engine: runner.engines.NAME
    descent.summary.outcome               # one label per point
    descent.trajectory(0)                 # the first kept point's rows, as a Trajectory

An engine computes rows (`engine.start(problem)(count)`); everything else is here, written once
over the point axis, as the `Loop` says: the pieces (all rows at once when they fit `PIECE_BYTES`, ~100 pieces with a
progress bar), divergence (each point stops on its own: its rows after the one where it
diverged are not kept, and NaN in the kept arrays), pruning (`runner.descent.pruning`: at each
rung the engine goes on with the kept points alone), the summaries (`runner.descent.outcomes`), and the
trajectories kept (every point's, or past `loop.keep_bytes` an evenly spaced subset).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Mapping, Optional

import numpy as np

from runner.descent import schedules, sharpness
from runner.descent.outcomes import Summary, Tally
from runner.descent.pruning import LOSS, Prune, Rung
from runner.engines import CHECK_EVERY, Problem, Rows

# The rows of one piece, on the host, are at most this large: a million points of a scalar
# take 5 rows a piece, a single run all its rows at once.
PIECE_BYTES = 64 * 2**20
PROGRESS_PIECES = 100  # with a progress bar, a run is cut into about this many pieces


@dataclass(frozen=True)
class Loop:
    """The loop's inputs, beside the engine's problem: how many epochs, when a point counts as
    converged, how much of the trajectories to keep, and whom to tell how far it has come."""

    epochs: int
    tolerance: float  # converged: the gradient norm is at most this at the last row
    keep_bytes: Optional[int] = None  # whole trajectories kept: at most this many bytes (None: all)
    sharpness_every: Optional[int] = None  # measure the sharpness at epochs 0, K, 2K, ... (None: never)
    sharpness_iterations: int = 20  # power iterations per measurement (`runner.descent.sharpness`)
    prune: Optional[Prune] = None  # successive halving of a batch's points (None: every point runs to the end)
    progress: Optional[Callable[[int], None]] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Trajectory:
    """One point's gradient descent as plain data: row k holds x_k, the loss at x_k and the
    gradient at x_k.

    Row 0 is the starting point; a point that diverged stops at its first diverged row, so there
    are at most epochs + 1 rows. `x` and `grad` have the parameter's shape after the row axis.
    """

    x: np.ndarray
    loss: np.ndarray
    grad: np.ndarray
    device: str  # where the parameter actually lived, as the framework names it
    # For a parameter of more than RECORDED coordinates, x and grad hold the first RECORDED
    # ones, and these the norms of the whole vectors.
    x_norm: Optional[np.ndarray] = None
    whole_grad_norm: Optional[np.ndarray] = None
    # What a model measures each row beside its loss: train_loss, val_loss, val_accuracy.
    measured: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def grad_norm(self) -> np.ndarray:
        if self.whole_grad_norm is not None:
            return self.whole_grad_norm.astype(np.float64)
        return np.sqrt(np.sum(np.square(self.grad.reshape(len(self.grad), -1), dtype=np.float64), axis=1))

    def columns(self) -> dict[str, np.ndarray]:
        """One series per name, as metrics and the CSV name them.

        A scalar parameter gives `x`, `loss`, `grad`; a vector gives `x/0`, `x/1`, ..., `loss`,
        `grad/0`, `grad/1`, ... and `grad_norm`; one of more than RECORDED coordinates gives its
        first RECORDED coordinates, and `x_norm` too.
        """
        if self.x.ndim == 1:
            return {"x": self.x, "loss": self.loss, "grad": self.grad, **self.measured}
        x, grad = self.x.reshape(len(self.x), -1), self.grad.reshape(len(self.grad), -1)
        norms = {"grad_norm": self.grad_norm}
        if self.x_norm is not None:
            norms["x_norm"] = self.x_norm
        return {**{f"x/{i}": x[:, i] for i in range(x.shape[1])}, "loss": self.loss,
                **{f"grad/{i}": grad[:, i] for i in range(grad.shape[1])}, **norms, **self.measured}

    @classmethod
    def from_columns(cls, columns: Mapping[str, np.ndarray], device: str) -> "Trajectory":
        """The trajectory whose `columns()` these are (as trajectory.csv holds them), as float64;
        `step` is ignored, and every column beside x, loss, grad and their norms is a measure
        (a model's train_loss, val_loss, val_accuracy)."""
        def coordinates(name: str) -> np.ndarray:
            if name in columns:
                return np.asarray(columns[name], dtype=np.float64)
            keys = sorted((k for k in columns if k.startswith(f"{name}/")), key=lambda k: int(k.split("/")[1]))
            return np.stack([columns[k] for k in keys], axis=1).astype(np.float64)

        x_norm = columns.get("x_norm")  # present only where x and grad hold the first coordinates
        recorded = {"step", "x", "loss", "grad", "x_norm", "grad_norm"}
        measured = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()
                    if k not in recorded and not k.startswith(("x/", "grad/"))}
        return cls(x=coordinates("x"), loss=np.asarray(columns["loss"], dtype=np.float64), grad=coordinates("grad"),
                   device=device, x_norm=None if x_norm is None else np.asarray(x_norm, dtype=np.float64),
                   whole_grad_norm=None if x_norm is None else np.asarray(columns["grad_norm"], dtype=np.float64),
                   measured=measured)


@dataclass(frozen=True)
class Descent:
    """A batch's result: every point's summary, and the whole rows of the points in `kept`:
    arrays (rows, kept, ...) as the engines compute them (turning them point-first would copy
    them, slowly), NaN after each point's last row."""

    summary: Summary
    kept: np.ndarray  # the indices of the points whose rows are kept, ascending
    x: np.ndarray
    loss: np.ndarray
    grad: np.ndarray
    norms: Optional[np.ndarray]  # (rows, kept, 2): |x|, |grad|, for a parameter recorded by its head
    device: str
    measured: Optional[np.ndarray] = None  # (rows, kept, measures): what a model measures each row
    measure_names: tuple[str, ...] = ()
    rungs: tuple[Rung, ...] = ()  # what each rung of a pruned batch did
    computed: int = 0  # rows the engine computed, summed over the points it stepped: the work done

    def trajectory(self, k: int = 0) -> Trajectory:
        """The rows of the k-th kept point, up to its last."""
        rows = int(self.summary.epochs_run[self.kept[k]]) + 1
        norms = (None, None) if self.norms is None else (self.norms[:rows, k, 0], self.norms[:rows, k, 1])
        measured = {name: self.measured[:rows, k, m] for m, name in enumerate(self.measure_names)}
        return Trajectory(self.x[:rows, k], self.loss[:rows, k], self.grad[:rows, k], self.device, *norms, measured)


def descend(problem: Problem, engine: ModuleType, loop: Loop) -> Descent:
    """Run `problem` on `engine`, every point to its last epoch or to where it diverged.

    >>> from runner import engines
    >>> from runner.problems.expressions import parse_expression as p
    >>> from runner.problems.losses import Loss
    >>> from runner.descent.optimizers import Optimizer
    >>> square = Loss("square", p("loss.value", "x**2"), (p("loss.grad", "2*x"),), minimiser=(p("m", "0"),))
    >>> problem = engines.Problem(square, np.array([5.0, 5.0]), Optimizer("sgd", np.array([0.3, 0.75])), "float64",
    ...                           "cpu", 1e6, 0)
    >>> d = descend(problem, engines.load("numpy"), Loop(2, 1e-4))
    >>> d.trajectory(1).x.tolist(), d.summary.rate.tolist()
    ([5.0, -2.5, 1.25], [0.4, 0.5])
    """
    stepper = engine.start(problem)
    every = loop.sharpness_every
    measure_names = (problem.measure_names + ((schedules.LR,) if problem.schedule else ())
                     + ((sharpness.NAME,) if every else ()))
    tally = Tally(problem.points, loop.tolerance, problem.diverge_above, problem.dtype,
                  _minimiser(problem), by_norm=problem.recorded is not None, measure_names=measure_names)
    total = loop.epochs + 1
    size = piece_rows(problem, loop)
    keep = kept_points(problem, loop)
    whole = len(keep) == problem.points  # then the rows are kept as they come, without a copy
    rung_rows = [] if loop.prune is None else [epoch + 1 for epoch in loop.prune.rungs]  # rows done at each rung
    stepped = None  # the indices of the points the engine steps: None for all, until a rung prunes some
    rungs, computed = [], 0
    pieces = []  # each piece's rows of the kept points, and which of them (None: all)
    done = 0
    while done < total and tally.alive.any():
        # Every piece asks for the same number of rows, so that a compiled loop (TensorFlow,
        # JAX) compiles once; the last piece's rows past the last epoch are dropped. With the
        # sharpness measured, a measurement starts a piece (piece_rows): at the x the engine holds.
        # A pruned batch's engine compiles again at each rung anyway: its pieces end at rungs,
        # at measurements and at the last epoch.
        sharp = stepper.sharpness(loop.sharpness_iterations) if every and done % every == 0 else None
        ahead = [] if not rung_rows else [r - done for r in rung_rows if r > done] + [total - done] + (
            [every - done % every] if every else [])
        rows = stepper(min([size, *ahead]))
        computed += len(rows) * (problem.points if stepped is None else len(stepped))
        if problem.schedule:  # the learning rate each row's update was taken at
            rates = problem.learning_rates(done, len(rows))
            rows = _with_measure(rows, rates if stepped is None else rates[:, stepped])
        if every:  # the sharpness at the piece's first row, NaN after
            column = np.full(rows.loss.shape, np.nan)
            if sharp is not None:
                column[0] = sharp
            rows = _with_measure(rows, column)
        if len(rows) > total - done:
            rows = rows.map(lambda a: a[: total - done])
        if len(rows) == 0:
            break
        tally.add(rows, stepped)
        if stepped is None:
            pieces.append((rows if whole else rows.map(lambda a: a[:, keep]), None))
        else:  # the kept points among those stepped, and their places among the kept
            taken = np.flatnonzero(np.isin(stepped, keep))
            pieces.append((rows.map(lambda a: a[:, taken]), np.searchsorted(keep, stepped[taken])))
        done += len(rows)
        if done in rung_rows and tally.alive.any():
            kept, rung = _rung(tally, loop.prune, done - 1)
            rungs.append(rung)
            at = np.arange(problem.points) if stepped is None else stepped
            stepper = engine.start(problem.subset(kept), resume=stepper.state().subset(np.searchsorted(at, kept)))
            stepped = kept
        if loop.progress:
            loop.progress(done)
    summary = tally.summary()
    arrays = [_assembled([(getattr(p, name), columns) for p, columns in pieces], len(keep))
              for name in ("x", "loss", "grad", "norms", "measured")]
    for k in np.flatnonzero(summary.epochs_run[keep] < done - 1):  # rows past a point's last are not kept
        for array in arrays:
            if array is not None:
                array[summary.epochs_run[keep[k]] + 1:, k] = np.nan
    x, loss, grad, norms, measured = arrays
    return Descent(summary, keep, x, loss, grad, norms, stepper.device, measured, measure_names, tuple(rungs), computed)


def _rung(tally: Tally, prune: Prune, epoch: int) -> tuple[np.ndarray, Rung]:
    """The points a rung at `epoch` (the last row tallied) keeps, of those still running, and what
    it did; the others are stopped in the tally."""
    running = np.flatnonzero(tally.alive)
    values = tally.final_loss if prune.metric == LOSS else tally.measured_final[:, tally.measure_names.index(prune.metric)]
    kept = prune.survivors(values, running)
    tally.prune(np.setdiff1d(running, kept))
    ranked = values[kept]
    best = np.nanmax(ranked) if prune.better_high else np.nanmin(ranked)
    bar = np.nanmin(ranked) if prune.better_high else np.nanmax(ranked)
    return kept, Rung(epoch, len(running), len(kept), float(best), float(bar))


def _with_measure(rows: Rows, column: np.ndarray) -> Rows:
    """The rows with one more measure, `column` (rows, points), last, in the rows' dtype."""
    column = column.astype(rows.loss.dtype)[..., None]
    return dataclasses.replace(rows, measured=column if rows.measured is None else
                               np.concatenate([rows.measured, column], axis=-1))


def timed(problem: Problem, engine: ModuleType, loop: Loop, bar_label: Optional[str]) -> tuple[Descent, float]:
    """`descend`, with a progress bar under `bar_label` on a terminal (None: no bar), and the
    seconds it took."""
    from runner.records import progress

    bar = None if bar_label is None else progress.for_display(bar_label, loop.epochs + 1)
    started = time.perf_counter()
    try:
        result = descend(problem, engine, dataclasses.replace(loop, progress=bar))
    finally:
        if bar:
            bar.close()
    return result, time.perf_counter() - started


def _assembled(parts: list, kept: int) -> Optional[np.ndarray]:
    """Pieces (rows, points, ...) joined into (rows, kept, ...), each piece's columns at its
    places among the kept points (None: all of them; after a rung, NaN at the pruned). No copy
    for one whole piece an engine made writable."""
    if parts[0][0] is None:
        return None
    if all(columns is None for _, columns in parts):
        arrays = [array for array, _ in parts]
        if len(arrays) == 1 and arrays[0].flags.writeable:
            return arrays[0]
        return np.concatenate(arrays)
    first = parts[0][0]
    out = np.full((sum(len(a) for a, _ in parts), kept, *first.shape[2:]), np.nan, dtype=first.dtype)
    row = 0
    for array, columns in parts:
        out[row:row + len(array), slice(None) if columns is None else columns] = array
        row += len(array)
    return out


def _minimiser(problem: Problem) -> Optional[np.ndarray]:
    """x* shaped to broadcast against one recorded row of x (points, *shape), or None when the
    loss does not know it; for a parameter recorded by its head, x*'s head (the rate is then
    measured on those coordinates, or on the whole norm where x* = 0)."""
    values = problem.loss.minimiser_values()
    if values is None:
        return None
    values = np.broadcast_to(values, (problem.points, values.shape[1]))
    if problem.recorded is not None:
        return values[:, :problem.recorded]
    if problem.shape == ():
        return values[:, 0]
    return values if values.shape[1] == problem.shape[-1] else values[:, :1]


def row_values(problem: Problem, loop: Loop) -> int:
    """Values one point records a row: x, loss, grad (and two norms past RECORDED coordinates),
    the measures."""
    head = problem.recorded
    size = int(np.prod(problem.shape)) if head is None else head
    return (2 * size + 1 + (0 if head is None else 2) + len(problem.measure_names) + bool(problem.schedule)
            + bool(loop.sharpness_every))


def piece_rows(problem: Problem, loop: Loop) -> int:
    """Rows per piece: all of them when they fit PIECE_BYTES (with a model's mini-batch orders,
    drawn a piece at a time); about PROGRESS_PIECES pieces of
    at least CHECK_EVERY rows with a progress bar; with the sharpness measured every K epochs, a
    divisor of K, so that each measurement starts a piece. Every piece has this many (the last is cut).

    >>> from runner.problems.losses import Loss
    >>> from runner.descent.optimizers import Optimizer
    >>> def points(count):
    ...     return Problem(Loss("square", None, ()), np.full(count, 5.0), Optimizer("sgd", 0.1), "float32", "cpu", 1e6, 0)
    >>> piece_rows(points(1), Loop(999, 1e-4))
    1000
    >>> piece_rows(points(1), Loop(99_999, 1e-4, progress=print))
    1000
    >>> piece_rows(points(10**6), Loop(200, 1e-4))
    5
    >>> piece_rows(points(10**4), Loop(1200, 1e-4))  # not 559, 559, 83
    401
    >>> piece_rows(points(1), Loop(999, 1e-4, sharpness_every=30)), piece_rows(points(10**6), Loop(200, 1e-4, sharpness_every=9))
    (30, 3)
    """
    rows = loop.epochs + 1
    per_row = problem.points * row_values(problem, loop) * np.dtype(problem.dtype).itemsize + problem.order_bytes
    size = min(rows, max(1, PIECE_BYTES // per_row))
    if loop.progress is not None:
        size = min(size, max(CHECK_EVERY, math.ceil(rows / PROGRESS_PIECES)))
    size = math.ceil(rows / math.ceil(rows / size))  # as many pieces, evened out: the last wastes little
    every = loop.sharpness_every
    return size if not every else max(d for d in range(1, min(size, every) + 1) if every % d == 0)


def kept_points(problem: Problem, loop: Loop) -> np.ndarray:
    """The points whose whole rows are kept: all, or past `loop.keep_bytes` an evenly
    spaced subset that includes the first and the last point."""
    per_point = (loop.epochs + 1) * row_values(problem, loop) * np.dtype(problem.dtype).itemsize
    if loop.keep_bytes is None or problem.points * per_point <= loop.keep_bytes:
        return np.arange(problem.points)
    return evenly_spaced(problem.points, max(1, loop.keep_bytes // per_point))


def evenly_spaced(total: int, count: int) -> np.ndarray:
    """At most `count` of the indices 0 .. total - 1, evenly spaced, the first and last among them.

    >>> evenly_spaced(10, 4).tolist(), evenly_spaced(3, 5).tolist()
    ([0, 3, 6, 9], [0, 1, 2])
    """
    if total <= count:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, count).round().astype(int))
