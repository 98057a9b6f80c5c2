"""Every engine against the closed form, the article, and each other."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from conftest import backend_params, loop, one_point

from runner import engines
from runner.descent.loop import descend as run
from runner.descent.optimizers import Optimizer
from runner.errors import ConfigError
from runner.problems.expressions import parse_expression
from runner.problems.losses import Loss

SQUARE = Loss("square", parse_expression("loss.value", "x**2"), (parse_expression("loss.grad", "2*x"),))
ARTICLE = "[5.   2.   0.8  0.32 0.13 0.05 0.02 0.01 0.   0.   0.   0.   0.   0.   0.   0.  ]"
TOLERANCE = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-12)}


def descend(backend, lr=0.3, epochs=15, dtype="float32", x_start=5.0, loss=SQUARE, optimizer=None):
    """One run's trajectory: a batch of one point."""
    engine = engines.load(backend)
    optimizer = optimizer or Optimizer("sgd", lr)
    return run(one_point(loss, x_start, optimizer, dtype, engine), engine, loop(epochs)).trajectory(0)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lr", [0.1, 0.3, 0.5, 0.75])
def test_trajectory_is_the_closed_form(backend, dtype, lr):
    trajectory = descend(backend, lr=lr, dtype=dtype)
    closed = 5.0 * (1 - 2 * lr) ** np.arange(16)
    assert trajectory.x.dtype == np.dtype(dtype)
    assert trajectory.x.shape == trajectory.loss.shape == trajectory.grad.shape == (16,)
    np.testing.assert_allclose(trajectory.x, closed, **TOLERANCE[dtype])
    np.testing.assert_allclose(trajectory.loss, closed**2, **TOLERANCE[dtype])
    np.testing.assert_allclose(trajectory.grad, 2 * closed, **TOLERANCE[dtype])


@pytest.mark.parametrize("backend", backend_params())
def test_reproduces_the_article(backend):
    printed = np.array2string(np.around(descend(backend).x, 2), max_line_width=200)
    assert printed == ARTICLE


@pytest.mark.parametrize("backend", backend_params())
def test_a_loss_with_functions_is_the_plain_python_loop(backend):
    """Each engine (numpy with its hand-written derivative, the others by autodiff) against the
    descent written out in Python floats with the math module."""
    loss = Loss("wavy", parse_expression("loss.value", "x**2 + sin(3*x) + exp(-x)"),
                (parse_expression("loss.grad", "2*x + 3*cos(3*x) - exp(-x)"),))
    x, xs, grads = 5.0, [], []
    for _ in range(41):
        grad = 2 * x + 3 * math.cos(3 * x) - math.exp(-x)
        xs.append(x)
        grads.append(grad)
        x -= 0.05 * grad
    actual = descend(backend, lr=0.05, epochs=40, dtype="float64", loss=loss)
    np.testing.assert_allclose(actual.x, xs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(actual.grad, grads, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", backend_params())
def test_zero_epochs_records_the_start(backend):
    trajectory = descend(backend, epochs=0)
    assert trajectory.x.tolist() == [5.0] and trajectory.grad.tolist() == [10.0]


@pytest.mark.parametrize("backend", backend_params())
def test_cpu_and_auto_without_gpu(backend):
    engine = engines.load(backend)
    cpu = engine.resolve_device("cpu")
    assert "cpu" in cpu.lower()
    assert "cpu" in descend(backend).device.lower()
    if engine.resolve_device("auto") == cpu:  # no GPU here: asking for one is an error
        with pytest.raises(ConfigError, match=f"device=cuda: backend={backend}"):
            engine.resolve_device("cuda")


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="backend=nope: there is no engine module"):
        engines.load("nope")


def test_missing_framework_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` finds when it is absent
    monkeypatch.delitem(sys.modules, "runner.engines.torch", raising=False)
    with pytest.raises(ConfigError, match=r"backend=torch needs the Python package 'torch'.*pip install torch==2.13.0"):
        engines.load("torch")


@pytest.mark.parametrize("backend", backend_params())
def test_a_large_parameter_records_its_head_and_norms(backend):
    """dim = 1000: each step keeps x[:10], grad[:10] and the norms of the whole vectors."""
    engine = engines.load(backend)
    start = np.linspace(-5.0, 5.0, 1000)
    trajectory = run(one_point(SQUARE, start, Optimizer("sgd", 0.1), "float64", engine), engine, loop(20)).trajectory(0)
    factor = 0.8 ** np.arange(21)[:, None]  # x_k = x_0 (1 - 2 lr)^k, coordinate by coordinate
    np.testing.assert_allclose(trajectory.x, start[:10] * factor, rtol=1e-12)
    np.testing.assert_allclose(trajectory.x_norm, np.linalg.norm(start) * factor[:, 0], rtol=1e-12)
    np.testing.assert_allclose(trajectory.grad_norm, 2 * np.linalg.norm(start) * factor[:, 0], rtol=1e-12)
    np.testing.assert_allclose(trajectory.loss, np.sum(start**2) * factor[:, 0] ** 2, rtol=1e-12)
    assert list(trajectory.columns())[-2:] == ["grad_norm", "x_norm"] and "x/9" in trajectory.columns()


ADAM = Optimizer("adam", 0.01, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("x_start, epochs, lr", [(5.0, 3000, 0.001), (5.0, 3000, 1.003)],
                         ids=["long", "diverges-after-2000"])
def test_reporting_progress_changes_no_number(backend, x_start, epochs, lr):
    """With a progress bar the compiled engines run their loop in pieces: the same rows, bit for bit."""
    engine = engines.load(backend)
    optimizer = ADAM if lr < 1 else Optimizer("sgd", lr)
    problem = one_point(SQUARE, x_start, optimizer, "float32", engine)
    seen = []
    plain = run(problem, engine, loop(epochs)).trajectory(0)
    reported = run(problem, engine, loop(epochs, progress=seen.append)).trajectory(0)
    for name in ("x", "loss", "grad"):
        np.testing.assert_array_equal(getattr(reported, name), getattr(plain, name))
    assert seen == sorted(seen) and len(seen) >= 5
    if lr < 1:
        assert seen[-1] == epochs + 1
    else:  # |x| grows 0.6% a step and passes 1e6 near step 2000: the run stops there
        assert 1500 < len(plain.x) < epochs + 1 and seen[-1] < epochs + 1


@pytest.mark.parametrize("shape, x_norm", [((), False), ((12,), False), ((12,), True)])
def test_a_trajectory_is_the_columns_it_writes(shape, x_norm):
    """trajectory.csv's columns, read back (runner.load), give the same trajectory."""
    from runner.descent.loop import Trajectory

    rng = np.random.default_rng(0)
    x, grad = rng.normal(size=(5, *shape)), rng.normal(size=(5, *shape))
    trajectory = Trajectory(x=x, loss=rng.normal(size=5), grad=grad, device="cpu",
                            x_norm=rng.normal(size=5) if x_norm else None,
                            whole_grad_norm=rng.normal(size=5) if x_norm else None)
    columns = {"step": np.arange(5.0), **trajectory.columns()}
    again = Trajectory.from_columns(dict(reversed(columns.items())), "cpu")  # the order of columns aside
    assert again.columns().keys() == trajectory.columns().keys()
    for name, series in trajectory.columns().items():
        np.testing.assert_array_equal(again.columns()[name], series)
