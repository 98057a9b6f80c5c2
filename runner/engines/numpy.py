"""The NumPy engine: the gradient is the loss's hand-written derivative, as the article's `dfunc`.

A batch steps arrays of shape (points, *shape); a single run of a scalar parameter steps NumPy
scalars of the dtype instead, because a NumPy operation on a one-element array costs several
times one on a scalar (array dispatch and allocation), and a step is a handful of operations. Both give the same bits: every operation is the same ufunc, `**` included (`OPS["pow"]`,
`runner.problems.expressions.numpy_power`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from runner.descent import optimizers, sharpness
from runner.engines import CHECK_EVERY, Problem, Rows, State, Stepper, alive, broadcast_shape, no_gpu, record
from runner.problems.expressions import NUMPY_OPS

FRAMEWORK = "numpy"
VERSION = np.__version__


def _norm(v):
    return np.sqrt(np.vecdot(v, v))  # over the last axis, without the temporary of sum(v * v)


OPS = NUMPY_OPS  # the expressions' own NumPy functions (runner.problems.expressions): constants use them too


def resolve_device(requested: str) -> str:
    if requested == "cuda":
        raise no_gpu("numpy", requested, "computes on the CPU only")
    return "cpu"


def start(problem: Problem, resume: Optional[State] = None) -> Stepper:
    """Gradient descent with NumPy values of the problem's dtype, from `resume` where given.

    >>> from runner.engines import single
    >>> from runner.problems.expressions import parse_expression as p
    >>> from runner.problems.losses import Loss
    >>> square = Loss("square", p("loss.value", "x**2"), (p("loss.grad", "2*x"),))
    >>> step = start(single(square, 5.0, optimizers.Optimizer("sgd", lr=0.3), "float64", "cpu", 1e6, 0))
    >>> step(3).x.tolist()
    [[5.0], [2.0], [0.8]]
    """
    np.random.seed(problem.seed)
    dtype = np.dtype(problem.dtype)
    scalar = problem.points == 1 and problem.shape == ()

    def convert(values):  # a per-point array, already shaped to broadcast against x
        values = np.asarray(values, dtype=dtype)
        return values.reshape(-1)[0] if scalar else values

    value = problem.loss.objective(OPS, problem.shape, convert)
    derivative = problem.loss.gradient(OPS, problem.shape, convert)
    value_and_derivative = problem.loss.value_and_gradient(OPS, problem.shape, convert)
    init, update = optimizers.rule(problem.optimizer, OPS,
                                   lambda v: convert(problem.per_point(v).reshape(broadcast_shape(problem))),
                                   value, problem.minimum(), problem.loss.domain)
    x = (problem.x_start if resume is None else resume.x).astype(dtype)
    x = x.reshape(-1)[0] if scalar else x
    state = init(x) if resume is None else tuple(convert(v) for v in resume.rule)
    points, head = problem.points, problem.recorded
    row = problem.shape if head is None else (head,)
    measure = problem.measure(OPS, convert)
    batch_gradient = problem.loss.batch_gradient(OPS, convert) if problem.loss.batch_size else None
    epoch = 0 if resume is None else resume.epoch  # of the next row: each epoch's mini-batches are drawn from it
    # y = x^2's path, the article's: one check a step (each more costs ~5% of a 0.42-us step)
    plain = head is None and measure is None and batch_gradient is None and problem.schedule is None

    def step(count: int) -> Rows:
        nonlocal x, state, epoch
        if batch_gradient:
            indices, weights = problem.epoch_batches(epoch, count)
            weights = weights.astype(dtype)
        rates = problem.learning_rates(epoch, count)  # None: the rule's own lr
        if rates is not None:
            rates = [convert(r.reshape(broadcast_shape(problem))) for r in rates]
        epoch += count
        # Rows go into arrays made once a piece: a list of per-step tuples costs half as much again.
        xs, grads = np.empty((count, points, *row), dtype), np.empty((count, points, *row), dtype)
        # a scalar goes into a 1-D view: a store into a row of shape (1,) costs twice as much
        x_rows, grad_rows = (xs.reshape(count), grads.reshape(count)) if scalar else (xs, grads)
        if head is not None:
            ys, norms = np.empty((count, points), dtype), np.empty((count, points, 2), dtype)
        measured = np.empty((count, points, len(problem.measure_names)), dtype) if measure else None
        done = count
        with np.errstate(all="ignore"):  # a diverging point overflows on purpose; it is detected
            for block in range(0, count, CHECK_EVERY):
                for k in range(block, min(block + CHECK_EVERY, count)):
                    if plain:
                        grad = derivative(x)
                        x_rows[k], grad_rows[k] = x, grad
                        x, state = update(grad, state, x)  # the update after the last row is discarded
                        continue
                    y, grad = value_and_derivative(x)
                    if head is None:
                        x_rows[k], grad_rows[k] = x, grad
                    else:
                        xs[k], ys[k], grads[k], x_norm, grad_norm = record(x, y, grad, head, _norm)
                        norms[k, :, 0], norms[k, :, 1] = x_norm, grad_norm
                    if measure:
                        for m, values in enumerate(measure(x, y)):
                            measured[k, :, m] = values
                    scheduled = {} if rates is None else {"lr": rates[k]}
                    if batch_gradient:  # an epoch of mini-batch steps (after the last row: discarded)
                        for batch, weight in zip(indices[k], weights[k]):
                            x, state = update(batch_gradient(x, batch, weight), state, x, **scheduled)
                    else:
                        x, state = update(grad, state, x, **scheduled)
                if not alive(xs[k], ys[k] if head is not None else value(xs[k]), problem.diverge_above).any():
                    done = k + 1  # every point has diverged
                    break
            if head is None:  # the loss of every row at once: it is not needed to step
                return Rows(xs[:done], value(xs[:done]), grads[:done], None, _cut(measured, done))
            return Rows(xs[:done], ys[:done], grads[:done], norms[:done], _cut(measured, done))

    direction = None if resume is None else resume.direction  # the last measurement's eigenvectors: drawn at the first
    exact_gradient = None  # float64, as the difference needs: bound at the first measurement, not at every start

    def measure_sharpness(iterations: int) -> np.ndarray:
        """The largest Hessian eigenvalue of each point at the current x: power iteration on central
        differences of the hand-written gradient, in float64."""
        nonlocal direction, exact_gradient
        if exact_gradient is None:
            exact_gradient = problem.loss.gradient(OPS, problem.shape)
        if direction is None:
            direction = sharpness.start(points, problem.shape, problem.seed)
        at = np.asarray(x, np.float64).reshape(points, *problem.shape)
        h = sharpness.difference_step(at).reshape(points, *([1] * len(problem.shape)))
        quotient = np.zeros(points)
        with np.errstate(all="ignore"):
            for _ in range(iterations):
                hv = (exact_gradient(at + h * direction) - exact_gradient(at - h * direction)) / (2 * h)
                quotient, direction = sharpness.power_step(direction, np.broadcast_to(hv, at.shape), OPS)
        return np.asarray(quotient, np.float64)

    step.device = "cpu"
    step.sharpness = measure_sharpness
    step.state = lambda: State.held(x, state, epoch, direction)
    return step


def _cut(rows, done: int):
    return None if rows is None else rows[:done]
