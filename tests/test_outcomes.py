"""Runs end converged, not converged or diverged; a diverging run stops early on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend_params

from runner import engines
from runner.engines import Problem
from runner.losses import Loss, parse_expression
from runner.optimizers import Optimizer
from runner.outcomes import classify

SQUARE = Loss("square", parse_expression("loss.value", "x**2"), (parse_expression("loss.grad", "2*x"),))


def run(backend, lr, epochs, loss=SQUARE, x_start=5.0, bound=1e6, dtype="float32"):
    engine = engines.load(backend)
    problem = Problem(loss, np.array(x_start), epochs, Optimizer("sgd", lr), dtype,
                      engine.resolve_device("cpu"), bound)
    trajectory = engine.descend(problem)
    return trajectory, classify(trajectory, tolerance=1e-4, diverge_above=bound)


@pytest.mark.parametrize("backend", backend_params())
def test_the_article_converges(backend):
    trajectory, outcome = run(backend, 0.3, 15)
    assert outcome.label == "converged" and outcome.steps_to_tolerance == 13  # 10 * 0.4^13 < 1e-4
    assert len(trajectory.x) == 16


@pytest.mark.parametrize("backend", backend_params())
def test_lr_one_cycles_and_does_not_converge(backend):
    trajectory, outcome = run(backend, 1.0, 40)
    assert outcome.label == "not_converged" and outcome.steps_to_tolerance is None
    assert np.abs(trajectory.x).tolist() == [5.0] * 41


@pytest.mark.parametrize("backend", backend_params())
def test_lr_above_one_diverges_and_stops_early(backend):
    trajectory, outcome = run(backend, 1.5, 1000)  # x_k = 5 (-2)^k passes 1e6 at k = 18
    assert outcome.label == "diverged"
    assert len(trajectory.x) == 19 and abs(trajectory.x[-1]) > 1e6 >= abs(trajectory.x[-2])
    np.testing.assert_allclose(trajectory.x, 5.0 * (-2.0) ** np.arange(19), rtol=1e-6)


@pytest.mark.parametrize("backend", backend_params())
def test_divergence_past_the_first_check_is_cut_at_the_right_row(backend):
    # x_k = 5 (-1.1)^k passes 1e30 at k = 708, well past the first check every 256 steps
    trajectory, outcome = run(backend, 1.05, 5000, bound=1e30, dtype="float64")  # x**2 stays finite
    first = int(np.argmax(5.0 * 1.1 ** np.arange(2000) > 1e30))
    assert outcome.label == "diverged" and len(trajectory.x) == first + 1


@pytest.mark.parametrize("backend", backend_params())
def test_a_non_finite_value_is_divergence(backend):
    root = Loss("root", parse_expression("loss.value", "sqrt(x)"), (parse_expression("loss.grad", "0.5/sqrt(x)"),))
    trajectory, outcome = run(backend, 1.0, 100, loss=root, x_start=0.2)  # steps below 0: sqrt is NaN
    assert outcome.label == "diverged"
    assert not np.isfinite(trajectory.loss[-1]) and np.isfinite(trajectory.loss[:-1]).all()
