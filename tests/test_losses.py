"""Loss expressions (runner.problems.expressions) and loss files (runner.problems.losses): parsed and checked,
never evaluated as raw text, bounded in what they cost."""

from __future__ import annotations

import ast
import contextlib
import re
import signal
import sys
import tracemalloc
from typing import Iterator

import numpy as np
import pytest
from conftest import REPO
from omegaconf import OmegaConf

from runner.engines.numpy import OPS
from runner.problems import expressions, losses
from runner.problems.expressions import parse_expression
from runner.schema import ConfigError, LossConfig


@pytest.mark.parametrize("text, x, expected", [
    ("x**2", 3.0, 9.0),
    ("2*x", 3.0, 6.0),
    ("-x + 1/2", 1.0, -0.5),
    ("sqrt(abs(x)) * exp(0) + log(1) + tanh(0) + cos(0) + sin(0)", -4.0, 3.0),
])
def test_expressions_compute(text, x, expected):
    assert parse_expression("loss.value", text).bind(OPS)(np.float64(x)) == pytest.approx(expected)


@pytest.mark.parametrize("text, problem", [
    ("__import__('os').system('true')", "this call"),
    ("__import__('os')", "this call"),
    ("x + __builtins__", "the name '__builtins__'"),
    ("x.real", "Attribute"),
    ("y**2", "the name 'y'"),
    ("'a' * x", "the constant 'a'"),
    ("x if x else 1", "IfExp"),
    ("x @ x", "the operator MatMult"),
    ("sin(x, 2)", "this call"),
    ("x**", "is not an expression"),
    ("lambda: 1", "Lambda"),
])
def test_bad_expressions_name_the_key_and_the_allowed_syntax(text, problem):
    with pytest.raises(ConfigError) as error:
        parse_expression("loss.value", text)
    message = str(error.value)
    assert message.startswith(f"loss.value={text!r}") and problem in message
    assert "allowed: numbers, x, x[i], + - * / **" in message and "\n" not in message


LOSS_FILES = sorted(path.stem for path in (REPO / "conf" / "loss").glob("*.yaml") if path.stem != "expr")


def load_loss(name: str, **overrides) -> losses.Loss:
    cfg = OmegaConf.merge(OmegaConf.structured(LossConfig), OmegaConf.load(REPO / "conf" / "loss" / f"{name}.yaml"),
                          overrides)
    return losses.from_config(cfg)


