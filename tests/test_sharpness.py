"""Sharpness, the largest eigenvalue of the loss's Hessian along a run (`sharpness_every`): the
known curvature of the quadratics on every backend, one value per point of a batch, a network's
the dense Hessian's on every framework, recorded every K epochs; bad input refused."""

from __future__ import annotations

import importlib.util

import mlflow
import numpy as np
import pytest
from conftest import backend_params, built

from runner.descent import sharpness
from runner.descent.loop import descend
from runner.errors import ConfigError


def measured(*overrides: str, backend: str) -> np.ndarray:
    """The sharpness column, (rows, points), of `python -m runner OVERRIDES` on `backend`."""
    prob, engine, loop = built(*overrides, "dtype=float64", backend=backend)
    result = descend(prob, engine, loop)
    return result.measured[..., result.measure_names.index(sharpness.NAME)]


QUADRATICS = [  # (overrides, the Hessian's largest eigenvalue)
    (("loss=square",), 2.0),
    (("loss=quadratic", "loss.params.a=3"), 6.0),
    (("loss=ill_conditioned", "x_start=[1,1]"), 1.0),  # diag(0.01, 1)
    (("loss=ill_conditioned", "x_start=[1,1]", "loss.params.mu=50", "loss.params.L=2"), 50.0),
]


@pytest.mark.parametrize("backend", backend_params(parity=True))
@pytest.mark.parametrize("overrides, curvature", QUADRATICS)
def test_the_sharpness_of_a_quadratic_is_its_curvature(backend, overrides, curvature):
    column = measured(*overrides, "epochs=6", "lr=0.01", "sharpness_every=3", backend=backend)
    assert np.isnan(column[[1, 2, 4, 5]]).all()  # measured at epochs 0, 3 and 6 alone
    np.testing.assert_allclose(column[[0, 3, 6]], curvature, rtol=1e-9)


@pytest.mark.parametrize("backend", backend_params())
def test_each_point_of_a_batch_has_its_own_sharpness(backend):
    column = measured("loss=quadratic", 'batch.sweep=["loss.params.a=0.5,2,8"]', "loss.params.a=0.5", "epochs=2",
                      "lr=0.01", "sharpness_every=1", backend=backend)
    np.testing.assert_allclose(column, np.broadcast_to([1.0, 4.0, 16.0], (3, 3)), rtol=1e-9)


NETWORK = ("model=mlp", "data=breast_cancer", "model.hidden=[6]", "model.l2=0.01", "lr=0.3", "epochs=4",
           "sharpness_every=4", "sharpness_iterations=300")


def largest_eigenvalue_of_the_dense_hessian(prob) -> float:
    """The network's Hessian at its starting point, column by column from central differences of
    its hand-written gradient, and its eigenvalue of largest magnitude."""
    from runner.problems.expressions import NUMPY_OPS

    gradient, x = prob.loss.gradient(NUMPY_OPS, prob.shape), prob.x_start[0]
    step = 1e-5
    columns = [(gradient((x + step * e)[None]) - gradient((x - step * e)[None]))[0] / (2 * step)
               for e in np.eye(len(x))]
    hessian = np.array(columns)
    eigenvalues = np.linalg.eigvalsh((hessian + hessian.T) / 2)
    return float(eigenvalues[np.abs(eigenvalues).argmax()])


@pytest.mark.parametrize("backend", backend_params(parity=True))
def test_a_networks_sharpness_is_its_dense_hessians_largest_eigenvalue(backend):
    prob, _, _ = built(*NETWORK, "dtype=float64")
    expected = largest_eigenvalue_of_the_dense_hessian(prob)
    assert expected > 0
    column = measured(*NETWORK, backend=backend)
    np.testing.assert_allclose(column[0], expected, rtol=1e-6)
    assert np.isfinite(column[4]).all() and not np.allclose(column[4], column[0])  # it moved with x


