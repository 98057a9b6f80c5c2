"""Every update rule gives the same path on every backend; the rules, written once for every
framework, are right by hand and trace each framework's own optimizer class on single points."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, REPO, backend_params, loop, one_point
from omegaconf import OmegaConf

from runner import engines
from runner.descent.loop import descend as run
from runner.descent.optimizers import RULES, Optimizer, needs_minimum
from runner.engines.numpy import OPS
from runner.problems import losses
from runner.schema import LossConfig

OPTIMIZERS = {
    "sgd": Optimizer("sgd", 0.01),
    "momentum": Optimizer("momentum", 0.01, momentum=0.9),
    "nesterov": Optimizer("nesterov", 0.01, momentum=0.9),
    "adam": Optimizer("adam", 0.05, beta1=0.9, beta2=0.999, eps=1e-8),
    "amsgrad": Optimizer("amsgrad", 0.05, beta1=0.9, beta2=0.999, eps=1e-8),
    "polyak": Optimizer("polyak", 0.5),
    "armijo": Optimizer("armijo", 1.0, decrease=1e-4, shrink=0.5),
}
STARTS = {"square": 5.0, "double_well": 2.5, "rosenbrock": [-1.5, 2.0]}


def test_every_rule_is_tested():
    assert set(OPTIMIZERS) == set(RULES)


def load_loss(name):
    path = REPO / "conf" / "loss" / f"{name}.yaml"
    return losses.from_config(OmegaConf.merge(OmegaConf.structured(LossConfig), OmegaConf.load(path)))


# Polyak's step bounces across Rosenbrock's valley, where |g| is small and f - f* is not: a
# difference of rounding grows a hundredfold every ten steps (float32 through XLA: one ulp at
# step 20, 2.5e-7 at 30, 1e-3 at 40), so there the backends are compared over the first 30.
PARITY_EPOCHS = {("polyak", "rosenbrock"): 30}


def descend(backend, loss_name, optimizer, dtype, epochs=300):
    loss = load_loss(loss_name)
    if needs_minimum(optimizer.name) and loss.minimiser is None:
        pytest.skip(f"optimizer={optimizer.name} needs the minimum, which loss={loss_name} does not know")
    if loss.dim:  # Rosenbrock's valley is steep: a smaller step keeps every rule stable
        optimizer = Optimizer(optimizer.name, **{**optimizer.hyperparameters(), "lr": optimizer.lr / 20})
    start = np.broadcast_to(np.array(STARTS[loss_name], float), (loss.dim,) if loss.dim else ()).copy()
    engine = engines.load(backend)
    return run(one_point(loss, start, optimizer, dtype, engine), engine, loop(epochs)).trajectory(0)


def tolerance(backend, optimizer, dtype):
    return {"float32": 1e-5, "float64": 1e-12}[dtype]


@pytest.mark.parametrize("backend", backend_params([b for b in BACKENDS if b != "numpy"], parity=True))
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss_name", sorted(STARTS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_framework_optimizers_trace_the_numpy_path(backend, optimizer, loss_name, dtype):
    epochs = PARITY_EPOCHS.get((optimizer, loss_name), 300)
    expected = descend("numpy", loss_name, OPTIMIZERS[optimizer], dtype, epochs)
    actual = descend(backend, loss_name, OPTIMIZERS[optimizer], dtype, epochs)
    assert actual.x.shape == expected.x.shape
    scale = np.maximum(1.0, np.abs(expected.x.astype(np.float64)))
    assert np.max(np.abs(actual.x - expected.x) / scale) <= tolerance(backend, optimizer, dtype)


def step(name, grads, x0=1.0, **hyper):
    init, update = RULES[name][0]({"lr": 0.0, **hyper}, OPS)
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


# --- the frameworks' own optimizer classes, on single points -------------------------------------

def reference_path(backend, optimizer, x0, epochs):
    """x on y = x^2 stepped by the framework's own optimizer class (torch.optim, keras, optax),
    in float64: the rows the runner's rule must reproduce."""
    o = optimizer
    if backend == "torch":
        import torch

        x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        opt = (torch.optim.Adam([x], lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, amsgrad=o.name == "amsgrad")
               if o.name in ("adam", "amsgrad") else
               torch.optim.SGD([x], lr=o.lr, momentum=o.momentum or 0.0, nesterov=o.name == "nesterov"))
        path = []
        for _ in range(epochs + 1):
            path.append(x.item())
            opt.zero_grad()
            (x**2).backward()
            opt.step()
        return np.array(path)
    if backend == "tf":
        import tensorflow as tf

        # Keras would keep Python floats in float32: NumPy float64s, and lr as a float64 tensor
        x, lr = tf.Variable(x0, dtype=tf.float64), tf.constant(o.lr, tf.float64)
        f64 = np.float64
        opt = (tf.keras.optimizers.Adam(lambda: lr, beta_1=f64(o.beta1), beta_2=f64(o.beta2), epsilon=f64(o.eps),
                                        amsgrad=o.name == "amsgrad")
               if o.name in ("adam", "amsgrad") else
               tf.keras.optimizers.SGD(lambda: lr, momentum=f64(o.momentum or 0.0), nesterov=o.name == "nesterov"))
        path = []
        for _ in range(epochs + 1):
            path.append(float(x.numpy()))
            with tf.GradientTape() as tape:
                y = x**2
            opt.apply_gradients([(tape.gradient(y, x), x)])
        return np.array(path)
    import jax.numpy as jnp
    import optax

    opt = (getattr(optax, o.name)(o.lr, b1=o.beta1, b2=o.beta2, eps=o.eps) if o.name in ("adam", "amsgrad") else
           optax.sgd(o.lr, momentum=o.momentum, nesterov=o.name == "nesterov"))
    x, path = jnp.float64(x0), []
    state = opt.init(x)
    for _ in range(epochs + 1):
        path.append(float(x))
        updates, state = opt.update(2 * x, state, x)
        x = optax.apply_updates(x, updates)
    return np.array(path)