@pytest.mark.parametrize("name", LOSS_FILES)
def test_each_loss_file_has_the_right_derivative(name):
    """The hand-written derivative agrees with finite differences and with the symbolic one."""
    loss = load_loss(name)
    shape = (loss.dim,) if loss.dim else ()
    value = loss.objective(OPS, shape)
    rng = np.random.default_rng(0)
    for point in rng.uniform(-2, 2, size=(10, *shape)):
        hand = np.array([g.bind(OPS)(point) for g in loss.grad])
        symbolic = np.array([expressions.derivative(loss.value, k if loss.dim else None).bind(OPS)(point)
                             for k in (range(loss.dim) if loss.dim else [None])])
        numeric = np.array([(value(point + h) - value(point - h)) / 2e-6
                            for h in (np.eye(loss.dim) * 1e-6 if loss.dim else [1e-6])])
        np.testing.assert_allclose(hand, symbolic, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(hand, numeric, rtol=1e-5, atol=1e-4)
    if loss.minimiser is not None:
        at_minimum = loss.minimiser_values()[0] if loss.dim else loss.minimiser_values()[0, 0]
        gradient = loss.gradient(OPS, shape)
        if loss.domain is not None:  # a constrained minimum, at an end where the loss rises inward
            low, high = loss.domain
            assert (at_minimum == low and gradient(at_minimum) > 0) or (at_minimum == high and gradient(at_minimum) < 0)
            return
        assert np.allclose(gradient(at_minimum), 0.0)
        if loss.spectrum_known():  # the curvatures are the Hessian's eigenvalues at the minimiser
            steps = np.eye(loss.dim) * 1e-6 if loss.dim else [1e-6]
            hessian = np.array([(gradient(at_minimum + h) - gradient(at_minimum - h)) / 2e-6 for h in steps])
            np.testing.assert_allclose(np.linalg.eigvalsh(hessian.reshape((loss.dim or 1,) * 2)),
                                       np.sort(loss.curvature_values()[0]), rtol=1e-5)


def test_constants_and_derived_facts():
    quadratic = load_loss("quadratic", params={"a": 2.0, "b": -1.5})
    assert quadratic.minimiser_values().tolist() == [[-1.5]] and quadratic.curvature == 4.0
    assert quadratic.value.bind(OPS)(0.5) == pytest.approx(8.0)


def test_constants_may_hold_one_value_per_point():
    """A batch of three points with a = 1, 2, 3: the loss, its derivative and what is known follow."""
    quadratic = load_loss("quadratic").with_constants({"a": np.array([1.0, 2.0, 3.0])})
    x = np.array([2.0, 2.0, 2.0])  # x - b = 1 at every point
    assert quadratic.objective(OPS, ())(x).tolist() == [1.0, 2.0, 3.0]
    assert quadratic.gradient(OPS, ())(x).tolist() == [2.0, 4.0, 6.0]
    assert quadratic.curvature_values().tolist() == [[2.0], [4.0], [6.0]]
    ill = load_loss("ill_conditioned").with_constants({"L": np.array([1.0, 4.0])})
    assert ill.objective(OPS, (2,))(np.array([[0.0, 1.0], [0.0, 1.0]])).tolist() == [0.5, 2.0]
    assert ill.gradient(OPS, (2,))(np.array([[1.0, 1.0], [1.0, 1.0]])).tolist() == [[0.01, 1.0], [0.01, 4.0]]


def test_rows_of_points_are_computed_at_once():
    """Recorded rows (rows, points, *shape): x[i] is the last axis, a sum over coordinates too."""
    rosenbrock = load_loss("rosenbrock")
    rows = np.array([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 2.0], [-1.0, 1.0]]])  # 2 rows of 2 points
    assert rosenbrock.objective(OPS, (2,))(rows).tolist() == [[0.0, 1.0], [100.0, 4.0]]
    square = load_loss("square")
    assert square.objective(OPS, (3,))(np.ones((2, 4, 3))).tolist() == [[3.0] * 4] * 2


