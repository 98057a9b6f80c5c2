"""Engines: one module per framework, behind one small interface.

`backend=NAME` selects the module `runner.engines.NAME`, imported only then, so a NumPy run
never pays for importing TensorFlow or PyTorch. Each engine module provides:

    FRAMEWORK: str                    the framework's distribution name, e.g. "tensorflow"
    VERSION: str                      its version
    OPS: dict[str, callable]          the framework's sin, cos, exp, ..., pow for expressions and
                                      update rules; sum(v, axes) and stack(list) (on the last
                                      axis); maximum and where, elementwise (AMSGrad, Armijo);
                                      matmul, reshape, logsumexp, log_softmax and argmax (on the
                                      last axis; the index in v's dtype) and take (rows at
                                      indices) for models; optionally dense(rows, weights,
                                      biases, inputs, outputs), a model's layer where the
                                      framework has a faster one than matmul's
    resolve_device(requested) -> str "cpu" | "cuda" | "auto" -> the device to use, or a
                                      ConfigError naming the backend
    start(problem, resume=None)       the descent, ready to run, from `resume` (a State) where
        -> Stepper                    given: a pruned batch carries on with its kept points so.
                                      `stepper(count)` computes the next
                                      `count` rows for every point of the batch and returns them
                                      as `Rows` on the host (fewer, once every point has
                                      diverged), each row's update at its learning rates where
                                      the problem has a schedule (`learning_rates`);
                                      `stepper.device` says where x lives;
                                      `stepper.sharpness(iterations)` the largest Hessian
                                      eigenvalue of each point at the current x;
                                      `stepper.state()` where it stands, as a State

Everything else, the same for every framework, is `runner.descent.loop`'s: the pieces a run is cut
into, each point's divergence, progress, summaries and kept trajectories. An engine knows
nothing of Hydra or MLflow: it takes plain values and returns arrays, so it can be tested and
benchmarked alone. Adding a backend is one module here plus `conf/backend/NAME.yaml` (an engine
outside this package names its module in that file: `module: mypackage.engine`).

A problem is a batch of points: x has shape (points, *shape), every hyperparameter and loss
constant is a number or an array of one number per point. A single run is one point.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional, Protocol

import numpy as np

from runner.descent import optimizers
from runner.descent.optimizers import Optimizer
from runner.descent.schedules import Schedule
from runner.errors import ConfigError
from runner.problems.losses import Loss

# What to `pip install` when an engine's framework is missing, where the name differs.
INSTALL_HINT = {"tensorflow": "tensorflow-cpu", "torch": "torch==2.13.0", "jax": "'jax[cpu]' optax"}

# A parameter of more coordinates than this records, each step, only its first RECORDED
# coordinates (of x and of the gradient) and the norms of the whole x and gradient: a run of
# 10^7 coordinates would otherwise keep 40 MB a step.
RECORDED = 10

# Engines that step in Python look, once per this many steps, whether every point has
# diverged, and stop then (a check every step would cost a device synchronisation each time).
CHECK_EVERY = 256

# PyTorch's engine, which steps in Python, measures a model (`Problem.measure`) for many epochs at
# once, after their steps (TensorFlow's and JAX's measure inside their compiled loops): at most this
# many epochs (on digits, 16 to 64 cost the least per epoch on the CPU, a fifth to a third of one
# evaluation an epoch, and 32 the least between the steps: more leave the cache), and at most this
# many bytes of their x and of the model's working memory.
MEASURE_EPOCHS = 32
MEASURE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Problem:
    """What an engine computes: gradient descent of a batch of points, as plain values. Every
    field is given (the defaults are conf/config.yaml's, the one place they live); how many
    epochs, and what is kept of them, is the loop's (`runner.descent.Loop`)."""

    loss: Loss  # its constants: numbers, or arrays of one per point
    x_start: np.ndarray  # float64, shape (points, *shape): () for a scalar parameter
    optimizer: Optimizer  # its hyperparameters: numbers, or arrays of one per point
    dtype: str
    device: str
    diverge_above: float  # |x| beyond this counts as diverged, and the point stops there
    seed: int  # the framework's random generator's, and a model's mini-batch order's
    point_seeds: Optional[np.ndarray] = None  # a batch over seeds: each point's own mini-batch order
    schedule: Optional[Schedule] = None  # the learning rate's schedule; None: lr every epoch

    @property
    def points(self) -> int:
        return self.x_start.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one point's parameter."""
        return self.x_start.shape[1:]

    @property
    def recorded(self) -> Optional[int]:
        """How many leading coordinates each step records, or None for all of them."""
        size = int(np.prod(self.shape))
        return RECORDED if size > RECORDED else None

    @property
    def measure_names(self) -> tuple[str, ...]:
        """What each row measures beside x, loss and grad (a model's validation loss, ...)."""
        return tuple(self.loss.measure_names)

    def measure(self, ops: dict, convert: Callable) -> Optional[Callable]:
        """(x, loss) -> a tuple of `measure_names`' values, one per point each, in the framework's
        operations; None where the loss measures nothing."""
        return self.loss.measure(ops, convert)

    def measure_span(self, itemsize: int) -> int:
        """How many epochs PyTorch's engine measures in one evaluation, after their steps: from 1
        to MEASURE_EPOCHS, as many as MEASURE_BYTES holds of their x and of the model's working
        memory. One evaluation of many epochs is the same few dozen operations as one of a single
        epoch, which were a quarter of a model's epoch on digits."""
        each = self.points * (int(np.prod(self.shape)) * itemsize + self.loss.working_bytes(1, itemsize, False))
        return int(min(MEASURE_EPOCHS, max(1, MEASURE_BYTES // each)))

    def minimum(self) -> Optional[np.ndarray]:
        """The loss's minimum f* for each point where an update rule reads it (Polyak's), else None."""
        if not optimizers.needs_minimum(self.optimizer.name):
            return None
        return self.loss.minimum_values(self.shape, self.points)

    def epoch_batches(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """A model's mini-batches for epochs first .. first + count - 1: indices (count, steps,
        batch_size), or (count, steps, points, batch_size) in a batch over seeds, and weights
        (count, steps, batch_size) (`Model.epoch_batches`)."""
        return self.loss.epoch_batches(first, count, self.seed if self.point_seeds is None else self.point_seeds)

    def learning_rates(self, first: int, count: int) -> Optional[np.ndarray]:
        """Each point's learning rate for the updates after rows first .. first + count - 1,
        (count, points) float64, as the schedule sets them; None without one (lr throughout)."""
        if self.schedule is None:
            return None
        return self.per_point(self.optimizer.lr)[None] * self.schedule.factors(first, count)

    @property
    def order_bytes(self) -> int:
        """Bytes of one epoch's mini-batch indices, for every point (0 for the full batch)."""
        return self.loss.order_bytes(self.points, self.point_seeds is not None) if self.loss.batch_size else 0

    def per_point(self, value: object) -> np.ndarray:
        """A hyperparameter or constant as an array of one float64 per point."""
        return np.broadcast_to(np.asarray(value, dtype=np.float64), (self.points,))

    def subset(self, indices: np.ndarray) -> "Problem":
        """The problem of the points at `indices` alone: every value given per point (the start,
        hyperparameters, loss constants, seeds, schedule parameters) taken at them.

        >>> p = Problem(Loss("square", None, (), constants={"a": np.array([1.0, 2.0, 3.0]), "b": 1.0}),
        ...             np.zeros(3), Optimizer("momentum", np.array([0.1, 0.2, 0.3]), momentum=0.9),
        ...             "float64", "cpu", 1e6, 0)
        >>> q = p.subset(np.array([0, 2]))
        >>> q.points, q.loss.constants, q.optimizer
        (2, {'a': array([1., 3.]), 'b': 1.0}, Optimizer('momentum', lr=array([0.1, 0.3]), momentum=0.9))
        """
        def taken(value: Any) -> Any:
            return value[indices] if np.ndim(value) and np.size(value) == self.points else value

        constants = {name: taken(value) for name, value in self.loss.constants.items() if np.ndim(value)}
        hyperparameters = {name: taken(value) for name, value in self.optimizer.hyperparameters().items()}
        schedule = None if self.schedule is None else dataclasses.replace(
            self.schedule, parameters={name: taken(value) for name, value in self.schedule.parameters.items()})
        return dataclasses.replace(
            self, loss=self.loss.with_constants(constants) if constants else self.loss, x_start=self.x_start[indices],
            optimizer=Optimizer(self.optimizer.name, **hyperparameters), schedule=schedule,
            point_seeds=None if self.point_seeds is None else self.point_seeds[indices])


def single(loss: Loss, x_start: object, *args, **kwargs) -> Problem:
    """The problem of one run: x_start is one parameter (a number, or one per coordinate).

    >>> single(Loss("square", None, ()), 5.0, Optimizer("sgd", 0.1), "float64", "cpu", 1e6, 0).x_start
    array([5.])
    """
    return Problem(loss, np.asarray(x_start, dtype=np.float64)[None], *args, **kwargs)


@dataclass(frozen=True)
class Rows:
    """Rows computed by an engine, on the host: row axis first, then the point axis.

    A parameter of more than RECORDED coordinates gives its first RECORDED coordinates in `x`
    and `grad`, and `norms` the norms of the whole x and gradient, (rows, points, 2).
    """

    x: np.ndarray  # (rows, points, *recorded shape)
    loss: np.ndarray  # (rows, points)
    grad: np.ndarray  # (rows, points, *recorded shape)
    norms: Optional[np.ndarray] = None
    measured: Optional[np.ndarray] = None  # (rows, points, measures): Problem.measure_names, in order

    def __len__(self) -> int:
        return len(self.loss)

    def map(self, function: Callable[[np.ndarray], np.ndarray]) -> "Rows":
        """The rows with `function` applied to each array (a slice of rows or of points)."""
        return Rows(*(None if a is None else function(a) for a in (self.x, self.loss, self.grad, self.norms,
                                                                   self.measured)))


@dataclass(frozen=True)
class State:
    """Where a stepper stands between two pieces, on the host: x (points, *shape), the update
    rule's state (its arrays, each with the point axis first), the epoch of the next row, and
    the sharpness's last eigenvectors (None before the first measurement). A stepper started
    from it (`start(problem, resume=state)`) computes the rows the stepper it came from would
    have; from `state.subset(kept)` and `problem.subset(kept)`, those of the kept points alone."""

    x: np.ndarray
    rule: tuple[np.ndarray, ...]
    epoch: int
    direction: Optional[np.ndarray] = None

    @classmethod
    def held(cls, x: Any, rule: tuple, epoch: int, direction: Any = None) -> "State":
        """The state from an engine's values converted to NumPy; a single run's scalars (NumPy's
        engine steps them so) get their point axis back."""
        return cls(np.atleast_1d(x), tuple(np.atleast_1d(v) for v in rule), epoch,
                   None if direction is None else np.asarray(direction))

    def subset(self, indices: np.ndarray) -> "State":
        return State(self.x[indices], tuple(v[indices] for v in self.rule), self.epoch,
                     None if self.direction is None else self.direction[indices])


class Stepper(Protocol):
    device: str

    def __call__(self, count: int) -> Rows: ...

    def sharpness(self, iterations: int) -> np.ndarray: ...

    def state(self) -> State: ...


def load(backend: str, module: Optional[str] = None) -> ModuleType:
    """Import the engine of `backend` (the module `module`, by default runner.engines.BACKEND),
    or raise a ConfigError saying what to install.

    >>> load("numpy").FRAMEWORK
    'numpy'
    """
    module_name = module or f"{__name__}.{backend}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ConfigError(f"backend={backend}: there is no engine module {module_name}")
        if error.name is None or error.name.startswith(__name__):
            raise
        package = error.name.split(".")[0]
        raise ConfigError(
            f"backend={backend} needs the Python package '{package}', which is not installed: "
            f"pip install {INSTALL_HINT.get(package, package)}"
        )


def no_gpu(backend: str, requested: str, why: str) -> ConfigError:
    """The error for device=cuda where the backend has no GPU to use."""
    return ConfigError(f"device={requested}: backend={backend} {why}; use device=cpu or device=auto")


def broadcast_shape(problem: Problem) -> tuple[int, ...]:
    """The shape a per-point value takes to broadcast against x: (points, 1, ..., 1)."""
    return (problem.points,) + (1,) * len(problem.shape)


def record(x, y, grad, head: Optional[int], norm: Callable, measure: Optional[Callable] = None) -> tuple:
    """One row as the engines record it, in the framework's arrays: x, loss, grad; past RECORDED
    coordinates, their head and the norms of the whole x and grad (`norm` over the last axis);
    then what `measure` (Problem.measure) measures."""
    row = (x, y, grad) if head is None else (x[..., :head], y, grad[..., :head], norm(x), norm(grad))
    return row if measure is None else (*row, *measure(x, y))


def alive(x: Any, loss: Any, bound: float, xp: Any = np) -> Any:
    """For rows (..., points, *recorded): True where the loss is finite and |x| <= bound: the one
    definition of a point that has not diverged. `runner.descent.loop` asks it of every row, and the
    engines that stop early ask it whether any point is left, TensorFlow's inside its compiled
    loop (`xp` is then `tf.experimental.numpy`).

    >>> alive(np.array([1.0, -8.0, np.inf]), np.array([1.0, 64.0, np.inf]), 5.0).tolist()
    [True, False, False]
    """
    with np.errstate(invalid="ignore"):
        finite = xp.isfinite(loss)
        if len(x.shape) == len(loss.shape):  # a scalar parameter
            return finite & (xp.abs(x) <= bound)  # NaN fails `<=`
        return finite & xp.all(xp.abs(xp.reshape(x, (*loss.shape, -1))) <= bound, axis=-1)