def test_a_run_records_its_sharpness_every_k_epochs(here, store_uri):
    import runner
    from runner import reproduce

    run = runner.run("sharpness_every=5", "epochs=12", "backend=numpy")
    assert run.summary["final_sharpness"] == pytest.approx(2.0, rel=1e-9)
    history = mlflow.MlflowClient(store_uri).get_metric_history(run.run_id, "sharpness")
    assert [(m.step, round(m.value, 9)) for m in history] == [(0, 2.0), (5, 2.0), (10, 2.0)]
    assert "best_sharpness" not in run.summary  # no value of it is better than another
    column = run.trajectory.measured["sharpness"]
    assert np.isnan(column).sum() == 10 and column[10] == pytest.approx(2.0)

    model = runner.run("model=logistic", "data=breast_cancer", "epochs=6", "sharpness_every=3")
    history = mlflow.MlflowClient(store_uri).get_metric_history(model.run_id, "sharpness")
    assert [m.step for m in history] == [0, 3, 6]
    assert model.summary["final_sharpness"] == pytest.approx(history[-1].value)
    assert reproduce.main([model.run_id]) == 0  # the sharpness compared at the epochs it was measured


def test_a_long_run_logs_its_sharpness_at_measured_epochs_only():
    from runner.descent.loop import Trajectory
    from runner.records import tracking

    column = np.full(1001, np.nan)
    column[::7] = 2.0
    trajectory = Trajectory(np.zeros(1001), np.zeros(1001), np.zeros(1001), "cpu", measured={"sharpness": column})
    steps, values = tracking.logged_series(trajectory, max_steps=50)["sharpness"]
    assert len(steps) == 50 and steps[0] == 0 and steps[-1] == 994 and (steps % 7 == 0).all() and (values == 2).all()
    assert len(tracking.logged_series(trajectory, max_steps=50)["loss"][0]) == 50


@pytest.mark.parametrize("overrides, message", [
    (["sharpness_every=0"], "sharpness_every=0 is not allowed: an integer >= 1 (measure the sharpness every that many "
                            "epochs), or null (never)"),
    (["sharpness_every=-3"], "sharpness_every=-3 is not allowed: an integer >= 1"),
    (["sharpness_every=2", "sharpness_iterations=0"], "sharpness_iterations=0 is not allowed: an integer >= 1"),
    (["sharpness_every=2", "loss=expr", "loss.expr='abs(x)'"],
     "sharpness_every=2 needs the loss's second derivative: loss=expr's value uses abs"),
])
def test_bad_sharpness_input_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        built(*overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


@pytest.mark.slow
def test_the_edge_of_stability_preset_hovers_at_two_over_lr(here, store_uri):
    """experiment=edge_of_stability as it ships: at each of its learning rates, once the sharpness
    has reached 0.9 × 2/lr, its median × lr / 2 over the rest of the run lies in [0.9, 1.2]; at
    three of them it rose there from below (progressive sharpening). On JAX where it is installed:
    a third of NumPy's time here (its Hessian-vector products are exact, NumPy's two gradients
    each), the same dynamics; NumPy's sharpness is held to the dense Hessian above."""
    import runner

    backend = "jax" if importlib.util.find_spec("jax") else "numpy"
    grid = runner.sweep("experiment=edge_of_stability", f"backend={backend}")
    assert (grid.table["points"] == 4).all()
    (npz,) = here.glob("outputs/multirun/*/*/0/trajectories.npz")
    (figure,) = here.glob("outputs/multirun/*/*/0/sharpness.png")
    rows = np.load(npz)
    rose = 0
    for k, lr in enumerate(rows["lr"]):
        edge = rows["sharpness"][:, k][~np.isnan(rows["sharpness"][:, k])] * lr / 2
        reached = int(np.argmax(edge >= 0.9))
        assert edge[reached] >= 0.9 and 0.9 <= np.median(edge[reached:]) <= 1.2, (lr, edge)
        rose += reached > 0 and edge[0] < 0.9
    assert rose >= 3 and len(edge) == 3000 // 20 + 1
    assert figure.stat().st_size > 20_000
