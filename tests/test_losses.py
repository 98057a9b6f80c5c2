"""Loss expressions: parsed and checked, never evaluated as raw text."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO
from omegaconf import OmegaConf

from runner import losses
from runner.engines.numpy import OPS
from runner.losses import parse_expression
from runner.schema import ConfigError


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
    assert "allowed: numbers, x, + - * / **" in message and "\n" not in message


def test_every_loss_file_parses_and_its_grad_is_its_derivative():
    for path in sorted((REPO / "conf" / "loss").glob("*.yaml")):
        loss = losses.from_config(OmegaConf.load(path))
        value, grad = loss.value.bind(OPS), loss.grad.bind(OPS)
        for x in np.linspace(-3, 3, 13):
            numeric = (value(x + 1e-6) - value(x - 1e-6)) / 2e-6
            assert grad(x) == pytest.approx(numeric, rel=1e-5, abs=1e-5), (path.name, x)
        if loss.minimiser is not None:
            assert grad(loss.minimiser) == pytest.approx(0.0, abs=1e-9), path.name
