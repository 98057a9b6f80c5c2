"""The JAX engine: `jax.value_and_grad`, an optax optimizer, the whole loop one `lax.scan` under `jax.jit`.

The loop cannot stop early inside `scan`: it runs every epoch, and the rows after the first
diverged one are dropped, as the other engines do.
"""

from __future__ import annotations

import functools
import os

# JAX takes 75% of a GPU's memory when it starts; a sweep that ran torch first in the same
# process then sees jax fail its first allocations. Allocate as needed instead.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 runs need it; float32 runs stay float32

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from runner.engines import Problem, Trajectory, first_diverged_row, no_gpu, spans  # noqa: E402

FRAMEWORK = "jax"
VERSION = jax.__version__
OPS = {"sin": jnp.sin, "cos": jnp.cos, "tanh": jnp.tanh, "exp": jnp.exp, "log": jnp.log,
       "sqrt": jnp.sqrt, "abs": jnp.abs, "sum": jnp.sum}
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


def _gpus() -> list:
    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU backend in this jaxlib
        return []


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu:0"
    if _gpus():
        return "gpu:0"
    if requested == "auto":
        return "cpu:0"
    raise no_gpu("jax", requested, "sees no GPU (jax.devices('gpu') finds none; a CUDA build of jaxlib is needed)")


def _optimizer(problem: Problem) -> optax.GradientTransformation:
    o = problem.optimizer
    if o.name == "adam":
        return optax.adam(o.lr, b1=o.beta1, b2=o.beta2, eps=o.eps)
    return optax.sgd(o.lr, momentum=o.momentum, nesterov=o.name == "nesterov")


def descend(problem: Problem) -> Trajectory:
    """Gradient descent with all epochs in one compiled `lax.scan`."""
    platform, index = problem.device.split(":")
    device = jax.devices(platform)[int(index)]
    value_and_grad = jax.value_and_grad(problem.loss.objective(OPS, problem.x_start.shape))
    optimizer = _optimizer(problem)

    head = problem.recorded

    def step(carry, _):
        x, state = carry
        y, grad = value_and_grad(x)
        updates, state = optimizer.update(grad, state, x)
        row = (x, y, grad) if head is None else (
            x[:head], y, grad[:head], jnp.linalg.norm(x), jnp.linalg.norm(grad))
        return (optax.apply_updates(x, updates), state), row

    @functools.partial(jax.jit, static_argnums=1)
    def run(carry, length):
        return jax.lax.scan(step, carry, None, length=length)

    x0 = jax.device_put(jnp.asarray(problem.x_start, dtype=problem.dtype), device)
    carry, pieces = (x0, optimizer.init(x0)), []
    # One call for the whole loop; about 100 with a progress bar, all of the first one's length
    # (one compilation; the rows past the last epoch are dropped). Same arithmetic either way.
    pieces_at = spans(problem)
    length = pieces_at[0][1] - pieces_at[0][0]
    for start, stop in pieces_at:
        carry, rows = run(carry, length)
        pieces.append([jax.device_get(r)[: stop - start] for r in rows])  # x, loss, grad (and the norms)
        if first_diverged_row(pieces[-1][0], pieces[-1][1], problem.diverge_above) is not None:
            break
        if problem.progress:
            problem.progress(stop)
    rows = [np.concatenate(parts) for parts in zip(*pieces)]
    trajectory = Trajectory(*rows[:3], str(x0.devices().pop()), *rows[3:])
    diverged = first_diverged_row(trajectory.x, trajectory.loss, problem.diverge_above)
    return trajectory if diverged is None else trajectory.head(diverged + 1)
