"""The TensorFlow engine: `tf.GradientTape` on x of shape (points, *shape), the whole loop in one
`tf.function`, compiled by XLA where that pays (`uses_xla`).

The article creates a new `tf.Variable` and runs eagerly at every step, which costs hundreds
of times more a step than one traced loop (bench/run.py measures both). The update rules are
`runner.descent.optimizers`' written in tensor operations (Keras optimizers take one learning
rate, not one per point; the tests hold the rules to `keras.optimizers.SGD` and `Adam` on single
points); x and the rule's state are the loop's variables.
"""

from __future__ import annotations

import logging
import operator
import os
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ info and warnings off the console

import numpy as np  # noqa: E402

from runner.records import chatter  # noqa: E402

# What TensorFlow's import brings in that no run uses, about 2.4 s of its 4.9 s here, in every TF
# job's process: Keras' optimizers, imported eagerly for SavedModel's registry (all of Keras 3, and
# with it scikit-learn, pandas and matplotlib.pyplot), and JAX, for TFLite's converter. A None in
# sys.modules makes each import fail at once, which TensorFlow's own try/except passes over;
# afterwards both import as usual, for whoever asks for them (tf.keras is TensorFlow's lazy loader);
# only TFLite's conversion of JAX functions stays off in a process that imported this engine first.
_UNUSED = tuple(name for name in ("keras.src.optimizers", "jax") if name not in sys.modules)
sys.modules.update(dict.fromkeys(_UNUSED))
try:
    with chatter.held_back(chatter.TENSORFLOW_IMPORT):
        import tensorflow as tf  # noqa: E402
        import tensorflow.experimental.numpy as tnp  # noqa: E402
finally:
    for _name in _UNUSED:
        if _name in sys.modules and sys.modules[_name] is None:
            del sys.modules[_name]

from runner.descent import optimizers, sharpness  # noqa: E402
from runner.engines import Problem, Rows, State, Stepper, alive, broadcast_shape, no_gpu, record  # noqa: E402


