"""Online losses (`loss.online`: f_t = online[t mod n], one update each) with updates projected
onto `loss.domain`, and Reddi et al.'s counterexample (`experiment=reddi`): Adam goes to the worst
point, AMSGrad to the best, on every backend; bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend_params, built

from runner.descent.loop import descend
from runner.errors import ConfigError

REDDI = ("loss=reddi", "x_start=0", "lr=0.01", "optimizer.beta1=0", "optimizer.beta2=0.1", "dtype=float64")


def by_hand(rule: str, cycles: int, C: float = 3.0, lr: float = 0.01, beta2: float = 0.1) -> np.ndarray:
    """x at the start of each cycle: Adam or AMSGrad (beta1 = 0, PyTorch's bias correction, eps
    1e-8) on f_t = C x when t mod 3 = 1 else -x, each step projected onto [-1, 1]."""
    x, v, largest, path = 0.0, 0.0, 0.0, [0.0]
    for t in range(3 * cycles):
        g = C if t % 3 == 1 else -1.0
        v = beta2 * v + (1 - beta2) * g * g
        largest = max(largest, v)
        second = largest if rule == "amsgrad" else v
        x = x - lr * g / (np.sqrt(second) / np.sqrt(1 - beta2 ** (t + 1)) + 1e-8)
        x = min(1.0, max(-1.0, x))
        if t % 3 == 2:
            path.append(x)
    return np.array(path)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("rule", ["adam", "amsgrad"])
def test_adam_and_amsgrad_on_reddis_loss_are_the_loop_written_by_hand(backend, rule):
    result = descend(*built(*REDDI, f"optimizer={rule}", "epochs=400", backend=backend))
    expected = by_hand(rule, 400)
    np.testing.assert_allclose(result.x[:, 0], expected, rtol=1e-12, atol=1e-15)
    assert (expected[-1] > 0.99) if rule == "adam" else (expected[-1] < -0.99)
    np.testing.assert_allclose(result.loss[:, 0], (3 - 2) * expected / 3, rtol=1e-12, atol=1e-15)  # the cycle's mean


def test_the_reddi_preset_sends_adam_to_the_worst_point_and_amsgrad_to_the_best(here, store_uri):
    import runner

    grid = runner.sweep("experiment=reddi")
    final = dict(zip(grid.table["optimizer"], grid.table["final_x"]))
    assert final["adam"] > 0.99 and final["amsgrad"] < -0.99, final
    assert grid.report_file("paths.png").stat().st_size > 10_000


def test_an_online_loss_of_a_vector_sums_its_coordinates():
    prob, engine, loop = built("loss=expr", "loss.expr=x**2", "loss.online=[x**2,2*x**2]", "x_start=[1,-2]",
                               "optimizer=sgd", "lr=0.1", "epochs=2", "dtype=float64")
    x = np.array([1.0, -2.0])
    for _ in range(2):
        x = x * (1 - 0.1 * 2)  # f_0 = x^2
        x = x * (1 - 0.1 * 4)  # f_1 = 2 x^2
    np.testing.assert_allclose(descend(prob, engine, loop).x[-1, 0], x, rtol=1e-14)


@pytest.mark.parametrize("overrides, message", [
    (["loss=reddi", "loss.domain=[1,-1]"], "loss.domain=[1.0, -1.0] is not allowed: two finite numbers [low, high], low < high"),
    (["loss=reddi", "loss.domain=[0]"], "loss.domain=[0.0] is not allowed"),
    (["loss=rosenbrock", "loss.online=[x]"], "loss.online is an elementwise loss's: loss.dim=2 is not allowed with it"),
])
def test_bad_online_input_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        built(*overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)
