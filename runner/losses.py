"""Losses written as expressions in their YAML file, so that adding a loss is one small file.

A loss file under `conf/loss/` gives the value and the hand-written derivative of a function of
`x`, as expressions over numbers, `x`, `+ - * / **` and a few functions:

    # conf/loss/square.yaml
    name: square
    value: x**2
    grad: 2*x
    minimiser: 0.0
    curvature: 2.0

Each expression is parsed with `ast`, checked against a short list of allowed syntax, and
compiled into a plain Python function whose only free names are `x` and the functions of the
chosen framework (`np.sin`, `tf.sin`, `torch.sin`, ...). The raw string is never `eval`-ed,
and the same expression runs on NumPy scalars, TensorFlow variables and PyTorch tensors
through their operator overloads, so every engine differentiates exactly the same function.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from runner.schema import ConfigError

FUNCTIONS = ("sin", "cos", "tanh", "exp", "log", "sqrt", "abs")
VARIABLE = "x"

_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd)
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load, ast.Call)
_ALLOWED_TEXT = f"numbers, {VARIABLE}, + - * / ** and the functions {', '.join(FUNCTIONS)}"


@dataclass(frozen=True)
class Expression:
    """A checked expression of `x`; `bind(ops)` turns it into a function of that framework."""

    text: str
    tree: ast.Expression

    def bind(self, ops: Mapping[str, Callable[[Any], Any]]) -> Callable[[Any], Any]:
        """The expression as `f(x)`, its functions taken from `ops` (an engine's `OPS`).

        >>> from runner.engines.numpy import OPS
        >>> float(parse_expression("loss.value", "x**2 + sin(x)").bind(OPS)(0.5))
        0.729425538604203
        """
        function = ast.Expression(
            body=ast.Lambda(
                args=ast.arguments(
                    posonlyargs=[], args=[ast.arg(arg=VARIABLE)], kwonlyargs=[],
                    kw_defaults=[], defaults=[],
                ),
                body=self.tree.body,
            )
        )
        code = compile(ast.fix_missing_locations(function), f"<{self.text}>", "eval")
        namespace = {"__builtins__": {}, **{name: ops[name] for name in FUNCTIONS}}
        return eval(code, namespace)  # noqa: S307 - a checked tree of arithmetic, not user text


def parse_expression(key: str, text: str) -> Expression:
    """Parse and check `text`; a ConfigError names `key` and the allowed syntax.

    >>> parse_expression("loss.value", "x**2").text
    'x**2'
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ConfigError(f"{key}={text!r} is not an expression ({error.msg}); allowed: {_ALLOWED_TEXT}")
    for node in ast.walk(tree):
        problem = _problem(node)
        if problem:
            raise ConfigError(f"{key}={text!r}: {problem} is not allowed; allowed: {_ALLOWED_TEXT}")
    return Expression(text=text, tree=tree)


def _problem(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.operator | ast.unaryop):
        return None if isinstance(node, _OPERATORS) else f"the operator {type(node).__name__}"
    if not isinstance(node, _ALLOWED):
        return f"{type(node).__name__}"
    if isinstance(node, ast.Constant) and (
        isinstance(node.value, bool) or not isinstance(node.value, int | float)
    ):
        return f"the constant {node.value!r}"
    if isinstance(node, ast.Name) and node.id not in (VARIABLE, *FUNCTIONS):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Call) and not (
        isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
        and len(node.args) == 1 and not node.keywords
    ):
        return "this call"
    return None


@dataclass(frozen=True)
class Loss:
    """A loss: its value, its hand-written derivative, and what is known of its minimum."""

    name: str
    value: Expression
    grad: Expression
    minimiser: Optional[float] = None
    curvature: Optional[float] = None


def from_config(cfg: Any) -> Loss:
    """Build the Loss of a composed `loss` config node, checking both expressions."""
    return Loss(
        name=cfg.name,
        value=parse_expression("loss.value", cfg.value),
        grad=parse_expression("loss.grad", cfg.grad),
        minimiser=cfg.minimiser,
        curvature=cfg.curvature,
    )
