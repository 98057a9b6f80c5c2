"""Batches: a point of a batch is the same run alone, on every backend; theory's stability bounds
and rates are what the grid measures."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend_params, composed

from runner.descent import theory
from runner.descent.loop import descend
from runner.problem import from_config

# Sampled points of each batch: the first, the last, and one between.
SAMPLES = (0, 23, -1)


def batch(*overrides: str, sweeps: list[str]):
    """The descent of a batch job, composed as the sweeper composes a group."""
    cfg = composed(*overrides, "batch.sweep=[" + ",".join(f'"{s}"' for s in sweeps) + "]")
    problem, loop, engine, grid = from_config(cfg)
    return descend(problem, engine, loop), grid, problem


def alone(*overrides: str):
    """The descent of one ordinary run."""
    problem, loop, engine, grid = from_config(composed(*overrides))
    assert grid is None
    return descend(problem, engine, loop)


CASES = {  # a batched key of each kind: hyperparameters, x_start (a vector), a loss's constants
    "sgd": (["loss=double_well", "x_start=2.5", "epochs=300"], ["lr=range(0.005,0.2,0.005)"]),
    "momentum": (["loss=double_well", "optimizer=momentum", "x_start=2.5", "epochs=300"],
                 ["lr=0.002,0.01,0.05", "optimizer.momentum=range(0,1,0.1)"]),
    "nesterov": (["loss=ill_conditioned", "optimizer=nesterov", "epochs=300"],
                 ["x_start=[1,1],[-2,0.5],[0.3,-4]", "optimizer.momentum=range(0,1,0.1)", "lr=0.5,1.5"]),
    "adam": (["loss=quadratic", "optimizer=adam", "x_start=-2", "epochs=300"],
             ["lr=0.01,0.1,0.5", "optimizer.beta1=0.5,0.9", "loss.params.a=range(0.5,5,0.5)"]),
    "polyak": (["loss=quadratic", "optimizer=polyak", "x_start=-2", "epochs=30"],  # f* and x* per point
               ["lr=0.5,1,1.5", "loss.params.b=range(-1,2,0.25)"]),
    "armijo": (["loss=rosenbrock", "optimizer=armijo", "epochs=30"],  # each point its own line search
               ["lr=0.01,0.1,1", "optimizer.shrink=0.3,0.8", "x_start=[-1.5,2],[0,0],[2,-1]"]),
}


# In float32 each case runs on NumPy and on one framework, two cases a framework (a line search's
# acceptance and Polyak's f - f*, where rounding decides most, among them): a framework converts
# every kind of batched value alike whatever the dtype, and each run compared compiles its own program.
FLOAT32_ON = {"armijo": "tf", "momentum": "tf", "polyak": "jax", "nesterov": "jax", "adam": "torch", "sgd": "torch"}


def batch_params():
    """Every case on every backend in float64; in float32 every case on NumPy and on the framework
    `FLOAT32_ON` names."""
    return [pytest.param(backend.values[0], dtype, case, marks=backend.marks, id=f"{case}-{dtype}-{backend.values[0]}")
            for case in sorted(CASES) for dtype in ("float64", "float32") for backend in backend_params(parity=True)
            if dtype == "float64" or backend.values[0] in ("numpy", FLOAT32_ON[case])]


@pytest.mark.parametrize("backend, dtype, case", batch_params())
def test_a_point_of_a_batch_is_the_same_run_alone(backend, dtype, case):
    """Bit for bit on NumPy in float64 (it steps a lone scalar differently, on NumPy scalars),
    within the parity tests' tolerances elsewhere; rerun from the command-line overrides the
    batch records for the point."""
    overrides, sweeps = CASES[case]
    common = [f"backend={backend}", f"dtype={dtype}", *overrides]
    result, grid, _ = batch(*common, sweeps=sweeps)
    assert len(result.kept) == grid.count  # every trajectory fits the default budget
    for point in SAMPLES:
        point %= grid.count
        single = alone(*common, *grid.overrides(point))
        ours, theirs = result.trajectory(point), single.trajectory(0)
        assert ours.x.shape == theirs.x.shape
        if backend == "numpy" and dtype == "float64":
            for name in ("x", "loss", "grad"):
                np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
        else:
            scale = np.maximum(1.0, np.abs(theirs.x.astype(np.float64)))
            assert np.max(np.abs(ours.x - theirs.x) / scale) <= {"float64": 1e-12, "float32": 1e-5}[dtype]
        assert result.summary.outcome[point] == single.summary.outcome[0]


@pytest.mark.parametrize("rule", theory.LINEAR)
def test_each_stability_bound_is_where_the_spectral_radius_reaches_one(rule):
    """The bounds of runner.descent.theory (Nesterov's derived for PyTorch's formulation) against the
    eigenvalues of the iteration matrix itself, just inside and just outside."""
    for beta in ([None] if rule == "sgd" else [0.0, 0.3, 0.6, 0.9, 0.99]):
        bound = theory.largest_stable_lr(rule, 2.0, beta)
        lr = np.array([bound * 0.999, bound * 1.001])
        momentum = None if beta is None else np.full(2, beta)
        radius = theory.spectral_radius(rule, lr, momentum, np.array([[2.0], [2.0]]))
        assert radius[0] < 1 < radius[1], (rule, beta, radius)
        iteration = _matrix(rule, lr[0], beta or 0.0, 2.0)
        assert max(abs(np.linalg.eigvals(iteration))) == pytest.approx(radius[0], rel=1e-9)


def _matrix(rule: str, lr: float, beta: float, curvature: float) -> np.ndarray:
    """(e, b) -> (e', b') for one curvature, written out from the update rules."""
    h = lr * curvature
    if rule == "nesterov":  # b' = beta b + lam e; e' = e - lr (lam e + beta b')
        return np.array([[1 - h * (1 + beta), -lr * beta * beta], [curvature, beta]])
    return np.array([[1 - h, -lr * beta], [curvature, beta]])  # heavy ball; sgd with beta = 0


@pytest.mark.parametrize("rule", theory.LINEAR)
def test_the_grid_finds_the_stability_bound_within_one_step(rule):
    """lr × momentum on the ill-conditioned quadratic (mu = 0.01, L = 1): for each momentum, the
    largest lr whose measured rate is below 1 is theory's bound to within the lr grid's step."""
    sweeps = ["lr=range(0.05,4.01,0.05)"] + ([] if rule == "sgd" else ["optimizer.momentum=range(0,0.96,0.05)"])
    result, grid, problem = batch("loss=ill_conditioned", f"optimizer={rule}", "epochs=500", "dtype=float64",
                                  "x_start=1", sweeps=sweeps)
    lr, rate = grid.values("lr"), result.summary.rate
    momentum = grid.values("optimizer.momentum") if rule != "sgd" else np.zeros(grid.count)
    for beta in np.unique(momentum):
        mine = momentum == beta
        measured = lr[mine][rate[mine] < 1].max()
        bound = theory.largest_stable_lr(rule, 1.0, None if rule == "sgd" else beta)
        assert abs(measured - bound) <= 0.05 + 1e-9, (beta, measured, bound)


@pytest.mark.parametrize("rule", theory.LINEAR)
def test_measured_rates_are_the_spectral_radius_where_the_eigenvalues_are_apart(rule):
    """Where the largest |eigenvalue| of the iteration matrix exceeds the next by 10%, the
    other modes die out and the measured rate is the spectral radius (to 1%); near a double
    eigenvalue a finite run overstates it a little, which the preset's test bounds."""
    sweeps = ["lr=range(0.05,4.01,0.05)"] + ([] if rule == "sgd" else ["optimizer.momentum=range(0,0.96,0.05)"])
    result, grid, problem = batch("loss=ill_conditioned", f"optimizer={rule}", "epochs=500", "dtype=float64",
                                  "x_start=1", sweeps=sweeps)
    radius = theory.of_problem(problem)
    lr = grid.values("lr")
    beta = grid.values("optimizer.momentum") if rule != "sgd" else np.zeros(grid.count)
    magnitudes = np.sort(np.concatenate([
        np.abs(np.linalg.eigvals(np.stack([_matrix(rule, a, b, lam) for a, b in zip(lr, beta)])))
        for lam in (0.01, 1.0)], axis=1), axis=1)
    np.testing.assert_allclose(magnitudes[:, -1], radius, rtol=1e-9)
    apart = (magnitudes[:, -1] > 1.1 * magnitudes[:, -2]) & (radius < 1) & np.isfinite(result.summary.rate)
    assert apart.sum() > 30
    np.testing.assert_allclose(result.summary.rate[apart], radius[apart], rtol=0.01)