@pytest.mark.parametrize("expression, x, expected", [
    ("x**4 - 3*x**2 + x", 2.0, 4 * 8 - 6 * 2 + 1),
    ("sin(x)*exp(x)", 0.3, np.cos(0.3) * np.exp(0.3) + np.sin(0.3) * np.exp(0.3)),
    ("log(x)/x", 2.0, (1 - np.log(2.0)) / 4),
    ("sqrt(x**2 + 1) - tanh(x)", 0.7, 0.7 / np.sqrt(1.49) - (1 - np.tanh(0.7) ** 2)),
    ("x**x", 1.5, 1.5**1.5 * (np.log(1.5) + 1)),
    ("abs(x - 3)", 1.0, -1.0),
    ("-x/2 + 7", 1.0, -0.5),
])
def test_symbolic_derivatives(expression, x, expected):
    grad = expressions.derivative(parse_expression("loss.value", expression)).bind(OPS)
    assert grad(np.float64(x)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("overrides, message", [
    ({"value": "x[0]**2"}, "uses x[i]: set loss.dim"),
    ({"value": "x[2]**2", "dim": 2}, "write the coordinates as x[0] .. x[1]"),
    ({"value": "x**2", "dim": 2}, "write the coordinates as x[0] .. x[1]"),
    ({"value": "x[0]**2 + x[1]**2", "dim": 2, "grad": "2*x[0]"}, "loss.grad has 1 expressions: loss.dim=2 needs 2"),
    ({"value": "x**2", "params": {"sin": 1.0}}, "loss.params.sin: a constant cannot be called 'sin'"),
    ({"value": "x**2", "curvature": "2*q"}, "loss.curvature='2*q': the name 'q' is not allowed"),
    ({"value": "x[0]**2 + x[1]**2", "dim": 2, "curvature": [2, 2, 2]},
     "loss.curvature has 3 values: give the largest, or one per coordinate (loss.dim=2)"),
    ({"value": "x**2", "params": {"__pow__": 1.0}}, "loss.params.__pow__: a constant cannot be called '__pow__'"),
])
def test_bad_loss_configs(overrides, message):
    cfg = OmegaConf.merge(OmegaConf.structured(LossConfig), {"name": "bad", **overrides})
    with pytest.raises(ConfigError, match=re.escape(message)):
        losses.from_config(cfg)


# --- what an expression may cost -----------------------------------------------------------------

def _towers():
    """Towers of powers of integer literals, as a new user might type them."""
    yield from ("9**9**9", "2**2**2**2**2", "(9**9)**9**9", "10**10**10", "99**99**99 - x", "x*7**7**7**7")
    rng = np.random.default_rng(0)
    for _ in range(12):
        height = int(rng.integers(3, 6))
        yield "x + " + "**".join(str(int(v)) for v in rng.integers(2, 10, height))


BOUNDLESS = [
    *(("tower", text) for text in _towers()),
    ("long", "x" + "+x" * 5000),
    ("long", "x*" + "1" * 5000),
    ("deep", "x" + "+x" * 800),
    ("deep", "(" * 300 + "x" + ")" * 300),
    ("deep", "sin(" * 150 + "x" + ")" * 150),
    ("deep", "x" + "**x" * 200),
    ("huge", "x*1e400"),
    ("huge", "x + " + "9" * 400),
    ("huge", "x*(10**300*10**300)"),
    ("accepted", "x*10**300*10**300"),  # (x*1e300)*1e300: no constant part overflows; x does, to inf
    ("domain", "x*log(0)"),
    ("domain", "x*(-8)**(1/3)"),
    ("domain", "x*exp(1000)"),
]


# The work any expression may cost, counted rather than timed (a loaded machine is slow, not
# wrong): function calls, Python's and C's, and memory at its peak. The family below takes at
# most about 40,000 calls and 1 MB; one exact power like 9**387420489 would take some 150 MB.
MAX_CALLS, MAX_BYTES = 1_000_000, 16 * 2**20


@contextlib.contextmanager
def counted_work() -> Iterator[dict]:
    """Count the calls made and the memory held at the peak in the block; a minute's alarm
    stops a block whose work has no bound at all, so that it fails instead of hanging."""
    work = {"calls": 0, "peak": 0}

    def count(frame, event, arg):
        if event in ("call", "c_call"):
            work["calls"] += 1

    def stop(signum, frame):
        raise TimeoutError("unbounded work: still computing after 60 s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    tracemalloc.start()
    sys.setprofile(count)
    try:
        yield work
    finally:
        sys.setprofile(None)
        work["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind, text", BOUNDLESS, ids=[f"{k}-{t[:30]}" for k, t in BOUNDLESS])
def test_an_expression_is_computed_with_bounded_work_or_refused_at_once(kind, text):
    """Any string is accepted and computes with bounded work, or is refused at once with one line
    naming the key and the limit; a constant part is worked out when parsed, in floating point,
    never in Python's exact (and unbounded) integers."""
    refused = None
    with counted_work() as work:
        try:
            expression = parse_expression("loss.expr", text)
            with np.errstate(all="ignore"):
                values = expression.bind(OPS)(np.linspace(-2, 2, 5))
                expressions.derivative(expression).bind(OPS)(np.linspace(-2, 2, 5))
        except ConfigError as error:
            refused = str(error)
    assert work["calls"] <= MAX_CALLS and work["peak"] <= MAX_BYTES, work
    if refused is not None:
        assert refused.startswith("loss.expr='") and "\n" not in refused and len(refused) < 400, refused
        assert any(limit in refused for limit in (
            "an expression may have at most 2000", "an expression may nest at most 100 deep",
            "constants must stay finite real numbers", "beyond the largest float"))
        return
    assert kind in ("tower", "accepted"), f"{text[:40]} was accepted"  # some short towers are finite numbers
    assert values.shape == (5,)


def test_an_expression_within_the_limits_is_accepted():
    polynomial = " + ".join(f"{k}*x**{k}" for k in range(1, 40))  # 39 terms, about 300 characters
    nested = "sin(" * 40 + "x" + ")" * 40
    for text in (polynomial, nested, "x**(2*2) - 3*x**2 + 1e-300*x"):
        expression = parse_expression("loss.expr", text)
        assert np.isfinite(expression.bind(OPS)(np.float64(0.5)))
    assert ast.unparse(parse_expression("loss.expr", "x**(2*2)").tree) == "x ** 4"  # folded, still an integer
