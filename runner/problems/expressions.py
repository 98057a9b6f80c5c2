"""The expressions losses are written in: parsed, checked, bounded, compiled for any framework,
and differentiated symbolically.

An expression is a function of `x` over numbers, `x` (or its coordinates `x[0]`, `x[1]`, ...),
`+ - * / **`, the functions `sin cos tanh exp log sqrt abs` and named constants. It is parsed
with `ast`, checked against that short list, and compiled into a plain Python function whose only
free names are `x`, the constants, and the functions of the chosen framework (`np.sin`, `tf.sin`,
`torch.sin`, ...). The raw string is never `eval`-ed, and the same expression runs on NumPy
arrays, TensorFlow variables and PyTorch tensors through their operator overloads, so every
engine differentiates exactly the same function.

What an expression may cost is bounded (`MAX_LENGTH`, `MAX_DEPTH`, constant parts computed when
parsed, in floating point): any string is computed in bounded time, or refused at once.

Every function is compiled for a leading point axis: `x` holds one parameter per point of a
batch (shape `(points, *shape)`, or `(rows, points, *shape)` for recorded rows), `x[i]` is
compiled as `x[..., i]`, and a constant may hold one value per point (`loss.params.a=1,2,3`
in a batched sweep). `a**b` is compiled as the framework's `pow`: NumPy's scalar power rounds
differently from its array power, and the NumPy engine steps a single run on scalars.
"""

from __future__ import annotations

import ast
import copy
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from runner.errors import ConfigError

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

    def bind(self, ops: Mapping[str, Callable[..., Any]],
             constants: Optional[Mapping[str, Any]] = None) -> Callable[[Any], Any]:
        """The expression as `f(x)`, its functions and `pow` taken from `ops` (an engine's `OPS`),
        its constants from `constants` (default: those it was parsed with).

        >>> float(parse_expression("loss.value", "x**2 + sin(x)").bind(NUMPY_OPS)(0.5))
        0.729425538604203
        >>> parse_expression("loss.value", "a*x[1]", {"a": 1.0}).bind(NUMPY_OPS, {"a": np.array([2.0, 3.0])})(
        ...     np.array([[1.0, 10.0], [1.0, 100.0]])).tolist()   # two points, two coordinates each
        [20.0, 300.0]
        """
        function = ast.Expression(
            body=ast.Lambda(
                args=ast.arguments(
                    posonlyargs=[], args=[ast.arg(arg=VARIABLE)], kwonlyargs=[],
                    kw_defaults=[], defaults=[],
                ),
                body=_for_points(self.tree),
            )
        )
        code = compile(ast.fix_missing_locations(function), f"<{self.text}>", "eval")
        namespace = {"__builtins__": {}, **{name: ops[name] for name in FUNCTIONS}, _POW: ops["pow"],
                     **(self.constants if constants is None else constants)}
        return eval(code, namespace)  # noqa: S307 - a checked tree of arithmetic, not user text


_POW = "__pow__"  # the name `a**b` is compiled to; no expression can spell it (names are checked)


class _ForPoints(ast.NodeTransformer):
    """x[i] -> x[..., i] (the coordinate axis is the last, points and rows come first);
    a**b -> __pow__(a, b), the framework's power."""

    def visit_Subscript(self, node: ast.Subscript) -> ast.expr:
        i = coordinate_of(node)
        index = ast.Tuple([ast.Constant(Ellipsis), ast.Constant(i)], ast.Load())
        return ast.Subscript(ast.Name(VARIABLE, ast.Load()), index, ast.Load())

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        node = self.generic_visit(node)
        if isinstance(node.op, ast.Pow):
            return ast.Call(ast.Name(_POW, ast.Load()), [node.left, node.right], [])
        return node


def _for_points(tree: ast.expr) -> ast.expr:
    return _ForPoints().visit(copy.deepcopy(tree))


# What an expression may cost, so that any string is either computed in bounded time or refused
# at once: its length, how deep its operations nest (parsing, compiling and differentiating
# recurse that deep), and constant parts computed when it is parsed, in floating point, so
# that no tower of integer powers (9**9**9) is ever worked out in Python's exact integers.
MAX_LENGTH = 2000
MAX_DEPTH = 100