# Keras and optax put Adam's eps on sqrt(v) where PyTorch (and the runner) put it on the
# bias-corrected sqrt(v_hat): a difference of O(eps) a step, not of rounding. Every other rule
# agrees to float64 rounding.
REFERENCE_TOLERANCE = {("tf", "adam"): 1e-6, ("jax", "adam"): 1e-6, ("tf", "amsgrad"): 1e-6}
# Where a framework's class of the same name is another rule, or it has none: no reference there.
ANOTHER_RULE = {("jax", "amsgrad"): "optax.amsgrad keeps the largest bias-corrected second moment, PyTorch and Keras "
                                    "the largest raw one: 0.33 relative apart after 100 steps on y = x^2",
                **{(backend, "armijo"): "the runner's Armijo is the reference (halving from lr, c = 1e-4); the "
                   "frameworks have no such optimizer class" for backend in ("tf", "torch", "jax")},
                ("torch", "polyak"): "torch.optim has no Polyak step", ("tf", "polyak"): "Keras has no Polyak step",
                ("jax", "polyak"): "optax.polyak_sgd (0.2.8) stepped x = 5 on y = x^2 by -5 at scaling 0.5, where "
                                   "0.5 (f - f*) / |g|^2 g is -1.25: not a reference until that is understood"}


@pytest.mark.parametrize("backend", backend_params([b for b in BACKENDS if b in ("tf", "torch", "jax")], parity=True))
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_rules_trace_the_frameworks_own_optimizers(backend, name):
    if (backend, name) in ANOTHER_RULE:
        pytest.skip(ANOTHER_RULE[backend, name])
    o = OPTIMIZERS[name]
    reference = reference_path(backend, o, 5.0, 100)
    ours = descend(backend, "square", o, "float64", epochs=100).x
    scale = np.maximum(1.0, np.abs(reference))
    assert np.max(np.abs(ours - reference) / scale) <= REFERENCE_TOLERANCE.get((backend, name), 1e-12)


def test_amsgrad_never_lets_a_step_grow_where_adam_does():
    """Gradients 4 then 1: Adam's second moment falls and its next step is larger than
    AMSGrad's, which divides by the largest second moment so far."""
    hyper = dict(lr=0.1, beta1=0.0, beta2=0.5, eps=0.0)
    adam, amsgrad = step("adam", [4.0, 1.0], **hyper), step("amsgrad", [4.0, 1.0], **hyper)
    assert adam[0] == amsgrad[0] == pytest.approx(0.9)
    assert amsgrad[1] == pytest.approx(0.9 - 0.1 * np.sqrt(0.75 / 8)) and amsgrad[1] > adam[1]


@pytest.mark.parametrize("backend", backend_params())
def test_the_polyak_step_on_y_equals_x_squared_is_one_quarter(backend):
    """(f - f*) / |g|^2 = x^2 / 4x^2: x halves every step, on every backend, to the last bit."""
    x = descend(backend, "square", Optimizer("polyak", 1.0), "float64", epochs=40).x
    assert x.tolist() == (5.0 * 0.5 ** np.arange(41)).tolist()


@pytest.mark.parametrize("backend", backend_params())
def test_armijo_from_lr_one_accepts_one_half_and_lands_on_the_minimum(backend):
    """On y = x^2 the step 1 would land on -x (no decrease): it is halved once, to 1/2, which
    lands on 0 in one step; there the line search accepts its first step, which moves nothing."""
    x = descend(backend, "square", Optimizer("armijo", 1.0, decrease=1e-4, shrink=0.5), "float64", epochs=5).x
    assert x.tolist() == [5.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_a_rule_takes_one_hyperparameter_per_point():
    """Three points with three learning rates and momenta: each steps as it would alone."""
    lr, m = np.array([0.1, 0.2, 0.3]), np.array([0.0, 0.5, 0.9])
    init, update = RULES["momentum"][0]({"lr": lr, "momentum": m}, OPS)
    x, g = np.ones(3), np.array([1.0, 2.0, 3.0])
    x, state = update(g, init(x), x)
    x, _ = update(g, state, x)
    for i in range(3):
        assert x[i] == step("momentum", [g[i], g[i]], lr=lr[i], momentum=m[i])[-1]
