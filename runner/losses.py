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

Every function is compiled for a leading point axis: `x` holds one parameter per point of a
batch (shape `(points, *shape)`, or `(rows, points, *shape)` for recorded rows), `x[i]` is
compiled as `x[..., i]`, and a constant may hold one value per point (`loss.params.a=1,2,3`
in a batched sweep). `a**b` is compiled as the framework's `pow`: NumPy's scalar power rounds
differently from its array power, and the NumPy engine steps a single run on scalars.
"""

from __future__ import annotations

import ast
import dataclasses
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

        >>> from runner.engines.numpy import OPS
        >>> float(parse_expression("loss.value", "x**2 + sin(x)").bind(OPS)(0.5))
        0.729425538604203
        >>> parse_expression("loss.value", "a*x[1]", {"a": 1.0}).bind(OPS, {"a": np.array([2.0, 3.0])})(
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
        i = _coordinate(node)
        index = ast.Tuple([ast.Constant(Ellipsis), ast.Constant(i)], ast.Load())
        return ast.Subscript(ast.Name(VARIABLE, ast.Load()), index, ast.Load())

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        node = self.generic_visit(node)
        if isinstance(node.op, ast.Pow):
            return ast.Call(ast.Name(_POW, ast.Load()), [node.left, node.right], [])
        return node


def _for_points(tree: ast.expr) -> ast.expr:
    import copy

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
    """A number as a node; an integral one as an integer while that is exact (|v| <= 2^53)."""
    value = int(value) if float(value).is_integer() and abs(value) <= 2**53 else value
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
    `minimiser` and `curvatures` are expressions of the constants; `curvatures` are the
    Hessian's eigenvalues at the minimiser (one for a loss of each coordinate, or the largest
    alone). `constants` hold a number each, or an array of one number per point of a batch.
    """

    name: str
    value: Expression
    grad: tuple[Expression, ...]
    dim: Optional[int] = None
    minimiser: Optional[tuple[Expression, ...]] = None
    curvatures: Optional[tuple[Expression, ...]] = None
    constants: Mapping[str, Any] = field(default_factory=dict)

    def objective(self, ops: Mapping[str, Callable], shape: tuple[int, ...],
                  convert: Optional[Callable] = None) -> Callable[[Any], Any]:
        """The loss of each point: x of shape (..., *shape) -> (...), an elementwise loss summed
        over the coordinates. `convert` turns a per-point constant into the framework's array."""
        value = self.value.bind(ops, self._constants(shape, convert))
        if self.dim is not None or shape == ():
            return value
        total, axes = ops["sum"], tuple(range(-len(shape), 0))
        return lambda x: total(value(x), axes)

    def gradient(self, ops: Mapping[str, Callable], shape: tuple[int, ...],
                 convert: Optional[Callable] = None) -> Callable[[Any], Any]:
        """The hand-written derivative: x of shape (..., *shape) -> the same shape."""
        constants = self._constants(shape, convert)
        parts = [part.bind(ops, constants) for part in self.grad]
        if self.dim is None:
            return parts[0]
        stack = ops["stack"]
        return lambda x: stack([part(x) for part in parts])

    def _constants(self, shape: tuple[int, ...], convert: Optional[Callable]) -> dict[str, Any]:
        """Per-point constants shaped to broadcast against what the expressions see: x itself
        for an elementwise loss, (points,) coordinates x[..., i] for a loss of `dim` coordinates."""
        trailing = (1,) * len(shape) if self.dim is None else ()
        return {name: value if np.ndim(value) == 0 else (convert or np.asarray)(value.reshape(-1, *trailing))
                for name, value in self.constants.items()}

    def with_constants(self, values: Mapping[str, Any]) -> "Loss":
        """The same loss with some constants replaced (by numbers, or arrays of one per point)."""
        return dataclasses.replace(self, constants={**self.constants, **values})

    def minimiser_values(self) -> Optional[np.ndarray]:
        """The minimiser for each point, shape (points, k) (k = 1 for a loss of each coordinate)."""
        return None if self.minimiser is None else self._evaluate(self.minimiser)

    def curvature_values(self) -> Optional[np.ndarray]:
        """The curvatures for each point, shape (points, m)."""
        return None if self.curvatures is None else self._evaluate(self.curvatures)

    @property
    def curvature(self) -> Optional[float]:
        """The largest curvature L, for a loss whose constants hold one number each."""
        values = self.curvature_values()
        return None if values is None else float(values.max(axis=1)[0])

    def spectrum_known(self) -> bool:
        """Whether `curvatures` are all the Hessian's eigenvalues (not the largest alone)."""
        return self.curvatures is not None and len(self.curvatures) == (self.dim or 1)

    def _evaluate(self, expressions: Sequence[Expression]) -> np.ndarray:
        from runner.engines.numpy import OPS

        points = max((np.size(v) for v in self.constants.values() if np.ndim(v)), default=1)
        columns = [np.broadcast_to(np.asarray(e.bind(OPS, self.constants)(None), dtype=np.float64), (points,))
                   for e in expressions]
        return np.stack(columns, axis=1)

    def shape(self, x_start: Sequence[float]) -> tuple[int, ...]:
        """The parameter's shape for a start of these coordinates (one number: a scalar)."""
        if self.dim is not None:
            return (self.dim,)
        return () if len(x_start) == 1 else (len(x_start),)


def from_config(cfg: Any) -> Loss:
    """Build the Loss of a composed `loss` config node, checking every expression."""
    constants = {str(k): float(v) for k, v in (cfg.params or {}).items()}
    for name in constants:
        if name in (VARIABLE, *FUNCTIONS) or not name.isidentifier() or name.startswith("__"):
            raise ConfigError(f"loss.params.{name}: a constant cannot be called {name!r}")
    # loss=expr: the user typed loss.expr, which loss.value interpolates: name what was typed
    key = "loss.expr" if cfg.get("expr") is not None else "loss.value"
    value = parse_expression(key, cfg.value, constants)
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
    curvatures = _constants("loss.curvature", cfg.curvature, constants)
    if curvatures is not None and len(curvatures) not in (1, dim or 1):
        raise ConfigError(f"loss.curvature has {len(curvatures)} values: give the largest, or one per "
                          f"coordinate (loss.dim={dim})")
    return Loss(name=cfg.name, value=value, grad=grad, dim=dim,
                minimiser=_constants("loss.minimiser", cfg.minimiser, constants),
                curvatures=curvatures, constants=constants)


def _depends_on_whole_x(expression: Expression) -> bool:
    subscripted = {id(n.value) for n in ast.walk(expression.tree) if _coordinate(n) is not None}
    return any(isinstance(n, ast.Name) and n.id == VARIABLE and id(n) not in subscripted
               for n in ast.walk(expression.tree))


def _constants(key: str, value: Any, constants: Mapping[str, float]) -> Optional[tuple[Expression, ...]]:
    """Numbers or expressions of the loss's constants such as `2*a` (one, or a list), each
    checked to be a finite number now.

    >>> [e.text for e in _constants("loss.curvature", ["mu", 2], {"mu": 0.5})]
    ['mu', '2']
    """
    if value is None:
        return None
    from runner.engines.numpy import OPS

    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    expressions = tuple(parse_expression(key, str(v), constants, variable=False) for v in values)
    for expression in expressions:
        if not math.isfinite(float(expression.bind(OPS)(None))):
            raise ConfigError(f"{key}={value!r} is not a finite number")
    return expressions