def parse_expression(key: str, text: str, constants: Optional[Mapping[str, float]] = None,
                     variable: bool = True) -> Expression:
    """Parse and check `text`; a ConfigError names `key` and the allowed syntax, or the limit.

    >>> parse_expression("loss.value", "a*x**2", {"a": 3.0}).text
    'a*x**2'
    >>> ast.unparse(parse_expression("loss.value", "x**(2**3) + 10**-1*sin(0) - 2").tree)
    'x ** 8 + 0 - 2'
    """
    constants = dict(constants or {})
    names = set(constants) | ({VARIABLE} if variable else set())
    text = str(text).strip()
    shown = _shown(text)
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"{key}={shown}: {len(text)} characters; an expression may have at most {MAX_LENGTH}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        if "too many nested" in str(error.msg):  # the parser's own limit on parentheses
            raise ConfigError(f"{key}={shown}: nested too deep; an expression may nest at most {MAX_DEPTH} deep")
        raise ConfigError(
            f"{key}={shown} is not an expression ({error.msg}); allowed: {_allowed_text(list(constants))}"
        )
    except (RecursionError, MemoryError):  # the parser's own limit on nesting
        raise ConfigError(f"{key}={shown}: nested too deep; an expression may nest at most {MAX_DEPTH} deep")
    depth = _depth(tree)
    if depth > MAX_DEPTH:
        raise ConfigError(f"{key}={shown}: nested {depth} deep; an expression may nest at most {MAX_DEPTH} deep")
    for node in ast.walk(tree):
        problem = _problem(node, names)
        if problem:
            raise ConfigError(
                f"{key}={shown}: {problem} is not allowed; allowed: {_allowed_text(list(constants))}"
            )
    return Expression(text=text, tree=_folded(tree.body, key, shown), constants=constants)


def _shown(text: str, limit: int = 60) -> str:
    """The text for a message: quoted, and cut short past `limit` characters."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def _depth(tree: ast.AST) -> int:
    """How deep the operations of `tree` nest (without recursing: the tree may be deep)."""
    deepest, stack = 0, [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


_MATH = {"sin": math.sin, "cos": math.cos, "tanh": math.tanh, "exp": math.exp, "log": math.log,
         "sqrt": math.sqrt, "abs": abs}
_ARITHMETIC = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a**b}


def _folded(node: ast.expr, key: str, shown: str) -> ast.expr:
    """`node` with every part made of numbers alone computed, in floating point (an integral
    result that is exact stays an integer: `x**(2*2)` is `x**4`); a part that overflows, divides
    by zero or leaves the real numbers is a ConfigError."""
    if isinstance(node, ast.BinOp):
        node = ast.BinOp(_folded(node.left, key, shown), node.op, _folded(node.right, key, shown))
        parts = (node.left, node.right)
    elif isinstance(node, ast.UnaryOp):
        node = ast.UnaryOp(node.op, _folded(node.operand, key, shown))
        parts = (node.operand,)
    elif isinstance(node, ast.Call):
        node = ast.Call(node.func, [_folded(a, key, shown) for a in node.args], [])
        parts = tuple(node.args)
    else:
        return node
    numbers = [_number(p) for p in parts]
    if any(n is None for n in numbers):
        return node
    values = [float(n) for n in numbers]
    try:
        if isinstance(node, ast.BinOp):
            value = _ARITHMETIC[type(node.op)](*values)
        elif isinstance(node, ast.UnaryOp):
            value = -values[0] if isinstance(node.op, ast.USub) else values[0]
        else:
            value = _MATH[node.func.id](values[0])
    except (OverflowError, ZeroDivisionError, ValueError) as error:
        raise ConfigError(f"{key}={shown}: its constant part {_shown(ast.unparse(node), 40)} cannot be computed "
                          f"({error}); constants must stay finite real numbers")
    if isinstance(value, complex) or not math.isfinite(value):
        raise ConfigError(f"{key}={shown}: its constant part {_shown(ast.unparse(node), 40)} is not a finite real "
                          f"number; constants must stay finite real numbers")
    return _num(value)


def _number(node: ast.expr) -> Optional[float]:
    """The number a node of numbers alone stands for (`-2` parses as minus 2), else None."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    return None


