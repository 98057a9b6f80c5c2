"""Losses written as expressions in their YAML file, so that adding a loss is one small file.

A loss file under `conf/loss/` gives the value and the hand-written derivative of a function of
`x`, as expressions over numbers, `x`, `+ - * / **`, a few functions, and named constants:

    # conf/loss/quadratic.yaml
    name: quadratic
    value: a*(x - b)**2
    grad: 2*a*(x - b)
    params: {a: 3.0, b: 1.0}
    minimiser: b
    curvature: 2*a

Without `dim`, the expression acts on each coordinate and the loss of a vector is the sum over
coordinates. With `dim: N` the parameter is a vector of N coordinates written `x[0]`, `x[1]`, ...,
and `grad` is a list of N partial derivatives. Without `grad`, the derivative is worked out
symbolically (`derivative`), which is what `loss=expr loss.expr='...'` relies on.

Each expression is parsed with `ast`, checked against a short list of allowed syntax, and
compiled into a plain Python function whose only free names are `x`, the constants, and the
functions of the chosen framework (`np.sin`, `tf.sin`, `torch.sin`, ...). The raw string is never
`eval`-ed, and the same expression runs on NumPy arrays, TensorFlow variables and PyTorch tensors
through their operator overloads, so every engine differentiates exactly the same function.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from runner.schema import ConfigError

FUNCTIONS = ("sin", "cos", "tanh", "exp", "log", "sqrt", "abs")
VARIABLE = "x"

_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd)
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load, ast.Call,
            ast.Subscript)


def _allowed_text(names: Sequence[str]) -> str:
    constants = f", the constants {', '.join(names)}" if names else ""
    return f"numbers, x, x[i], + - * / **{constants} and the functions {', '.join(FUNCTIONS)}"


@dataclass(frozen=True)
class Expression:
    """A checked expression of `x`; `bind(ops)` turns it into a function of that framework."""

    text: str
    tree: ast.expr
    constants: Mapping[str, float] = field(default_factory=dict)

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
                body=self.tree,
            )
        )
        code = compile(ast.fix_missing_locations(function), f"<{self.text}>", "eval")
        namespace = {"__builtins__": {}, **{name: ops[name] for name in FUNCTIONS}, **self.constants}
        return eval(code, namespace)  # noqa: S307 - a checked tree of arithmetic, not user text


def parse_expression(key: str, text: str, constants: Optional[Mapping[str, float]] = None,
                     variable: bool = True) -> Expression:
    """Parse and check `text`; a ConfigError names `key` and the allowed syntax.

    >>> parse_expression("loss.value", "a*x**2", {"a": 3.0}).text
    'a*x**2'
    """
    constants = dict(constants or {})
    names = set(constants) | ({VARIABLE} if variable else set())
    try:
        tree = ast.parse(str(text).strip(), mode="eval")
    except SyntaxError as error:
        raise ConfigError(
            f"{key}={text!r} is not an expression ({error.msg}); allowed: {_allowed_text(list(constants))}"
        )
    for node in ast.walk(tree):
        problem = _problem(node, names)
        if problem:
            raise ConfigError(
                f"{key}={text!r}: {problem} is not allowed; allowed: {_allowed_text(list(constants))}"
            )
    return Expression(text=str(text), tree=tree.body, constants=constants)


def _problem(node: ast.AST, names: set[str]) -> Optional[str]:
    if isinstance(node, ast.operator | ast.unaryop):
        return None if isinstance(node, _OPERATORS) else f"the operator {type(node).__name__}"
    if not isinstance(node, _ALLOWED):
        return f"{type(node).__name__}"
    if isinstance(node, ast.Constant) and (
        isinstance(node.value, bool) or not isinstance(node.value, int | float)
    ):
        return f"the constant {node.value!r}"
    if isinstance(node, ast.Name) and node.id not in (*names, *FUNCTIONS):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Call) and not (
        isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
        and len(node.args) == 1 and not node.keywords
    ):
        return "this call"
    if isinstance(node, ast.Subscript) and _coordinate(node) is None:
        return "a subscript other than x[<integer>]"
    return None


def _coordinate(node: ast.AST) -> Optional[int]:
    """i for a node `x[i]`, else None."""
    if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
            and node.value.id == VARIABLE and isinstance(node.slice, ast.Constant)
            and type(node.slice.value) is int and node.slice.value >= 0):
        return node.slice.value
    return None


# --- symbolic differentiation -------------------------------------------------------------------

def derivative(expression: Expression, coordinate: Optional[int] = None) -> Expression:
    """d expression / dx (or / d x[coordinate]), as a new checked Expression.

    >>> derivative(parse_expression("loss.value", "x**4 - 3*x**2 + x")).text
    '4 * x ** 3 - 3 * (2 * x) + 1'
    >>> derivative(parse_expression("loss.value", "(1 - x[0])**2 + x[0]*x[1]"), 1).text
    'x[0]'
    """
    tree = _d(expression.tree, coordinate)
    return Expression(text=ast.unparse(tree), tree=tree, constants=expression.constants)


def _num(value: float) -> ast.expr:
    value = int(value) if float(value).is_integer() else value
    return ast.UnaryOp(ast.USub(), ast.Constant(-value)) if value < 0 else ast.Constant(value)


def _is(node: ast.expr, value: float) -> bool:
    return isinstance(node, ast.Constant) and node.value == value


def _add(a: ast.expr, b: ast.expr) -> ast.expr:
    if _is(a, 0):
        return b
    if _is(b, 0):
        return a
    return ast.BinOp(a, ast.Add(), b)


def _sub(a: ast.expr, b: ast.expr) -> ast.expr:
    if _is(b, 0):
        return a
    if _is(a, 0):
        return _neg(b)
    return ast.BinOp(a, ast.Sub(), b)


def _neg(a: ast.expr) -> ast.expr:
    if isinstance(a, ast.Constant):
        return _num(-a.value)
    return ast.UnaryOp(ast.USub(), a)


def _mul(a: ast.expr, b: ast.expr) -> ast.expr:
    if _is(a, 0) or _is(b, 0):
        return ast.Constant(0)
    if _is(a, 1):
        return b
    if _is(b, 1):
        return a
    if isinstance(a, ast.Constant) and isinstance(b, ast.Constant):
        return _num(a.value * b.value)
    return ast.BinOp(a, ast.Mult(), b)


def _div(a: ast.expr, b: ast.expr) -> ast.expr:
    if _is(a, 0):
        return ast.Constant(0)
    if _is(b, 1):
        return a
    return ast.BinOp(a, ast.Div(), b)


def _pow(a: ast.expr, b: ast.expr) -> ast.expr:
    if _is(b, 1):
        return a
    if _is(b, 0):
        return ast.Constant(1)
    return ast.BinOp(a, ast.Pow(), b)


def _call(name: str, a: ast.expr) -> ast.expr:
    return ast.Call(ast.Name(name, ast.Load()), [a], [])


def _depends(node: ast.expr, coordinate: Optional[int]) -> bool:
    for child in ast.walk(node):
        if coordinate is None and isinstance(child, ast.Name) and child.id == VARIABLE:
            return True
        if coordinate is not None and _coordinate(child) == coordinate:
            return True
    return False


def _d(node: ast.expr, k: Optional[int]) -> ast.expr:
    if not _depends(node, k):
        return ast.Constant(0)
    if isinstance(node, ast.Name) or _coordinate(node) is not None:
        return ast.Constant(1)
    if isinstance(node, ast.UnaryOp):
        inner = _d(node.operand, k)
        return _neg(inner) if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        a, b, op = node.left, node.right, node.op
        if isinstance(op, ast.Add):
            return _add(_d(a, k), _d(b, k))
        if isinstance(op, ast.Sub):
            return _sub(_d(a, k), _d(b, k))
        if isinstance(op, ast.Mult):
            return _add(_mul(_d(a, k), b), _mul(a, _d(b, k)))
        if isinstance(op, ast.Div):
            return _div(_sub(_mul(_d(a, k), b), _mul(a, _d(b, k))), _pow(b, ast.Constant(2)))
        if isinstance(op, ast.Pow):
            if not _depends(b, k):  # a**n: n * a**(n-1) * a'
                exponent = _num(b.value - 1) if isinstance(b, ast.Constant) else _sub(b, ast.Constant(1))
                return _mul(_mul(b, _pow(a, exponent)), _d(a, k))
            # a**b = exp(b log a): a**b * (b' log a + b a' / a)
            return _mul(node, _add(_mul(_d(b, k), _call("log", a)), _div(_mul(b, _d(a, k)), a)))
    if isinstance(node, ast.Call):
        name, a = node.func.id, node.args[0]
        outer = {
            "sin": lambda: _call("cos", a),
            "cos": lambda: _neg(_call("sin", a)),
            "tanh": lambda: _sub(ast.Constant(1), _pow(_call("tanh", a), ast.Constant(2))),
            "exp": lambda: _call("exp", a),
            "log": lambda: _div(ast.Constant(1), a),
            "sqrt": lambda: _div(ast.Constant(1), _mul(ast.Constant(2), _call("sqrt", a))),
            "abs": lambda: _div(a, _call("abs", a)),
        }[name]()
        return _mul(outer, _d(a, k))
    raise AssertionError(f"unchecked node {ast.dump(node)}")  # parse_expression allows no other


# --- losses -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Loss:
    """A loss: its value, its derivative (one expression, or one per coordinate), what is known.

    `dim` None: `value` and `grad` act on each coordinate, and the loss is their sum.
    """

    name: str
    value: Expression
    grad: tuple[Expression, ...]
    dim: Optional[int] = None
    minimiser: Optional[tuple[float, ...]] = None
    curvature: Optional[float] = None  # largest second derivative at the minimiser: stable for lr < 2/L

    def objective(self, ops: Mapping[str, Callable], shape: tuple[int, ...]) -> Callable[[Any], Any]:
        """The scalar loss of a parameter of `shape` (an elementwise loss is summed)."""
        value = self.value.bind(ops)
        if self.dim is not None or shape == ():
            return value
        total = ops["sum"]
        return lambda x: total(value(x))

    def shape(self, x_start: Sequence[float]) -> tuple[int, ...]:
        """The parameter's shape for a start of these coordinates (one number: a scalar)."""
        if self.dim is not None:
            return (self.dim,)
        return () if len(x_start) == 1 else (len(x_start),)


