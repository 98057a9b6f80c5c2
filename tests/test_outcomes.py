"""Runs end converged, not converged or diverged; a diverging run stops early on every backend;
each point of a batch stops on its own; the measured rate is what theory says."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEFAULTS, backend_params, loop, one_point

from runner import engines
from runner.descent.loop import descend
from runner.descent.optimizers import Optimizer
from runner.engines import Problem
from runner.problems.expressions import parse_expression
from runner.problems.losses import Loss

ZERO = (parse_expression("loss.minimiser", "0"),)
SQUARE = Loss("square", parse_expression("loss.value", "x**2"), (parse_expression("loss.grad", "2*x"),), minimiser=ZERO)


def run(backend, lr, epochs, loss=SQUARE, x_start=5.0, bound=None, dtype="float32"):
    """One run's trajectory and its summary."""
    engine = engines.load(backend)
    result = descend(one_point(loss, x_start, Optimizer("sgd", lr), dtype, engine, bound), engine, loop(epochs))
    return result.trajectory(0), result.summary


def batch_of(x_start, optimizer, dtype, engine):
    """The problem of a batch of points on y = x^2 on `engine`'s CPU, its other settings the defaults."""
    return Problem(SQUARE, x_start, optimizer, dtype, engine.resolve_device("cpu"), DEFAULTS.stop.diverge_above,
                   DEFAULTS.seed)


@pytest.mark.parametrize("backend", backend_params())
def test_the_article_converges(backend):
    trajectory, summary = run(backend, 0.3, 15)
    assert summary.outcome[0] == "converged" and summary.steps_to_tolerance[0] == 13  # 10 * 0.4^13 < 1e-4
    assert len(trajectory.x) == 16 and summary.epochs_run[0] == 15 and summary.diverged_at[0] == -1


@pytest.mark.parametrize("backend", backend_params())
def test_lr_one_cycles_and_does_not_converge(backend):
    trajectory, summary = run(backend, 1.0, 40)
    assert summary.outcome[0] == "not_converged" and summary.steps_to_tolerance[0] == -1
    assert np.abs(trajectory.x).tolist() == [5.0] * 41 and summary.rate[0] == 1.0


@pytest.mark.parametrize("backend", backend_params())
def test_lr_above_one_diverges_and_stops_early(backend):
    trajectory, summary = run(backend, 1.5, 1000)  # x_k = 5 (-2)^k passes 1e6 at k = 18
    assert summary.outcome[0] == "diverged" and summary.diverged_at[0] == 18
    assert len(trajectory.x) == 19 and abs(trajectory.x[-1]) > 1e6 >= abs(trajectory.x[-2])
    np.testing.assert_allclose(trajectory.x, 5.0 * (-2.0) ** np.arange(19), rtol=1e-6)
    assert summary.rate[0] == pytest.approx(2.0, rel=1e-6)  # |1 - 2 lr|: growth, measured until it stops


@pytest.mark.parametrize("backend", backend_params())
def test_divergence_past_the_first_check_is_cut_at_the_right_row(backend):
    # x_k = 5 (-1.1)^k passes 1e30 at k = 708, well past the first check every 256 steps
    trajectory, summary = run(backend, 1.05, 5000, bound=1e30, dtype="float64")  # x**2 stays finite
    first = int(np.argmax(5.0 * 1.1 ** np.arange(2000) > 1e30))
    assert summary.outcome[0] == "diverged" and len(trajectory.x) == first + 1 == summary.diverged_at[0] + 1


@pytest.mark.parametrize("backend", backend_params())
def test_a_non_finite_value_is_divergence(backend):
    root = Loss("root", parse_expression("loss.value", "sqrt(x)"), (parse_expression("loss.grad", "0.5/sqrt(x)"),))
    trajectory, summary = run(backend, 1.0, 100, loss=root, x_start=0.2)  # steps below 0: sqrt is NaN
    assert summary.outcome[0] == "diverged"
    assert not np.isfinite(trajectory.loss[-1]) and np.isfinite(trajectory.loss[:-1]).all()


@pytest.mark.parametrize("backend", backend_params())
def test_each_point_of_a_batch_stops_on_its_own(backend):
    """lr 0.3, 1.5 and 1.05 in one batch: |x_k| = 5 * 2^k passes 1e6 at epoch 18, 5 * 1.1^k at
    129, while the first point runs all 300 epochs; rows after a point's divergence are not kept
    (NaN)."""
    engine = engines.load(backend)
    lr = np.array([0.3, 1.5, 1.05])
    result = descend(batch_of(np.full(3, 5.0), Optimizer("sgd", lr), "float64", engine), engine, loop(300))
    s = result.summary
    assert s.outcome.tolist() == ["converged", "diverged", "diverged"]
    assert s.diverged_at.tolist() == [-1, 18, 129] and s.epochs_run.tolist() == [300, 18, 129]
    assert np.isnan(result.x[19:, 1]).all() and np.isfinite(result.x[:19, 1]).all()
    np.testing.assert_allclose(result.trajectory(2).x, 5.0 * (-1.1) ** np.arange(130), rtol=1e-12)
    np.testing.assert_allclose(s.rate, [0.4, 2.0, 1.1], rtol=1e-9)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-6), ("float32", 1e-3)])
def test_the_measured_rate_is_one_minus_two_lr_until_the_resolution(backend, dtype, tolerance):
    """x_k = 5 (1 - 2 lr)^k on y = x^2: the rate is |1 - 2 lr| for every lr, whether x reaches
    the dtype's smallest numbers within the run (lr = 0.3: rows past it are not measured) or not."""
    lr = np.array([0.001, 0.1, 0.25, 0.3, 0.45, 0.499, 0.5, 0.501, 0.75, 0.999, 1.0, 1.001, 1.2])
    engine = engines.load(backend)
    result = descend(batch_of(np.full(len(lr), 5.0), Optimizer("sgd", lr), dtype, engine), engine, loop(2000))
    theory = np.abs(1 - 2 * lr)
    measured = result.summary.rate
    assert measured[lr == 0.5] == 0.0  # x lands on 0 in one step
    np.testing.assert_allclose(measured[lr != 0.5], theory[lr != 0.5], rtol=tolerance)


def test_a_row_exactly_at_the_minimiser_does_not_end_the_rate_when_momentum_carries_on():
    """lr 0.5 with momentum 0.5 on y = x^2: x_1 = 0 exactly, then the momentum carries x past;
    the rate is measured to the last row above the resolution: about the spectral radius, sqrt(1/2)."""
    numpy = engines.load("numpy")
    result = descend(one_point(SQUARE, 5.0, Optimizer("momentum", 0.5, momentum=0.5), "float64", numpy), numpy, loop(200))
    assert result.trajectory(0).x[1] == 0.0 and result.trajectory(0).x[2] == -2.5
    assert result.summary.rate[0] == pytest.approx(np.sqrt(0.5), rel=0.02)