def test_heavy_ball_is_fastest_at_theorys_optimum():
    """A 40 × 40 grid around Goh's optimum for kappa = 100 finds it within two grid steps, at a
    rate within 2% of (sqrt(kappa) - 1)/(sqrt(kappa) + 1)."""
    result, grid, _ = batch("loss=ill_conditioned", "optimizer=momentum", "epochs=500", "dtype=float64", "x_start=1",
                            sweeps=["lr=range(2.5,4.1,0.04)", "optimizer.momentum=range(0.5,0.9,0.01)"])
    lr_star, beta_star, rate_star = theory.heavy_ball_optimum(0.01, 1.0)
    fastest = int(np.nanargmin(result.summary.rate))
    assert abs(grid.values("lr")[fastest] - lr_star) <= 2 * 0.04
    assert abs(grid.values("optimizer.momentum")[fastest] - beta_star) <= 2 * 0.01
    assert result.summary.rate[fastest] == pytest.approx(rate_star, rel=0.02)


def test_past_the_memory_budget_a_batch_keeps_a_subset_of_trajectories_and_every_summary():
    result, grid, _ = batch("epochs=200", "batch.trajectory_mb=1", sweeps=["lr=range(0.0001,1.0001,0.0001)"])
    kept = result.kept
    assert grid.count == 10_000 and 100 < len(kept) < 500 and kept[0] == 0 and kept[-1] == 9_999
    assert result.x.shape == (201, len(kept)) and result.x.nbytes <= 2**20
    assert np.isfinite(result.summary.final_loss).sum() == 10_000 - np.sum(result.summary.outcome == "diverged")
    np.testing.assert_allclose(result.trajectory(len(kept) - 1).x[:3], [5.0, -5.0, 5.0], rtol=1e-3)  # lr 1.0