class _NoRetracingWarning(logging.Filter):
    """Each run traces its own loop (about 0.1 s); in a sweep TF would warn about it every job."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


tf.get_logger().addFilter(_NoRetracingWarning())

# Jobs sharing a GPU: without memory growth the first TensorFlow process takes it all.
for _gpu in tf.config.list_physical_devices("GPU"):
    tf.config.experimental.set_memory_growth(_gpu, True)

FRAMEWORK = "tensorflow"
VERSION = tf.__version__
OPS = {"sin": tf.sin, "cos": tf.cos, "tanh": tf.tanh, "exp": tf.exp, "log": tf.math.log,
       "sqrt": tf.sqrt, "abs": tf.abs, "maximum": tf.maximum, "where": tf.where, "pow": operator.pow,
       "sum": lambda v, axes: tf.reduce_sum(v, axis=axes), "stack": lambda parts: tf.stack(parts, axis=-1),
       "matmul": tnp.matmul, "reshape": tf.reshape, "logsumexp": lambda v: tf.reduce_logsumexp(v, axis=-1),
       "take": lambda v, indices: tf.gather(v, indices), "log_softmax": lambda v: tf.nn.log_softmax(v, axis=-1),
       "argmax": lambda v: tf.cast(tf.argmax(v, axis=-1), v.dtype)}


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "/CPU:0"
    if tf.config.list_logical_devices("GPU"):
        return "/GPU:0"
    if requested == "auto":
        return "/CPU:0"
    raise no_gpu("tf", requested, "sees no GPU (tf.config.list_physical_devices('GPU') is empty)")


# XLA takes a step in about a third of the graph's microseconds but compiles for 0.5 to 2 s first.
# Measured here (2 cores, float32, each run's first call): one logistic regression on digits, 100
# epochs, 1.04 s with XLA against 0.34 s without; 10,000 points of y = x^2, 2,000 epochs, 1.22 s
# against 1.05 s; 100 networks on digits, 3.64 s against 3.82 s; 1,000 logistic regressions, 12.7 s
# against 38.0 s. So XLA from this many numbers stepped at once, and always on a GPU.
XLA_FROM = 2**16


def uses_xla(problem: Problem) -> bool:
    """Whether the loop is compiled by XLA (else TensorFlow runs it as a graph): on a GPU, or on
    the CPU where a step updates at least `XLA_FROM` numbers (points × coordinates)."""
    return "GPU" in problem.device.upper() or problem.x_start.size >= XLA_FROM


def start(problem: Problem, resume: Optional[State] = None) -> Stepper:
    """Gradient descent of the batch (from `resume` where given), each piece one call of a
    compiled loop that stops early once every point has diverged."""
    tf.random.set_seed(problem.seed)
    dt = tf.as_dtype(problem.dtype)
    head = problem.recorded
    with tf.device(problem.device):
        def convert(values):
            return tf.constant(values, dt)

        # The bound expression is already plain tensor arithmetic: nothing for AutoGraph to convert.
        value = tf.autograph.experimental.do_not_convert(problem.loss.objective(OPS, problem.shape, convert))
        init, update = optimizers.rule(problem.optimizer, OPS,
                                       lambda v: convert(problem.per_point(v).reshape(broadcast_shape(problem))),
                                       value, problem.minimum(), problem.loss.domain)
        measure = problem.measure(OPS, convert)
        batch_value = None
        if problem.loss.batch_size:
            batch_value = tf.autograph.experimental.do_not_convert(problem.loss.batch_objective(OPS, convert))
        epoch = [0 if resume is None else resume.epoch]  # of the next row: each epoch's mini-batches are drawn from it
        fixed = 3 if head is None else 5  # x, loss, grad (and the norms): then the measures
        x0 = tf.constant(problem.x_start if resume is None else resume.x, dt)
        carry = [x0, init(x0) if resume is None else tuple(convert(v) for v in resume.rule)]
        bound = tf.constant(problem.diverge_above, dt)

        scheduled = problem.schedule is not None
        xla = uses_xla(problem)

        @tf.function(jit_compile=xla)
        def run(x, state, count: tf.Tensor, indices: tf.Tensor, weights: tf.Tensor, rates: tf.Tensor):
            """`count` rows, each followed by an update (or an epoch of mini-batch updates, at
            `indices` with `weights`: `Problem.epoch_batches`), at the row's learning rates
            `rates` where there is a schedule; fewer if every point diverges."""
            rows = [tf.TensorArray(dt, size=count) for _ in range(fixed + len(problem.measure_names))]
            done = count
            for k in tf.range(count):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = value(x)
                grad = tape.gradient(y, x)  # of the sum over points: each point's own gradient
                row = record(x, y, grad, head, lambda v: tf.norm(v, axis=-1), measure)
                rows = [r.write(k, v) for r, v in zip(rows, row)]
                if not tf.reduce_any(alive(x, y, bound, tnp)):
                    done = k + 1
                    break
                at = {"lr": rates[k]} if scheduled else {}
                if batch_value is None:
                    x, state = update(grad, state, x, **at)  # the update after the last row is discarded
                else:
                    for s in tf.range(tf.shape(indices)[1]):
                        with tf.GradientTape() as tape:
                            tape.watch(x)
                            batch_loss = batch_value(x, indices[k, s], weights[k, s])
                        x, state = update(tape.gradient(batch_loss, x), state, x, **at)
            return x, state, [row.stack()[:done] for row in rows]

        def step(count: int) -> Rows:
            if batch_value is None:
                indices, weights = np.zeros((count, 0, 0), np.int64), np.zeros((count, 0, 0))
            else:
                indices, weights = problem.epoch_batches(epoch[0], count)
            rates = problem.learning_rates(epoch[0], count)
            rates = np.zeros((count, 0)) if rates is None else rates.reshape(count, *broadcast_shape(problem))
            epoch[0] += count
            with tf.device(problem.device):
                x, state, rows = run(*carry, tf.constant(count), tf.constant(indices), convert(weights),
                                     convert(rates))
            carry[:] = [x, state]
            rows = [r.numpy() for r in rows]
            return Rows(*rows[:3], None if head is None else np.stack(rows[3:fixed], axis=-1),
                        np.stack(rows[fixed:], axis=-1) if measure else None)

        @tf.function(jit_compile=xla)
        def power_iteration(x, direction, iterations: tf.Tensor):
            quotient = tf.zeros(problem.points, dt)
            for _ in tf.range(iterations):
                with tf.autodiff.ForwardAccumulator(x, direction) as forward:  # forward-over-reverse
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        y = value(x)
                    grad = tape.gradient(y, x)
                hv = forward.jvp(grad, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                quotient, direction = sharpness.power_step(direction, hv, OPS)
            return quotient, direction

        # the last measurement's eigenvectors: drawn at the first
        direction = [None if resume is None or resume.direction is None else convert(resume.direction)]

        def measure_sharpness(iterations: int) -> np.ndarray:
            """The largest Hessian eigenvalue of each point at the current x (`runner.descent.sharpness`)."""
            with tf.device(problem.device):
                if direction[0] is None:
                    direction[0] = convert(sharpness.start(problem.points, problem.shape, problem.seed))
                quotient, direction[0] = power_iteration(carry[0], direction[0], tf.constant(iterations))
            return quotient.numpy().astype(np.float64)

        def where() -> State:
            return State.held(carry[0].numpy(), tuple(v.numpy() for v in carry[1]), epoch[0],
                              None if direction[0] is None else direction[0].numpy())

        step.device = _short(carry[0].device)
        step.sharpness = measure_sharpness
        step.state = where
    return step


def _short(device: str) -> str:
    """'/job:localhost/replica:0/task:0/device:GPU:0' -> '/GPU:0'."""
    return "/" + device.rsplit("device:", 1)[-1]
