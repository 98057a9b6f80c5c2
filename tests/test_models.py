"""Models on data, as `model=... data=...` composes them: the hand-written gradients against finite
differences, every engine against every other, least squares against numpy.linalg.lstsq and
theory's stable learning rate, logistic regression against scikit-learn; bad input refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import BACKENDS, backend_params, built, composed, installed, loop

from runner import app, engines, problem
from runner.descent import theory
from runner.descent.loop import descend
from runner.descent.optimizers import Optimizer
from runner.errors import ConfigError
from runner.problems import models
from runner.problems.expressions import NUMPY_OPS
from runner.sweeps import points


MODELS = {  # one of each kind of model: least squares, a sigmoid, a softmax, and networks of each
    "linear": ("model=linear", "data=diabetes"),
    "binary": ("model=logistic", "data=breast_cancer"),
    "softmax": ("model=logistic", "data=digits"),
    "mlp_regression": ("model=mlp", "data=diabetes", "model.hidden=[6,5]", "model.activation=relu", "lr=0.05"),
    "mlp_binary": ("model=mlp", "data=breast_cancer", "model.hidden=[8]"),
    "mlp_softmax": ("model=mlp", "data=digits", "model.hidden=[16]"),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_hand_written_gradient_is_the_finite_difference(kind):
    prob, _, _ = built(*MODELS[kind], "model.l2=0.01", "dtype=float64")
    model = prob.loss
    value, gradient = model.objective(NUMPY_OPS, prob.shape), model.gradient(NUMPY_OPS, prob.shape)
    x = np.random.default_rng(0).normal(scale=0.3, size=(2, model.size))  # two points at once
    step = 1e-6
    coordinates = np.random.default_rng(1).choice(model.size, size=min(model.size, 12), replace=False)
    for k in coordinates:
        shift = np.zeros(model.size)
        shift[k] = step
        central = (value(x + shift) - value(x - shift)) / (2 * step)
        np.testing.assert_allclose(gradient(x)[:, k], central, rtol=1e-6, atol=1e-8)
    # every weight is penalised but the intercept column's, and no bias
    first = model.layers[0]
    intercept_row = model.penalised[first.weights + (first.inputs - 1) * first.outputs:][:first.outputs]
    assert intercept_row.sum() == 0
    assert model.penalised.sum() == sum(layer.inputs * layer.outputs for layer in model.layers) - first.outputs


# Mini-batches for every model: each epoch's row is the full batch's loss and gradient, its steps
# the mini-batches', so both are compared; the full batch's steps once (they are the losses' own).
# float32 for one linear model and one network: its rounding is the same kind for the others.
# make test-fast keeps one of them on each framework, a network with mini-batches.
PARITY = [(kind, "64", ("float64", "float32") if kind in ("softmax", "mlp_softmax") else ("float64",))
          for kind in sorted(MODELS)] + [("softmax", "null", ("float64",))]
IN_TEST_FAST = ("mlp_binary", "64")


def parity_params():
    return [pytest.param(backend.values[0], kind, batch_size, dtypes, marks=backend.marks,
                         id=f"{backend.values[0]}-{kind}-{batch_size}")
            for kind, batch_size, dtypes in PARITY
            for backend in backend_params([b for b in BACKENDS if b != "numpy"],
                                          parity=(kind, batch_size) != IN_TEST_FAST)]


@pytest.mark.parametrize("backend, kind, batch_size, dtypes", parity_params())
def test_every_framework_trains_the_same_model(backend, kind, batch_size, dtypes):
    """NumPy by hand against TensorFlow's GradientTape, PyTorch's autograd and JAX's grad: the same
    trajectory, mini-batches (the same order on every backend) or the full batch, float64 to 1e-10
    relative, float32 to 1e-4 (measured: 8e-16 and 4e-7)."""
    for dtype in dtypes:
        rtol = 1e-10 if dtype == "float64" else 1e-4
        reference, other = (descend(*built(*MODELS[kind], f"dtype={dtype}", "epochs=12", f"batch_size={batch_size}",
                                           backend=b)).trajectory(0) for b in ("numpy", backend))
        assert other.x.dtype == np.dtype(dtype)
        for series in ("loss", "x_norm", "whole_grad_norm"):
            np.testing.assert_allclose(getattr(other, series), getattr(reference, series), rtol=rtol)
        assert list(other.measured) == list(reference.measured) == list(reference_names(kind))
        for name, values in reference.measured.items():  # accuracy: a row's class may flip in float32
            np.testing.assert_allclose(other.measured[name], values, rtol=rtol, atol=0 if dtype == "float64" else 0.01)
        np.testing.assert_allclose(other.x, reference.x, rtol=rtol, atol=rtol * np.abs(reference.x).max())


@pytest.mark.parametrize("backend", backend_params(("tf",), parity=True))
def test_tensorflow_with_and_without_xla_trains_numpys_model(backend, monkeypatch):
    """TensorFlow compiles its loop with XLA from `XLA_FROM` numbers a step (a batch of models),
    and runs it as a graph below: both give NumPy's mini-batch trajectory and sharpness."""
    tf_engine = engines.load("tf")
    overrides = (*MODELS["mlp_softmax"], "dtype=float64", "epochs=6", "batch_size=64")
    assert not tf_engine.uses_xla(built(*overrides, backend="tf")[0])
    assert tf_engine.uses_xla(built(*overrides, 'batch.sweep=["lr=range(0.01,1.01,0.01)"]', backend="tf")[0])

    def descent(backend: str):
        prob, engine, _ = built(*overrides, backend=backend)
        step = engine.start(prob)
        return step(7), step.sharpness(10)

    runs = {"numpy": descent("numpy"), "graph": descent("tf")}
    monkeypatch.setattr(tf_engine, "XLA_FROM", 1)  # this one model too
    assert tf_engine.uses_xla(built(*overrides, backend="tf")[0])
    runs["xla"] = descent("tf")
    for name in ("graph", "xla"):
        (rows, sharpness), (reference, reference_sharpness) = runs[name], runs["numpy"]
        for series in ("x", "loss", "grad", "measured"):
            np.testing.assert_allclose(getattr(rows, series), getattr(reference, series), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sharpness, reference_sharpness, rtol=1e-6)


