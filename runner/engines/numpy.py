"""The NumPy engine: the gradient is the loss's hand-written derivative, as the article's `dfunc`."""

from __future__ import annotations

import numpy as np

from runner.engines import Trajectory, no_gpu
from runner.losses import Loss

FRAMEWORK = "numpy"
VERSION = np.__version__
OPS = {"sin": np.sin, "cos": np.cos, "tanh": np.tanh, "exp": np.exp, "log": np.log,
       "sqrt": np.sqrt, "abs": np.abs}


def resolve_device(requested: str) -> str:
    if requested == "cuda":
        raise no_gpu("numpy", requested, "computes on the CPU only")
    return "cpu"


def descend(loss: Loss, x_start: float, epochs: int, lr: float, dtype: str, device: str) -> Trajectory:
    """Gradient descent with NumPy scalars of `dtype`.

    >>> from runner.losses import Loss, parse_expression as p
    >>> square = Loss("square", p("loss.value", "x**2"), p("loss.grad", "2*x"))
    >>> descend(square, 5.0, 2, 0.3, "float64", "cpu").x.tolist()
    [5.0, 2.0, 0.8]
    """
    value, derivative = loss.value.bind(OPS), loss.grad.bind(OPS)
    scalar = np.dtype(dtype).type
    x, step = scalar(x_start), scalar(lr)
    xs, losses, grads = (np.empty(epochs + 1, dtype) for _ in range(3))
    for k in range(epochs + 1):
        grad = derivative(x)
        xs[k], losses[k], grads[k] = x, value(x), grad
        x = x - step * grad  # the update after the last row is computed and discarded
    return Trajectory(xs, losses, grads, device="cpu")
