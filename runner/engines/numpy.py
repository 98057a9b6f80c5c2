"""The NumPy engine: the gradient is the loss's hand-written derivative, as the article's `dfunc`."""

from __future__ import annotations

import numpy as np

from runner import optimizers
from runner.engines import Problem, Trajectory, chunks, first_diverged_row, no_gpu

FRAMEWORK = "numpy"
VERSION = np.__version__
OPS = {"sin": np.sin, "cos": np.cos, "tanh": np.tanh, "exp": np.exp, "log": np.log,
       "sqrt": np.sqrt, "abs": np.abs, "sum": np.sum}
OPTIMIZERS = tuple(optimizers.RULES)


def resolve_device(requested: str) -> str:
    if requested == "cuda":
        raise no_gpu("numpy", requested, "computes on the CPU only")
    return "cpu"


def descend(problem: Problem) -> Trajectory:
    """Gradient descent with NumPy values of the problem's dtype.

    >>> from runner.losses import Loss, parse_expression as p
    >>> square = Loss("square", p("loss.value", "x**2"), (p("loss.grad", "2*x"),))
    >>> sgd = optimizers.Optimizer("sgd", lr=0.3)
    >>> descend(Problem(square, np.array(5.0), 2, sgd, "float64")).x.tolist()
    [5.0, 2.0, 0.8]
    """
    np.random.seed(problem.seed)
    dtype = np.dtype(problem.dtype)
    shape = problem.x_start.shape
    value = problem.loss.objective(OPS, shape)
    derivative = _derivative(problem, dtype)
    init, update = optimizers.RULES[problem.optimizer.name](problem.optimizer, dtype.type)
    x = problem.x_start.astype(dtype)[()]  # [()] makes a 0-d array a scalar: much faster to step
    state = init(x)
    n, head = problem.epochs + 1, problem.recorded
    row = shape if head is None else (head,)
    xs, grads, losses = np.empty((n, *row), dtype), np.empty((n, *row), dtype), np.empty(n, dtype)
    norms = None if head is None else np.empty((n, 2), dtype)
    rows = n
    with np.errstate(all="ignore"):  # a diverging run overflows on purpose; it is detected below
        for start, stop in chunks(problem.epochs):
            for k in range(start, stop):
                grad = derivative(x)
                if head is None:
                    xs[k], losses[k], grads[k] = x, value(x), grad
                else:
                    xs[k], losses[k], grads[k] = x[:head], value(x), grad[:head]
                    norms[k] = np.sqrt(x @ x), np.sqrt(grad @ grad)
                x, state = update(grad, state, x)  # the update after the last row is discarded
            diverged = first_diverged_row(xs[start:stop], losses[start:stop], problem.diverge_above)
            if diverged is not None:
                rows = start + diverged + 1
                break
            if problem.progress:
                problem.progress(stop)
    return Trajectory(xs, losses, grads, "cpu", *((None, None) if norms is None else norms.T)).head(rows)


def _derivative(problem: Problem, dtype: np.dtype):
    parts = [part.bind(OPS) for part in problem.loss.grad]
    if problem.loss.dim is None:
        return parts[0]
    return lambda x: np.array([part(x) for part in parts], dtype)
