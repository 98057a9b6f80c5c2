"""The TensorFlow engine: `tf.GradientTape` and a Keras optimizer, the whole loop in one `tf.function`.

The article creates a new `tf.Variable` and runs eagerly at every step (about 1.3 ms a step
here); one Variable and one traced loop cost tens of microseconds a step.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ info and warnings off the console

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from runner.engines import Problem, Trajectory, no_gpu, spans  # noqa: E402

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
       "sqrt": tf.sqrt, "abs": tf.abs, "sum": tf.reduce_sum}
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "/CPU:0"
    if tf.config.list_logical_devices("GPU"):
        return "/GPU:0"
    if requested == "auto":
        return "/CPU:0"
    raise no_gpu("tf", requested, "sees no GPU (tf.config.list_physical_devices('GPU') is empty)")


def _optimizer(problem: Problem, dt: tf.DType) -> tf.keras.optimizers.Optimizer:
    """The Keras optimizer of the problem, its hyperparameters kept at full precision.

    Keras turns Python floats into float32 tensors before casting them to the variable's dtype,
    which would put float32 rounding into a float64 run. NumPy float64 scalars (floats to the
    constructors' checks) keep their precision through that cast, and the learning rate, which
    Keras would store in a float32 variable, is passed as a callable returning a tensor of `dt`.
    """
    o = problem.optimizer
    lr = tf.constant(o.lr, dt)
    if o.name == "adam":
        return tf.keras.optimizers.Adam(learning_rate=lambda: lr, beta_1=np.float64(o.beta1),
                                        beta_2=np.float64(o.beta2), epsilon=np.float64(o.eps))
    return tf.keras.optimizers.SGD(learning_rate=lambda: lr, momentum=np.float64(o.momentum or 0.0),
                                   nesterov=o.name == "nesterov")


def descend(problem: Problem) -> Trajectory:
    """Gradient descent on one `tf.Variable`, all epochs in one traced `tf.function`."""
    # The bound expression is already plain tensor arithmetic: nothing for AutoGraph to convert.
    value = tf.autograph.experimental.do_not_convert(problem.loss.objective(OPS, problem.x_start.shape))
    tf.random.set_seed(problem.seed)
    dt = tf.as_dtype(problem.dtype)
    with tf.device(problem.device):
        x = tf.Variable(problem.x_start, dtype=dt)
        optimizer = _optimizer(problem, dt)
        bound = tf.constant(problem.diverge_above, dt)
        head = problem.recorded

        @tf.function(jit_compile=True)  # XLA: about 3x fewer microseconds a step than the graph alone
        def run(count: tf.Tensor):
            """`count` rows, each followed by an update; fewer if x diverges."""
            rows = [tf.TensorArray(dt, size=count) for _ in range(3 if head is None else 5)]
            done = count
            for k in tf.range(count):
                with tf.GradientTape() as tape:
                    y = value(x)
                grad = tape.gradient(y, x)
                now = x.read_value()
                row = (now, y, grad) if head is None else (now[:head], y, grad[:head], tf.norm(now), tf.norm(grad))
                rows = [r.write(k, v) for r, v in zip(rows, row)]
                # NaN fails `<=`, so this also stops on a non-finite x
                if not (tf.math.is_finite(y) and tf.reduce_all(tf.abs(x) <= bound)):
                    done = k + 1
                    break
                optimizer.apply_gradients([(grad, x)])  # the update after the last row is discarded
            return [row.stack()[:done] for row in rows]

        pieces = []  # one call for the whole loop; about 100 with a progress bar (same arithmetic)
        for start, stop in spans(problem):
            pieces.append([r.numpy() for r in run(tf.constant(stop - start))])  # x, loss, grad (and norms)
            if len(pieces[-1][0]) < stop - start:  # diverged
                break
            if problem.progress:
                problem.progress(stop)
        rows = [np.concatenate(parts) for parts in zip(*pieces)]
    return Trajectory(*rows[:3], _short(x.device), *rows[3:])


def _short(device: str) -> str:
    """'/job:localhost/replica:0/task:0/device:GPU:0' -> '/GPU:0'."""
    return "/" + device.rsplit("device:", 1)[-1]
