"""Sharpness: the largest eigenvalue of the training loss's Hessian at x, along the run.

Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability"
(ICLR 2021): under full-batch gradient descent at a learning rate lr, the sharpness of a network's
loss rises until it reaches 2/lr, the largest curvature at which a quadratic is still stable,
then hovers there while the loss keeps falling over the long run, not monotonically.

`sharpness_every=K` measures it at epochs 0, K, 2K, ... as the measure `sharpness` (NaN at the
epochs between; its summary is the last value measured). Each engine computes Hessian-vector
products in its own framework, at the current x of every point at once (`stepper.sharpness`):
JAX and TensorFlow forward-over-reverse (`jax.jvp` of `jax.grad`, `ForwardAccumulator` over a
`GradientTape`), PyTorch reverse-over-reverse (a second `autograd.grad` through the gradient's
graph, which is built once per measurement), NumPy a central difference of its hand-written
gradient, in float64 (`difference_step`). What is the same for all is here: the power
iteration's step, written in the framework's operations, and its start.

Power iteration finds the eigenvalue of largest magnitude. Each measurement starts from the
previous one's eigenvector (the first from a random one drawn from the run's seed), so that a
few iterations follow the top eigenvalue as it moves.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

NAME = "sharpness"


def start(points: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Unit vectors (points, *shape), float64, drawn from `seed`: the first measurement's start."""
    v = np.random.default_rng([seed, 2021]).standard_normal((points, *shape))
    if not shape:
        return np.sign(v) + (v == 0)
    return v / np.linalg.norm(v.reshape(points, -1), axis=1).reshape(points, *([1] * len(shape)))


def power_step(v: Any, hv: Any, ops: Mapping[str, Callable]) -> tuple[Any, Any]:
    """One step of power iteration for each point: (the Rayleigh quotient v·Hv, one per point;
    the next unit vector Hv/|Hv|, or v where Hv = 0), v a unit vector (points, *shape).

    >>> from runner.problems.expressions import NUMPY_OPS
    >>> v = np.array([[0.6, 0.8]])  # H = diag(2, 4): v·Hv = 0.36·2 + 0.64·4, and Hv = (1.2, 3.2)
    >>> quotient, following = power_step(v, v * [2.0, 4.0], NUMPY_OPS)
    >>> quotient.round(6).tolist(), (following * np.sqrt(1.2**2 + 3.2**2)).round(6).tolist()
    ([3.28], [[1.2, 3.2]])
    """
    axes = tuple(range(1, len(v.shape)))
    if not axes:  # a scalar parameter: v is ±1, and Hv/|Hv| its sign
        return v * hv, ops["where"](hv != 0, hv / ops["abs"](hv), v)
    quotient = ops["sum"](v * hv, axes)
    norm = ops["sqrt"](ops["sum"](hv * hv, axes))
    norm = ops["reshape"](norm, (-1, *([1] * len(axes))))
    return quotient, ops["where"](norm > 0, hv / ops["where"](norm > 0, norm, norm * 0 + 1), v)


def difference_step(x: np.ndarray) -> np.ndarray:
    """NumPy's step for the central difference (g(x + h v) - g(x - h v)) / 2h, one per point:
    the cube root of float64's epsilon, scaled by |x| past 1, which balances the difference's
    truncation (h^2 times the third derivative) against its rounding (epsilon / h). Exact but for
    rounding on a quadratic (about 1e-10 relative)."""
    size = np.sqrt(np.sum(np.square(x.reshape(len(x), -1)), axis=1))
    return np.cbrt(np.finfo(np.float64).eps) * np.maximum(1.0, size)
