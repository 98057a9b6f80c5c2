"""Every update rule gives the same path on every backend; the hand-written rules are right."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, REPO, backend_params
from omegaconf import OmegaConf

from runner import engines, losses
from runner.engines import Problem
from runner.optimizers import RULES, Optimizer
from runner.schema import LossConfig

OPTIMIZERS = {
    "sgd": Optimizer("sgd", 0.01),
    "momentum": Optimizer("momentum", 0.01, momentum=0.9),
    "nesterov": Optimizer("nesterov", 0.01, momentum=0.9),
    "adam": Optimizer("adam", 0.05, beta1=0.9, beta2=0.999, eps=1e-8),
}
STARTS = {"square": 5.0, "double_well": 2.5, "rosenbrock": [-1.5, 2.0]}


def test_every_rule_is_tested():
    assert set(OPTIMIZERS) == set(RULES)


def load_loss(name):
    path = REPO / "conf" / "loss" / f"{name}.yaml"
    return losses.from_config(OmegaConf.merge(OmegaConf.structured(LossConfig), OmegaConf.load(path)))


def descend(backend, loss_name, optimizer, dtype, epochs=300):
    loss = load_loss(loss_name)
    if loss.dim:  # Rosenbrock's valley is steep: a smaller step keeps every rule stable
        optimizer = Optimizer(optimizer.name, optimizer.lr / 20, optimizer.momentum, optimizer.beta1,
                              optimizer.beta2, optimizer.eps)
    start = np.broadcast_to(np.array(STARTS[loss_name], float), (loss.dim,) if loss.dim else ()).copy()
    engine = engines.load(backend)
    return engine.descend(Problem(loss, start, epochs, optimizer, dtype, engine.resolve_device("cpu")))


def tolerance(backend, optimizer, dtype):
    if backend == "tf" and optimizer == "adam":
        # Keras adds eps to sqrt(v) where PyTorch adds it to the bias-corrected sqrt(v_hat):
        # the rules differ by O(eps) per step, not by rounding.
        return {"float32": 1e-4, "float64": 1e-7}[dtype]
    return {"float32": 1e-5, "float64": 1e-12}[dtype]


@pytest.mark.parametrize("backend", backend_params([b for b in BACKENDS if b != "numpy"]))
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss_name", sorted(STARTS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_framework_optimizers_trace_the_numpy_path(backend, optimizer, loss_name, dtype):
    expected = descend("numpy", loss_name, OPTIMIZERS[optimizer], dtype)
    actual = descend(backend, loss_name, OPTIMIZERS[optimizer], dtype)
    assert actual.x.shape == expected.x.shape
    scale = np.maximum(1.0, np.abs(expected.x.astype(np.float64)))
    assert np.max(np.abs(actual.x - expected.x) / scale) <= tolerance(backend, optimizer, dtype)


def step(name, grads, x0=1.0, **hyper):
    init, update = RULES[name](Optimizer(name, **hyper), float)
    x, xs = x0, []
    state = init(x)
    for g in grads:
        x, state = update(g, state, x)
        xs.append(x)
    return xs


def test_momentum_by_hand():
    # b1 = g1 = 1 -> x = 1 - 0.1; b2 = 0.5 * 1 + 2 = 2.5 -> x = 0.9 - 0.25
    assert step("momentum", [1.0, 2.0], lr=0.1, momentum=0.5) == pytest.approx([0.9, 0.65])


def test_nesterov_by_hand():
    # b1 = 1 -> x = 1 - 0.1 (1 + 0.5); b2 = 2.5 -> x = 0.85 - 0.1 (2 + 1.25)
    assert step("nesterov", [1.0, 2.0], lr=0.1, momentum=0.5) == pytest.approx([0.85, 0.525])


def test_adam_first_step_is_lr_in_the_gradient_direction():
    # m_hat = g, v_hat = g^2: the first step is lr * g / (|g| + eps), whatever the gradient's size
    for g in (1e-3, 1.0, 1e3):
        assert step("adam", [g], lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)[0] == pytest.approx(0.9, rel=2e-6)
