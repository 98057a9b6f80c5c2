"""Engines: one module per framework, behind one small interface.

`backend=NAME` selects the module `runner.engines.NAME`, imported only then, so a NumPy run
never pays for importing TensorFlow or PyTorch. Each engine module provides:

    FRAMEWORK: str                    the framework's distribution name, e.g. "tensorflow"
    VERSION: str                      its version
    OPS: dict[str, callable]          the framework's sin, cos, exp, ..., sum for loss expressions
    OPTIMIZERS: tuple[str, ...]       the update rules it implements (see runner.optimizers)
    resolve_device(requested) -> str  "cpu" | "cuda" | "auto" -> the device to use, or a
                                      ConfigError naming the backend
    descend(problem: Problem) -> Trajectory, calling problem.progress(rows done), when set,
                                      as it goes (a Python loop each chunk of rows; a compiled
                                      loop runs in about 100 pieces instead of one: `spans`)

An engine knows nothing of Hydra or MLflow: it takes plain values and returns arrays, so it can
be tested and benchmarked alone. Adding a backend is one module here plus `conf/backend/NAME.yaml`
(an engine outside this package names its module in that file: `module: mypackage.engine`).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Optional

import numpy as np

from runner.losses import Loss
from runner.optimizers import Optimizer
from runner.schema import ConfigError

# What to `pip install` when an engine's framework is missing, where the name differs.
INSTALL_HINT = {"tensorflow": "tensorflow-cpu", "torch": "torch==2.13.0", "jax": "'jax[cpu]' optax"}

# A parameter of more coordinates than this records, each step, only its first RECORDED
# coordinates (of x and of the gradient) and the norms of the whole x and gradient: a run of
# 10^7 coordinates would otherwise keep 40 MB a step.
RECORDED = 10

# Engines look for divergence once per this many steps (a check per step would cost a device
# synchronisation each time); rows past the first diverged one are dropped.
CHECK_EVERY = 256


@dataclass(frozen=True)
class Problem:
    """One gradient descent to run, as plain values."""

    loss: Loss
    x_start: np.ndarray  # float64, the parameter's shape: () for a scalar
    epochs: int
    optimizer: Optimizer
    dtype: str = "float32"
    device: str = "cpu"
    diverge_above: float = 1e6  # |x| beyond this counts as diverged, and the run stops
    seed: int = 0  # for the framework's random generator (descent itself draws nothing)
    progress: Optional[Callable[[int], None]] = field(default=None, compare=False, repr=False)

    @property
    def recorded(self) -> Optional[int]:
        """How many leading coordinates each step records, or None for all of them."""
        return RECORDED if self.x_start.size > RECORDED else None


@dataclass(frozen=True)
class Trajectory:
    """Gradient descent as plain data: row k holds x_k, the loss at x_k and the gradient at x_k.

    Row 0 is the starting point; a run that diverged stops at the first diverged row, so there
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

    @property
    def grad_norm(self) -> np.ndarray:
        if self.whole_grad_norm is not None:
            return self.whole_grad_norm.astype(np.float64)
        return np.sqrt(np.sum(np.square(self.grad.reshape(len(self.grad), -1), dtype=np.float64), axis=1))

    def head(self, rows: int) -> "Trajectory":
        """The first `rows` rows."""
        cut = (lambda a: None if a is None else a[:rows])
        return Trajectory(self.x[:rows], self.loss[:rows], self.grad[:rows], self.device,
                          cut(self.x_norm), cut(self.whole_grad_norm))

    def columns(self) -> dict[str, np.ndarray]:
        """One series per name, as metrics and the CSV name them.

        A scalar parameter gives `x`, `loss`, `grad`; a vector gives `x/0`, `x/1`, ..., `loss`,
        `grad/0`, `grad/1`, ... and `grad_norm`; one of more than RECORDED coordinates gives its
        first RECORDED coordinates, and `x_norm` too.
        """
        if self.x.ndim == 1:
            return {"x": self.x, "loss": self.loss, "grad": self.grad}
        x, grad = self.x.reshape(len(self.x), -1), self.grad.reshape(len(self.grad), -1)
        norms = {"grad_norm": self.grad_norm}
        if self.x_norm is not None:
            norms["x_norm"] = self.x_norm
        return {**{f"x/{i}": x[:, i] for i in range(x.shape[1])}, "loss": self.loss,
                **{f"grad/{i}": grad[:, i] for i in range(grad.shape[1])}, **norms}


def first_diverged_row(x: np.ndarray, loss: np.ndarray, bound: float) -> Optional[int]:
    """The index of the first row with a non-finite value or |x| > bound, or None.

    >>> first_diverged_row(np.array([1.0, -8.0, np.inf]), np.array([1.0, 64.0, np.inf]), 5.0)
    1
    """
    with np.errstate(invalid="ignore"):
        flat = np.abs(x.reshape(len(x), -1))
        bad = ~np.isfinite(loss) | ~np.all(flat <= bound, axis=1)  # NaN fails `<=`
    rows = np.flatnonzero(bad)
    return int(rows[0]) if rows.size else None


def chunks(epochs: int):
    """Row ranges [start, stop) of at most CHECK_EVERY rows covering rows 0..epochs."""
    return ((start, min(start + CHECK_EVERY, epochs + 1)) for start in range(0, epochs + 1, CHECK_EVERY))


PROGRESS_PIECES = 100  # a compiled loop with a progress bar runs in about this many calls


def spans(problem: Problem) -> list[tuple[int, int]]:
    """The row ranges [start, stop) a compiled engine runs one call each: all rows at once, or,
    to report progress, equal pieces of at least CHECK_EVERY rows (the last may be shorter).

    >>> square = Loss("square", None, ())
    >>> spans(Problem(square, np.array(5.0), 999, Optimizer("sgd", 0.1)))
    [(0, 1000)]
    >>> spans(Problem(square, np.array(5.0), 999, Optimizer("sgd", 0.1), progress=print))
    [(0, 256), (256, 512), (512, 768), (768, 1000)]
    """
    rows = problem.epochs + 1
    if problem.progress is None:
        return [(0, rows)]
    size = max(CHECK_EVERY, math.ceil(rows / PROGRESS_PIECES))
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


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