def from_config(cfg: Any) -> Loss:
    """Build the Loss of a composed `loss` config node, checking every expression."""
    constants = {str(k): float(v) for k, v in (cfg.params or {}).items()}
    for name in constants:
        if name in (VARIABLE, *FUNCTIONS) or not name.isidentifier():
            raise ConfigError(f"loss.params.{name}: a constant cannot be called {name!r}")
    value = parse_expression("loss.value", cfg.value, constants)
    dim = cfg.dim
    coordinates = sorted({_coordinate(n) for n in ast.walk(value.tree)} - {None})
    if dim is None and coordinates:
        raise ConfigError(f"loss.value={cfg.value!r} uses x[i]: set loss.dim to the number of coordinates")
    if dim is not None and (coordinates and coordinates[-1] >= dim or _depends_on_whole_x(value)):
        raise ConfigError(f"loss.value={cfg.value!r}: with loss.dim={dim}, write the coordinates "
                          f"as x[0] .. x[{dim - 1}]")
    if cfg.grad is None:
        grad = tuple(derivative(value, k) for k in (range(dim) if dim else [None]))
    else:
        texts = [cfg.grad] if isinstance(cfg.grad, str) else list(cfg.grad)
        if len(texts) != (dim or 1):
            raise ConfigError(f"loss.grad has {len(texts)} expressions: loss.dim={dim} needs "
                              f"{dim or 1} (one partial derivative per coordinate)")
        grad = tuple(parse_expression("loss.grad", text, constants) for text in texts)
    return Loss(name=cfg.name, value=value, grad=grad, dim=dim,
                minimiser=_constant_vector("loss.minimiser", cfg.minimiser, constants),
                curvature=_constant("loss.curvature", cfg.curvature, constants))


def _depends_on_whole_x(expression: Expression) -> bool:
    subscripted = {id(n.value) for n in ast.walk(expression.tree) if _coordinate(n) is not None}
    return any(isinstance(n, ast.Name) and n.id == VARIABLE and id(n) not in subscripted
               for n in ast.walk(expression.tree))


def _constant(key: str, value: Any, constants: Mapping[str, float]) -> Optional[float]:
    """A number, or an expression of the loss's constants such as `2*a`."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    from runner.engines.numpy import OPS

    number = float(parse_expression(key, value, constants, variable=False).bind(OPS)(None))
    if not math.isfinite(number):
        raise ConfigError(f"{key}={value!r} is not a finite number")
    return number


def _constant_vector(key: str, value: Any, constants: Mapping[str, float]) -> Optional[tuple[float, ...]]:
    if value is None:
        return None
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    return tuple(_constant(key, v, constants) for v in values)