def _problem(node: ast.AST, names: set[str]) -> Optional[str]:
    if isinstance(node, ast.operator | ast.unaryop):
        return None if isinstance(node, _OPERATORS) else f"the operator {type(node).__name__}"
    if not isinstance(node, _ALLOWED):
        return f"{type(node).__name__}"
    if isinstance(node, ast.Constant) and (
        isinstance(node.value, bool) or not isinstance(node.value, int | float)
    ):
        return f"the constant {node.value!r}"
    if isinstance(node, ast.Constant) and not abs(node.value) <= sys.float_info.max:  # NaN fails `<=`
        return f"the number {_shown(str(node.value), 40)}, beyond the largest float,"
    if isinstance(node, ast.Name) and node.id not in (*names, *FUNCTIONS):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Call) and not (
        isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
        and len(node.args) == 1 and not node.keywords
    ):
        return "this call"
    if isinstance(node, ast.Subscript) and coordinate_of(node) is None:
        return "a subscript other than x[<integer>]"
    return None


def coordinate_of(node: ast.AST) -> Optional[int]:
    """i for a node `x[i]`, else None.

    >>> coordinate_of(ast.parse("x[1]", mode="eval").body), coordinate_of(ast.parse("x", mode="eval").body)
    (1, None)
    """
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
    """A number as a node: an integral one as an integer while that is exact (|v| <= 2^53), else
    a float (never a big Python integer, which a derivative's products could grow without bound)."""
    value = int(value) if float(value).is_integer() and abs(value) <= 2**53 else float(value)
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
        if coordinate is not None and coordinate_of(child) == coordinate:
            return True
    return False


def _d(node: ast.expr, k: Optional[int]) -> ast.expr:
    if not _depends(node, k):
        return ast.Constant(0)
    if isinstance(node, ast.Name) or coordinate_of(node) is not None:
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


# --- evaluated with NumPy: the numpy engine, and constants such as a loss's curvature `2*a` --------

def numpy_power(a, b):
    """a**b as NumPy's ufuncs, whose scalar and array results agree (the `**` of a NumPy scalar
    rounds differently from an array's); a square as np.square, 3.5x faster than np.power (and
    what `**` does for an array); plain Python numbers (constants alone) keep Python's `**`.

    >>> numpy_power(np.float64(3.0), 2), numpy_power(2, 3)
    (np.float64(9.0), 8)
    """
    if not isinstance(a, (np.ndarray, np.generic)) and not isinstance(b, (np.ndarray, np.generic)):
        return a**b
    if isinstance(b, (int, float)) and b == 2:
        return np.square(a)
    return np.power(a, b)


NUMPY_OPS = {"sin": np.sin, "cos": np.cos, "tanh": np.tanh, "exp": np.exp, "log": np.log,
             "sqrt": np.sqrt, "abs": np.abs, "maximum": np.maximum, "where": np.where, "pow": numpy_power,
             "sum": lambda v, axes: np.sum(v, axis=axes),
             "stack": lambda parts: np.stack(np.broadcast_arrays(*parts), axis=-1),
             "matmul": np.matmul, "reshape": np.reshape, "logsumexp": lambda v: _logsumexp(v),
             "take": lambda v, indices: np.take(v, indices, axis=0),
             "log_softmax": lambda v: v - _logsumexp(v)[..., None],
             "argmax": lambda v: np.argmax(v, axis=-1).astype(v.dtype)}


def _logsumexp(v: np.ndarray) -> np.ndarray:
    """log(sum(exp(v))) over the last axis, without overflow (a model's softmax)."""
    top = np.max(v, axis=-1, keepdims=True)
    return (top + np.log(np.sum(np.exp(v - top), axis=-1, keepdims=True)))[..., 0]