@pytest.mark.parametrize("backend", backend_params(("torch",), parity=True))
@pytest.mark.parametrize("kind", ["softmax", "mlp_softmax"])
def test_measures_taken_many_epochs_at_once_are_each_epochs(backend, kind):
    """PyTorch measures a model's epochs MEASURE_EPOCHS at a time, after their steps: over pieces
    that end mid-span, each epoch's measures are NumPy's, which measures every epoch."""
    rows = {}
    for b in ("numpy", backend):
        prob, engine, _ = built(*MODELS[kind], "dtype=float64", backend=b)
        assert b == "numpy" or 1 < prob.measure_span(8) < 45
        step = engine.start(prob)
        rows[b] = [step(45), step(26)]  # a span and part of the next, then the rest of that and more
    for ours, theirs in zip(rows[backend], rows["numpy"]):
        assert ours.measured.shape == theirs.measured.shape
        np.testing.assert_allclose(ours.measured, theirs.measured, rtol=1e-10)


def test_mini_batch_sgd_is_the_loop_written_by_hand():
    """Three epochs of batch_size=100 on breast cancer (455 rows: four full batches and one of
    55), each epoch's order NumPy's permutation from (seed, epoch), against the loop a user writes."""
    prob, engine, loop_ = built("model=logistic", "data=breast_cancer", "batch_size=100", "lr=0.5", "epochs=3",
                                "dtype=float64", "seed=7")
    model = prob.loss
    x_rows, y, l2 = model.data.x_train, model.data.y_train, model.l2 * model.penalised
    w, expected = np.zeros(model.size), [np.zeros(model.size)]
    for epoch in range(3):
        order = np.random.default_rng([7, epoch]).permutation(len(y))
        for start in range(0, len(y), 100):
            rows = order[start:start + 100]
            p = 1 / (1 + np.exp(-x_rows[rows] @ w))
            w = w - 0.5 * (x_rows[rows].T @ (p - y[rows]) / len(rows) + l2 * w)
        expected.append(w)
    trajectory = descend(prob, engine, loop_).trajectory(0)
    np.testing.assert_allclose(trajectory.x, np.array(expected)[:, :engines.RECORDED], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(trajectory.x_norm, np.linalg.norm(expected, axis=1), rtol=1e-12)
    whole = built("model=logistic", "data=breast_cancer", f"batch_size={len(y)}")[0].loss
    assert whole.batch_size is None  # every row a step: the full batch


def reference_names(kind):
    regression = kind in ("linear", "mlp_regression")
    return ("train_loss", "val_loss") if regression else ("train_loss", "val_loss", "val_accuracy")


@pytest.mark.parametrize("kind", ["linear", "binary", "softmax"])
def test_each_epoch_measures_training_and_validation_loss_and_accuracy(kind):
    """At w = 0 every score is 0: the losses are log 2, log 10 (a softmax) or half the mean square
    of the target, and every row is predicted class 0; each measure is the model's loss (or
    accuracy, as argmax) computed here, on the last epoch's x as the loop recorded it."""
    prob, engine, loop_ = built(*MODELS[kind], "model.l2=0.01", "dtype=float64", "data.intercept=false",
                                "epochs=5")
    model = prob.loss
    trajectory = descend(prob, engine, loop_).trajectory(0)
    data = model.data
    start = {"linear": [np.mean(data.y_train**2) / 2, np.mean(data.y_val**2) / 2],
             "binary": [np.log(2), np.log(2), np.mean(data.y_val == 0)],
             "softmax": [np.log(10), np.log(10), np.mean(data.y_val == 0)]}[kind]
    np.testing.assert_allclose([trajectory.measured[n][0] for n in reference_names(kind)], start, rtol=1e-12)
    x_norm = np.linalg.norm(trajectory.x, axis=1) if trajectory.x_norm is None else trajectory.x_norm
    penalty = 0.01 / 2 * x_norm**2  # no intercept here: every weight is penalised
    np.testing.assert_allclose(trajectory.measured["train_loss"], trajectory.loss - penalty, rtol=1e-10)
    assert trajectory.measured["val_loss"][-1] < trajectory.measured["val_loss"][0]


@pytest.mark.parametrize("data, l2", [("diabetes", 0.0), ("synthetic", 0.0), ("synthetic", 0.5)])
def test_least_squares_ends_at_the_normal_equations_solution(data, l2):
    """Heavy ball at theory's best lr and momentum for the Hessian's spectrum: the parameters
    reach numpy.linalg.lstsq's (ridge: its closed form) to 1e-8 relative in float64."""
    prob, engine, _ = built("model=linear", f"data={data}", f"model.l2={l2}", "dtype=float64")
    model = prob.loss
    x_rows, y, n = model.data.x_train, model.data.y_train, len(model.data.y_train)
    if l2 == 0:
        expected = np.linalg.lstsq(x_rows, y, rcond=None)[0]
    else:
        expected = np.linalg.solve(x_rows.T @ x_rows / n + l2 * np.diag(model.penalised), x_rows.T @ y / n)
    lr, momentum, _ = theory.heavy_ball_optimum(model.curvatures[-1], model.curvatures[0])
    prob = dataclasses.replace(prob, optimizer=Optimizer("momentum", lr=lr, momentum=momentum))
    trajectory = descend(prob, engine, loop(1500)).trajectory(0)
    recorded = trajectory.x.shape[1]  # past RECORDED coordinates, the head and the norm of the whole x
    np.testing.assert_allclose(trajectory.x[-1], expected[:recorded], rtol=1e-8, atol=1e-8 * np.abs(expected).max())
    np.testing.assert_allclose(trajectory.loss[-1], model.minimum_values(prob.shape, 1)[0], rtol=1e-12)
    if trajectory.x_norm is not None:
        np.testing.assert_allclose(trajectory.x_norm[-1], np.linalg.norm(expected), rtol=1e-8)


def test_least_squares_is_stable_up_to_two_over_the_largest_eigenvalue_of_its_hessian():
    prob, engine, _ = built("model=linear", "data=diabetes", "dtype=float64")
    x_rows = prob.loss.data.x_train
    largest = np.linalg.eigvalsh(x_rows.T @ x_rows / len(x_rows))[-1]
    bound = theory.largest_stable_lr("sgd", prob.loss.curvature)
    np.testing.assert_allclose(bound, 2 / largest, rtol=1e-12)
    outcomes = {}
    for factor in (0.95, 1.05):
        at = dataclasses.replace(prob, optimizer=Optimizer("sgd", lr=factor * bound))
        outcomes[factor] = descend(at, engine, loop(600)).summary
        assert (theory.of_problem(at)[0] < 1) == (factor < 1)
    assert outcomes[0.95].outcome[0] != "diverged" and outcomes[0.95].final_loss[0] < 0.5
    assert outcomes[1.05].outcome[0] == "diverged"


@pytest.mark.parametrize("data", ["breast_cancer", "digits"])
def test_logistic_regression_reaches_scikit_learns_objective(data):
    """scikit-learn's LogisticRegression (lbfgs, C = 1 / (l2 n), its own intercept, unpenalised
    as here) against Nesterov's momentum: the same objective to 1e-6 relative."""
    from sklearn.linear_model import LogisticRegression

    l2 = 0.01
    prob, engine, _ = built("model=logistic", f"data={data}", f"model.l2={l2}", "dtype=float64",
                            "optimizer=nesterov", "lr=1.0")
    model = prob.loss
    trajectory = descend(prob, engine, loop(300)).trajectory(0)
    fitted = LogisticRegression(C=1 / (l2 * len(model.data.y_train)), tol=1e-12, max_iter=10_000).fit(
        model.data.x_train[:, :-1], model.data.y_train)
    weights = np.concatenate([fitted.coef_.T, fitted.intercept_[None]]).reshape(-1)  # feature by feature
    theirs = model.objective(NUMPY_OPS, prob.shape)(weights[None])[0]
    np.testing.assert_allclose(trajectory.loss[-1], theirs, rtol=1e-6)
    assert trajectory.loss[-1] <= theirs * (1 + 1e-9)
    assert trajectory.measured["val_accuracy"][-1] == fitted.score(model.data.x_val[:, :-1], model.data.y_val)


def test_a_network_starts_from_its_seed_and_learns_the_digits():
    """Glorot's uniform bound for tanh, biases 0, drawn from `seed`; then momentum with mini-batches
    takes the network past 95% validation accuracy in 30 epochs."""
    first, again, other = (built("model=mlp", "data=digits", f"seed={seed}")[0] for seed in (0, 0, 1))
    np.testing.assert_array_equal(first.x_start, again.x_start)
    assert not np.array_equal(first.x_start, other.x_start)
    model = first.loss
    hidden, output = model.layers
    assert (hidden.inputs, hidden.outputs, output.inputs, output.outputs) == (65, 32, 32, 10)
    assert model.size == 65 * 32 + 32 + 32 * 10 + 10
    weights = first.x_start[0, :65 * 32]
    assert 0 < np.abs(weights).max() <= np.sqrt(6 / (65 + 32)) and not first.x_start[0, 65 * 32:65 * 32 + 32].any()
    prob, engine, loop_ = built("model=mlp", "data=digits", "optimizer=momentum", "lr=0.05", "batch_size=32",
                                "epochs=30")
    trajectory = descend(prob, engine, loop_).trajectory(0)
    assert trajectory.measured["val_accuracy"][-1] > 0.95, trajectory.measured["val_accuracy"]
    assert trajectory.measured["train_loss"][-1] < trajectory.measured["train_loss"][0] / 10


def test_a_model_run_is_named_and_recorded_as_the_model_on_its_data():
    cfg = composed("model=logistic", "data=digits", "backend=torch", "lr=0.1")
    assert app.run_name(cfg) == "torch-sgd-logistic-digits-lr0.1"
    params = app.flat_params(cfg)
    assert params["model"] == "logistic" and params["data"] == "digits" and params["model.l2"] == 0.001
    assert "loss" not in params and "x_start" not in params  # what a model does not read


@pytest.mark.parametrize("overrides, message", [
    (["model=linear"], "model=linear needs data to train on: data=diabetes|breast_cancer|digits|synthetic"),
    (["data=digits"], "data=digits needs a model to train: model=linear|logistic|mlp"),
    (["model=logistic", "data=diabetes"], "model=logistic needs classes: data=diabetes is a regression"),
    (["model=linear", "data=digits"], "model=linear fits a regression target: data=digits is a classification"),
    (["model=logistic", "data=digits", "loss=expr", "loss.expr=x**4"],
     "model=logistic and loss=expr at once: a model's loss is its own on data=digits"),
    (["model=linear", "data=diabetes", "dim=3"], "dim=3 is not allowed with model=linear"),
    (["model=linear", "data=diabetes", "model.l2=-1"], "model.l2=-1.0 is not allowed: it must be a finite number >= 0"),
    (["model=linear", "data=diabetes", "optimizer=polyak"], None),  # least squares knows its minimum
    (["model=logistic", "data=digits", "optimizer=polyak"], "optimizer=polyak needs the loss's minimum f*"),
    (["model=mlp", "data=digits", "model.hidden=[32,0]"], "model.hidden=[32, 0] is not allowed: a list of one or more "
                                                           "integers >= 1"),
    (["model=mlp", "data=digits", "model.hidden=[]"], "model.hidden=[] is not allowed"),
    (["model=mlp", "data=digits", "model.activation=sigmoid"], "model.activation=sigmoid is not allowed: tanh|relu"),
    (["model=logistic", "data=digits", "batch_size=0"],
     "batch_size=0 is not allowed: an integer from 1 to 1438 (the training rows of data=digits), or null"),
    (["model=logistic", "data=digits", "batch_size=-5"], "batch_size=-5 is not allowed: an integer from 1 to 1438"),
    (["model=logistic", "data=digits", "batch_size=1439"], "batch_size=1439 is not allowed: an integer from 1 to 1438"),
    (["batch_size=64"], "batch_size=64 needs a model, whose training rows it batches: model=linear|logistic|mlp data="),
    (["model=linear", "data=diabetes", "optimizer=armijo", "batch_size=32"],
     "optimizer=armijo with batch_size=32 is not allowed: its step reads the loss"),
])
def test_bad_model_input_is_one_line_naming_the_key(overrides, message):
    if message is None:
        built(*overrides)
        return
    with pytest.raises(ConfigError) as error:
        built(*overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


BATCH_OF_NETWORKS = ("model=mlp", "data=breast_cancer", "model.hidden=[8]", "dtype=float64", "epochs=4",
                     "batch_size=100")


@pytest.mark.parametrize("backend", backend_params(parity=True))
def test_a_batch_over_lr_seed_and_weight_decay_is_each_model_trained_alone(backend):
    """`lr`, `seed` (each point's initial weights and mini-batch order) and `model.l2` batched:
    every point of the one program is the run of its setting alone. NumPy bit for bit; the
    frameworks' batched matmuls sum in another order (measured: 1e-14 relative)."""
    batch = ('batch.sweep=["lr=0.1,0.3","seed=0,1","model.l2=0.0,0.01"]', "lr=0.1", "seed=0", "model.l2=0.0")
    prob, loop_, engine, grid = problem.from_config(composed(*BATCH_OF_NETWORKS, *batch, f"backend={backend}"))
    assert grid.count == 8 and prob.point_seeds.tolist() == [0, 0, 1, 1] * 2
    result = descend(prob, engine, loop_)
    rtol = 0 if backend == "numpy" else 1e-12
    for point in (range(8) if backend == "numpy" else (0, 3, 6)):
        alone = descend(*built(*BATCH_OF_NETWORKS, *grid.overrides(point), backend=backend)).trajectory(0)
        together = result.trajectory(point)
        for series in ("x", "loss", "x_norm", "whole_grad_norm"):
            np.testing.assert_allclose(getattr(together, series), getattr(alone, series), rtol=rtol, atol=0)
        for name, values in alone.measured.items():
            np.testing.assert_allclose(together.measured[name], values, rtol=rtol, atol=0)
    # the seed sets where a network starts and the order it sees the rows in
    assert not np.array_equal(result.trajectory(0).x, result.trajectory(2).x)


def test_the_summary_gives_each_measures_final_and_best_value():
    """A point's final and best training loss, validation loss and accuracy (highest), read off
    its rows piece by piece as for the loss, a diverged point's up to its last row."""
    prob, loop_, engine, grid = problem.from_config(composed(
        "model=logistic", "data=breast_cancer", "dtype=float64", "epochs=600", 'batch.sweep=["lr=0.5,1e5"]', "lr=0.5",
        "stop.diverge_above=50"))
    result = descend(prob, engine, dataclasses.replace(loop_, progress=lambda done: None))  # 3 pieces of 256 rows
    assert result.summary.outcome.tolist() == ["not_converged", "diverged"]
    for point in range(2):
        rows = result.trajectory(point).measured
        values = result.summary.values(point)
        for name, series in rows.items():
            best = series.max() if name == "val_accuracy" else series.min()
            assert values[f"final_{name}"] == series[-1] and values[f"best_{name}"] == best, name


def test_a_batch_over_weight_decay_knows_each_points_ridge_solution():
    """Least squares with one l2 per point: each point's Hessian, minimiser and curvature are
    its own, and each point converges to its own ridge solution."""
    prob, loop_, engine, grid = problem.from_config(composed(
        "model=linear", "data=diabetes", "dtype=float64", "epochs=2000", "lr=0.3",
        'batch.sweep=["model.l2=0.1,0.3,1.0"]', "model.l2=0.1"))
    result = descend(prob, engine, loop_)
    for point, l2 in enumerate((0.1, 0.3, 1.0)):
        ridge = built("model=linear", "data=diabetes", f"model.l2={l2}")[0].loss
        np.testing.assert_allclose(prob.loss.minimiser_values()[point], ridge.minimiser_values()[0], rtol=1e-12)
        np.testing.assert_allclose(prob.loss.curvature_values()[point], ridge.curvatures, rtol=1e-12)
        np.testing.assert_allclose(result.summary.final_x[point], ridge.minimiser_values()[0][:engines.RECORDED],
                                   rtol=1e-6, atol=1e-9)
    assert result.summary.rate[2] < result.summary.rate[0] < 1  # weight decay: better conditioned


@pytest.mark.parametrize("sweep, model, message", [
    ('["x_start=1,2"]', "model=linear", "hydra.sweeper.batch: x_start cannot be batched with model=linear; a batch "
                                        "of models may vary lr, optimizer.momentum, optimizer.beta1"),
    ('["model.l2=0.1,0.2"]', None, "hydra.sweeper.batch: model.l2 is a model's weight decay: set model="),
    ('["seed=0,-1"]', "model=linear", "seed=-1 is not allowed in a batch: a seed is an integer >= 0"),
    ('["seed=0,1.5"]', "model=linear", "seed=1.5 is not allowed in a batch: a seed is an integer >= 0"),
    ('["model.l2=0.1,-0.2"]', "model=linear",
     "point #1 (model.l2=-0.2): model.l2=-0.2 is not allowed: it must be a finite number >= 0"),
    # 10^5 networks on digits: 13 GB of weights and their updates, 72 GB of layer outputs
    ('["lr=range(0.001,1,0.001)","seed=range(0,100)"]', "model=mlp",
     "hydra.sweeper.batch: a batch of 99900 points (lr×seed [999×100], x of 2442 coordinates) needs about 80.4 GB "
     "of memory, 67.4 GB of it the models' layer outputs, more than the 16.0 GB available"),
    ('["lr=0.1,0.2","seed=3"]', "model=linear", "seed=3 is one seed: a spread over seeds (batch.spread=true) needs two "
                                                "or more, e.g. 'seed=range(0,5)'; or set batch.spread=false"),
])
def test_bad_model_batch_is_one_line_naming_the_key(sweep, model, message, monkeypatch):
    monkeypatch.setattr(points, "memory_available", lambda: 16 * 2**30)  # as on CI's machine, whatever this one has
    overrides = [f"batch.sweep={sweep}", *([model, "data=diabetes"] if model else [])]
    if model == "model=mlp":
        overrides[-1] = "data=digits"
    with pytest.raises(ConfigError) as error:
        problem.from_config(composed(*overrides))
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


def test_a_model_is_a_loss_to_every_engine():
    """The interface the engines ask of a loss, which a Model has too."""
    prob, _, _ = built(*MODELS["softmax"])
    assert isinstance(prob, engines.Problem) and isinstance(prob.loss, models.Model)
    assert prob.shape == (65 * 10,) and prob.recorded == engines.RECORDED
    assert prob.loss.with_constants({}) is prob.loss and prob.loss.curvature_values() is None


@pytest.mark.slow
def test_a_sweep_of_a_model_over_every_framework_records_its_measures_and_its_dataset(here, store_uri):
    """The sweep a user types, `python -m runner model=logistic data=digits backend=... epochs=50
    lr=0.1`, from Python in this process: each framework's run has the same loss, measures and
    dataset inputs (training and validation, as the UI's dataset column shows them)."""
    import runner
    from mlflow import MlflowClient

    backends = ",".join(backend for backend in BACKENDS if installed(backend))
    grid = runner.sweep("model=logistic", "data=digits", f"backend={backends}", "epochs=50", "lr=0.1",
                        "dtype=float64")
    client = MlflowClient(store_uri)
    runs = [client.get_run(r.run_id) for r in grid.runs()]
    assert len(runs) == len(backends.split(",")) and {r.info.status for r in runs} == {"FINISHED"}
    histories = {}
    for run in runs:
        assert run.info.run_name == f"{run.data.params['backend']}-sgd-logistic-digits-lr0.1"
        histories[run.data.params["backend"]] = {
            name: np.array([m.value for m in sorted(client.get_metric_history(run.info.run_id, name),
                                                    key=lambda m: m.step)])
            for name in ("loss", "train_loss", "val_loss", "val_accuracy")}
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert sorted(inputs) == ["training", "validation"]
        assert {d.name for d in inputs.values()} == {"digits"}
        assert '"features_shape": [1438, 65]' in inputs["training"].profile
    numpy = histories["numpy"]
    assert len(numpy["val_accuracy"]) == 51 and numpy["val_accuracy"][-1] > 0.9
    for backend, history in histories.items():
        for name, values in history.items():
            np.testing.assert_allclose(values, numpy[name], rtol=1e-10, err_msg=f"{backend} {name}")


@pytest.mark.slow
def test_a_batch_over_seeds_reports_the_mean_and_std_of_each_setting(here, store_uri):
    """`lr=0.1,1 seed=range(0,4)` batched on two backends: each batch's seeds.csv and the report's
    give, per lr, the mean and sample std over the four seeds of what points.csv holds per point;
    the parent run carries the best setting's, the table and the figure with bands."""
    import pandas
    import runner
    from mlflow import MlflowClient

    sweep = runner.sweep("model=mlp", "data=breast_cancer", "model.hidden=[8]", "batch_size=100", "epochs=4",
                         "lr=0.1,1", "seed=range(0,4)", "backend=numpy,torch", batch=True)
    assert len(sweep.table) == 2 and sweep.table["over_seeds"].str.match(
        r"final_val_accuracy 0\.9\d* ± [\d.e-]+ over 4 seeds at lr=").all()
    by_point = pandas.read_csv(sweep.report_file("points.csv"))
    spread = pandas.read_csv(sweep.report_file("seeds.csv"))
    assert len(spread) == 4 and (spread["seeds"] == 4).all() and (spread["diverged"] == 0).all()
    for _, row in spread.iterrows():
        mine = by_point[(by_point["backend"] == row["backend"]) & (by_point["lr"] == row["lr"])]
        assert sorted(mine["seed"]) == [0, 1, 2, 3]
        for name in ("final_val_accuracy", "best_val_loss", "final_train_loss"):
            assert row[f"{name}.mean"] == pytest.approx(mine[name].mean(), rel=1e-12)
            assert row[f"{name}.std"] == pytest.approx(mine[name].std(ddof=1), rel=1e-12)
    parent = MlflowClient(store_uri).get_run(sweep.parent_run_id).data.metrics
    assert parent["seeds/final_val_accuracy.mean"] == pytest.approx(spread["final_val_accuracy.mean"].max())
    assert parent["seeds/settings"] == 4
    assert sweep.report_file("seeds.png").stat().st_size > 10_000


def test_a_model_run_reproduces_even_one_recorded_before_its_measures_summary(here, store_uri, monkeypatch):
    """`runner.reproduce RUN_ID` of a model's run compares its final and best measures too; a run
    recorded before the runner logged them (no `final_val_loss` metric) still reproduces."""
    import runner
    from runner import reproduce
    from runner.records import tracking

    run = runner.run("model=logistic", "data=breast_cancer", "epochs=5", "batch_size=100")
    assert {"final_val_loss", "best_val_accuracy"} <= set(run.summary)
    assert reproduce.main([run.run_id]) == 0  # its final and best measures compared too

    recorded = tracking._record

    def before(mlflow_run):  # the run as the last release recorded it
        record = recorded(mlflow_run)
        kept = {k: v for k, v in record.metrics.items() if not k.startswith(("final_val", "best_", "final_train"))}
        return dataclasses.replace(record, metrics=kept)

    monkeypatch.setattr(tracking, "_record", before)
    assert reproduce.main([run.run_id]) == 0


@pytest.mark.slow
def test_the_classify_preset_reports_validation_accuracy_over_seeds(here, store_uri):
    """experiment=classify on one backend, one lr, three seeds and 3 epochs (the preset's own is
    16 batches of 3 lr × 5 seeds): both models and both optimizers as batches, each with its
    validation accuracy's mean ± std over the seeds and every validation curve with its band."""
    import pandas
    import runner

    grid = runner.sweep("experiment=classify", "backend=numpy", "lr=0.1", "seed=range(0,3)", "epochs=3")
    table = grid.table
    assert sorted(zip(table["loss"], table["optimizer"])) == [
        ("logistic on digits", "momentum"), ("logistic on digits", "sgd"), ("mlp on digits", "momentum"),
        ("mlp on digits", "sgd")]
    assert (table["batched"] == "lr×seed [1×3]").all() and table["over_seeds"].str.contains(" over 3 seeds").all()
    spread = pandas.read_csv(grid.report_file("seeds.csv"))
    assert len(spread) == 4 and spread["final_val_accuracy.mean"].between(0.5, 1).all()
    assert (spread.loc[spread["loss"] == "mlp on digits", "final_val_accuracy.std"] > 0).all()  # seeds differ
    assert grid.report_file("validation.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_regression_preset_finds_the_stability_bound_of_least_squares(here, store_uri):
    """experiment=regression on NumPy: 120 learning rates as one batch; the largest lr whose
    measured rate is below 1 is within one grid step (0.005) of 2/λmax of XᵀX/n."""
    import runner

    dense = runner.sweep("experiment=regression", "hydra.sweeper.params.backend=numpy", batch=True)
    (row,) = dense.table.to_dict("records")
    x_rows = built("model=linear", "data=diabetes")[0].loss.data.x_train
    bound = 2 / np.linalg.eigvalsh(x_rows.T @ x_rows / len(x_rows))[-1]
    assert row["points"] == 120 and abs(row["largest_stable_lr"] - bound) <= 0.005, row
    assert row["largest_stable_lr_theory"] == pytest.approx(bound, rel=1e-3)
