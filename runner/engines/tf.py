"""The TensorFlow engine: the gradient by `tf.GradientTape`, the whole loop in one `tf.function`.

The article creates a new `tf.Variable` and runs eagerly at every step (about 1.3 ms a step
here); one Variable and one traced loop cost about 20 us a step.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ info and warnings off the console

import tensorflow as tf  # noqa: E402

from runner.engines import Trajectory, no_gpu  # noqa: E402
from runner.losses import Loss  # noqa: E402

# Jobs sharing a GPU: without memory growth the first TensorFlow process takes it all.
for _gpu in tf.config.list_physical_devices("GPU"):
    tf.config.experimental.set_memory_growth(_gpu, True)

FRAMEWORK = "tensorflow"
VERSION = tf.__version__
OPS = {"sin": tf.sin, "cos": tf.cos, "tanh": tf.tanh, "exp": tf.exp, "log": tf.math.log,
       "sqrt": tf.sqrt, "abs": tf.abs}


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "/CPU:0"
    if tf.config.list_logical_devices("GPU"):
        return "/GPU:0"
    if requested == "auto":
        return "/CPU:0"
    raise no_gpu("tf", requested, "sees no GPU (tf.config.list_physical_devices('GPU') is empty)")


def descend(loss: Loss, x_start: float, epochs: int, lr: float, dtype: str, device: str) -> Trajectory:
    """Gradient descent on one `tf.Variable`, all epochs in one traced `tf.function`."""
    # The bound expression is already plain tensor arithmetic: nothing for AutoGraph to convert.
    value = tf.autograph.experimental.do_not_convert(loss.value.bind(OPS))
    dt = tf.as_dtype(dtype)
    with tf.device(device):
        x = tf.Variable(x_start, dtype=dt)
        step = tf.constant(lr, dtype=dt)

        @tf.function
        def run(epochs: tf.Tensor):
            rows = [tf.TensorArray(dt, size=epochs + 1) for _ in range(3)]
            for k in tf.range(epochs + 1):
                with tf.GradientTape() as tape:
                    y = value(x)
                grad = tape.gradient(y, x)
                rows = [row.write(k, v) for row, v in zip(rows, (x.read_value(), y, grad))]
                x.assign_sub(step * grad)  # the update after the last row is computed and discarded
            return [row.stack() for row in rows]

        xs, losses, grads = run(tf.constant(epochs))
    return Trajectory(xs.numpy(), losses.numpy(), grads.numpy(), device=_short(x.device))


def _short(device: str) -> str:
    """'/job:localhost/replica:0/task:0/device:GPU:0' -> '/GPU:0'."""
    return "/" + device.rsplit("device:", 1)[-1]
