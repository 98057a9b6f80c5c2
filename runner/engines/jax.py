"""The JAX engine: `jax.vjp` of the loss of each point, the whole loop one `lax.scan` under `jax.jit`.

The update rules are `runner.descent.optimizers`' in `jax.numpy` (optax's rules take one learning rate;
the tests hold ours to `optax.sgd` and `optax.adam` on single points). Per-point
hyperparameters and constants are arguments of the compiled loop, not constants baked into it:
a batch of a million points compiles as fast as one.

The loop cannot stop early inside `scan`: it runs every epoch; the rows after a point's
divergence are dropped by `runner.descent.loop`, as for the other engines.
"""

from __future__ import annotations

import functools
import operator
import os
from typing import Optional

# JAX takes 75% of a GPU's memory when it starts; a sweep that ran torch first in the same
# process then sees jax fail its first allocations. Allocate as needed instead.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

from runner.records import chatter  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 runs need it; float32 runs stay float32
chatter.quiet_loggers("jax._src.xla_bridge")  # "Unable to initialize backend 'tpu'" on every start

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from runner.descent import optimizers, sharpness  # noqa: E402
from runner.engines import Problem, Rows, State, Stepper, broadcast_shape, no_gpu, record  # noqa: E402

FRAMEWORK = "jax"
VERSION = jax.__version__
OPS = {"sin": jnp.sin, "cos": jnp.cos, "tanh": jnp.tanh, "exp": jnp.exp, "log": jnp.log,
       "sqrt": jnp.sqrt, "abs": jnp.abs, "maximum": jnp.maximum, "where": jnp.where, "pow": operator.pow,
       "sum": lambda v, axes: jnp.sum(v, axis=axes), "stack": lambda parts: jnp.stack(parts, axis=-1),
       "matmul": jnp.matmul, "reshape": jnp.reshape, "logsumexp": lambda v: jax.nn.logsumexp(v, axis=-1),
       "take": lambda v, indices: jnp.take(v, indices, axis=0),
       "log_softmax": lambda v: jax.nn.log_softmax(v, axis=-1), "argmax": lambda v: jnp.argmax(v, axis=-1).astype(v.dtype)}


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


def start(problem: Problem, resume: Optional[State] = None) -> Stepper:
    """Gradient descent of the batch (from `resume` where given), each piece one call of the compiled scan."""
    platform, index = problem.device.split(":")
    device = jax.devices(platform)[int(index)]
    dtype, head, shape = problem.dtype, problem.recorded, problem.shape

    def on_device(values):
        return jax.device_put(jnp.asarray(values, dtype=dtype), device)

    # The values that may differ from point to point go in as arguments.
    batched = {"loss": {k: on_device(v) for k, v in problem.loss.constants.items() if np.ndim(v)},
               "rule": {k: on_device(problem.per_point(v)) for k, v in problem.optimizer.hyperparameters().items()},
               "minimum": None if (minimum := problem.minimum()) is None else on_device(minimum)}

    def descent(values):
        loss = problem.loss.with_constants(values["loss"])
        value = loss.objective(OPS, shape, lambda v: jnp.asarray(v, dtype))
        rule = optimizers.Optimizer(problem.optimizer.name, **values["rule"])
        init, update = optimizers.rule(rule, OPS, lambda v: jnp.reshape(v, broadcast_shape(problem)), value,
                                       values["minimum"], problem.loss.domain)
        ones = jnp.ones(problem.points, dtype)
        measure = problem.measure(OPS, lambda v: jnp.asarray(v, dtype))
        if problem.loss.batch_size:
            batch_value = loss.batch_objective(OPS, lambda v: jnp.asarray(v, dtype))

        def step(carry, inputs):
            """A row, then an update, or an epoch of mini-batch updates (`inputs`: the epoch's
            mini-batches, indices (steps, batch_size), or (steps, points, batch_size) with a seed
            per point, and weights (steps, batch_size), or None; its learning rates, or None)."""
            (x, state), (epoch_batches, rates) = carry, inputs
            scheduled = {} if rates is None else {"lr": rates}
            y, pullback = jax.vjp(value, x)
            (grad,) = pullback(ones)
            row = record(x, y, grad, head, lambda v: jnp.linalg.norm(v, axis=-1), measure)
            if epoch_batches is None:
                return update(grad, state, x, **scheduled), row

            def batch_step(carry, batch):
                x, state = carry
                _, pullback = jax.vjp(lambda v: batch_value(v, *batch), x)
                (grad,) = pullback(ones)
                return update(grad, state, x, **scheduled), None

            return jax.lax.scan(batch_step, carry, epoch_batches)[0], row

        return init, step

    @functools.partial(jax.jit, static_argnums=2)
    def run(carry, values, length, inputs):
        return jax.lax.scan(descent(values)[1], carry, inputs, length=length)

    if resume is None:
        x0 = on_device(problem.x_start)
        carry = [(x0, jax.jit(lambda x, values: descent(values)[0](x))(x0, batched))]
    else:
        x0 = on_device(resume.x)
        carry = [(x0, tuple(on_device(v) for v in resume.rule))]
    epoch = [0 if resume is None else resume.epoch]  # of the next row: each epoch's mini-batches are drawn from it

    def step(count: int) -> Rows:  # runner.descent.loop asks for pieces of one length: one compilation
        batches = None
        if problem.loss.batch_size:
            indices, weights = problem.epoch_batches(epoch[0], count)
            batches = (jax.device_put(indices, device), on_device(weights))
        rates = problem.learning_rates(epoch[0], count)  # None: the rule's own lr
        rates = None if rates is None else on_device(rates.reshape(count, *broadcast_shape(problem)))
        epoch[0] += count
        carry[0], rows = run(carry[0], batched, count, (batches, rates))
        rows = [np.asarray(jax.device_get(r)) for r in rows]
        fixed = 3 if head is None else 5  # x, loss, grad (and the norms): then the measures
        return Rows(*rows[:3], None if head is None else np.stack(rows[3:fixed], axis=-1),
                    np.stack(rows[fixed:], axis=-1) if problem.measure_names else None)

    @functools.partial(jax.jit, static_argnums=3)
    def power_iteration(x, direction, values, iterations):
        loss = problem.loss.with_constants(values["loss"])
        value = loss.objective(OPS, shape, lambda v: jnp.asarray(v, dtype))
        grad = jax.grad(lambda z: jnp.sum(value(z)))

        def power_step(_, carry):
            hv = jax.jvp(grad, (x,), (carry[1],))[1]  # forward-over-reverse
            return sharpness.power_step(carry[1], hv, OPS)

        return jax.lax.fori_loop(0, iterations, power_step, (jnp.zeros(problem.points, dtype), direction))

    # the last measurement's eigenvectors: drawn at the first
    direction = [None if resume is None or resume.direction is None else on_device(resume.direction)]

    def measure_sharpness(iterations: int) -> np.ndarray:
        """The largest Hessian eigenvalue of each point at the current x (`runner.descent.sharpness`)."""
        if direction[0] is None:
            direction[0] = on_device(sharpness.start(problem.points, shape, problem.seed))
        quotient, direction[0] = power_iteration(carry[0][0], direction[0], batched, iterations)
        return np.asarray(jax.device_get(quotient), np.float64)

    def where() -> State:
        x, rule = jax.device_get(carry[0])
        return State.held(x, tuple(rule), epoch[0], None if direction[0] is None else jax.device_get(direction[0]))

    step.device = str(x0.devices().pop())
    step.sharpness = measure_sharpness
    step.state = where
    return step
