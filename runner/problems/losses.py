"""Losses written as expressions in their YAML file, so that adding a loss is one small file.

A loss file under `conf/loss/` gives the value and the hand-written derivative of a function of
`x`, as expressions (`runner.problems.expressions`) over numbers, `x`, `+ - * / **`, a few functions, and
named constants:

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
symbolically (`runner.problems.expressions.derivative`), which is what `loss=expr loss.expr='...'`
relies on.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import numpy as np

from runner.errors import ConfigError
from runner.problems.expressions import (FUNCTIONS, NUMPY_OPS, VARIABLE, Expression, coordinate_of, derivative,
                                parse_expression)

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
    # An online loss: f_t = online[t mod n], one step each, an epoch a cycle (`value` is what a
    # row records, their mean); `domain` (low, high): every update is projected onto it.
    online: Optional[tuple[Expression, ...]] = None
    domain: Optional[tuple[float, float]] = None

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

    def value_and_gradient(self, ops: Mapping[str, Callable], shape: tuple[int, ...],
                           convert: Optional[Callable] = None) -> Callable[[Any], tuple[Any, Any]]:
        """x -> (the loss, its hand-written derivative)."""
        value, gradient = self.objective(ops, shape, convert), self.gradient(ops, shape, convert)
        return lambda x: (value(x), gradient(x))

    def _constants(self, shape: tuple[int, ...], convert: Optional[Callable]) -> dict[str, Any]:
        """Per-point constants shaped to broadcast against what the expressions see: x itself
        for an elementwise loss, (points,) coordinates x[..., i] for a loss of `dim` coordinates."""
        trailing = (1,) * len(shape) if self.dim is None else ()
        return {name: value if np.ndim(value) == 0 else (convert or np.asarray)(value.reshape(-1, *trailing))
                for name, value in self.constants.items()}

    measure_names: ClassVar[tuple[str, ...]] = ()  # a loss of x alone measures nothing more (a model does)
    data: ClassVar[None] = None  # nor is it trained on data

    @property
    def batch_size(self) -> Optional[int]:
        """An online loss takes one of its functions a step, as a model takes a mini-batch."""
        return 1 if self.online else None

    def epoch_batches(self, first: int, count: int, seed: Any) -> tuple[np.ndarray, np.ndarray]:
        """An online loss's steps in epochs first .. first + count - 1: each epoch one cycle, f_0,
        f_1, ... in order, the same for every point: indices (count, n, 1) and weights of 1."""
        n = len(self.online)
        return np.broadcast_to(np.arange(n)[None, :, None], (count, n, 1)).copy(), np.ones((count, n, 1))

    def order_bytes(self, points: int, per_point: bool) -> int:
        return len(self.online) * 8

    def batch_objective(self, ops: Mapping[str, Callable], convert: Callable) -> Callable[[Any, Any, Any], Any]:
        """The online loss of a step: (x, indices (1,), weights (1,)) -> f_t(x) of each point, the
        function at `indices` (`epoch_batches`)."""
        return self._online(ops, [e.bind(ops, self._constants((), convert)) for e in self.online], True)

    def batch_gradient(self, ops: Mapping[str, Callable], convert: Callable) -> Callable[[Any, Any, Any], Any]:
        """`batch_objective`'s derivative, from each function's own (symbolic) derivative."""
        parts = [derivative(e, None).bind(ops, self._constants((), convert)) for e in self.online]
        return self._online(ops, parts, False)

    def _online(self, ops: Mapping[str, Callable], parts: list, summed: bool) -> Callable:
        where, total = ops["where"], ops["sum"]

        def step(x, indices, weights):
            # Each function weighed by the step's weight where the step's index is its own, else 0
            chosen = sum(total(where(indices == k, weights, weights * 0), (0,)) * part(x) for k, part in enumerate(parts))
            if not summed or len(x.shape) <= 1:
                return chosen
            return total(chosen, tuple(range(1, len(x.shape))))  # an elementwise loss: summed over coordinates

        return step

    def measure(self, ops: Mapping[str, Callable], convert: Optional[Callable] = None) -> Optional[Callable]:
        return None

    def working_bytes(self, points: int, itemsize: int, per_point_rows: bool) -> int:
        """Bytes a step holds beyond x (a model's layers over its rows): nothing to speak of here."""
        return 0

    def with_constants(self, values: Mapping[str, Any]) -> "Loss":
        """The same loss with some constants replaced (by numbers, or arrays of one per point)."""
        return dataclasses.replace(self, constants={**self.constants, **values})

    def minimiser_values(self) -> Optional[np.ndarray]:
        """The minimiser for each point, shape (points, k) (k = 1 for a loss of each coordinate)."""
        return None if self.minimiser is None else self._evaluate(self.minimiser)

    def minimum_values(self, shape: tuple[int, ...], points: int) -> Optional[np.ndarray]:
        """f* = the loss at its minimiser, for each point (float64, shape (points,)), or None where
        the minimiser is not known.

        >>> from runner.problems.expressions import parse_expression as p
        >>> a = {"a": 2.0}  # two coordinates, each at its minimum 3 at x = 1
        >>> Loss("q", p("v", "a*(x - 1)**2 + 3", a), (p("g", "2*a*(x - 1)", a),), minimiser=(p("m", "1"),),
        ...      constants=a).minimum_values((2,), 1).tolist()
        [6.0]
        """
        minimiser = self.minimiser_values()
        if minimiser is None:
            return None
        minimiser = np.broadcast_to(minimiser, (points, minimiser.shape[1]))
        at = minimiser[:, 0] if shape == () else np.broadcast_to(minimiser, (points, *shape))
        return np.asarray(self.objective(NUMPY_OPS, shape)(at), dtype=np.float64)

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
        points = max((np.size(v) for v in self.constants.values() if np.ndim(v)), default=1)
        columns = [np.broadcast_to(np.asarray(e.bind(NUMPY_OPS, self.constants)(None), dtype=np.float64), (points,))
                   for e in expressions]
        return np.stack(columns, axis=1)

    @property
    def twice_differentiable(self) -> bool:
        """Whether the loss has a second derivative to measure (its sharpness): not where its value
        uses abs, whose second derivative is 0 or, at the kink, undefined."""
        return not any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "abs"
                       for node in ast.walk(self.value.tree))

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
    coordinates = sorted({coordinate_of(n) for n in ast.walk(value.tree)} - {None})
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
    online = None
    if cfg.get("online"):
        if dim is not None:
            raise ConfigError(f"loss.online is an elementwise loss's: loss.dim={dim} is not allowed with it")
        online = tuple(parse_expression("loss.online", str(text), constants) for text in cfg.online)
    domain = None
    if cfg.get("domain") is not None:
        domain = tuple(float(v) for v in cfg.domain)
        if len(domain) != 2 or not all(math.isfinite(v) for v in domain) or domain[0] >= domain[1]:
            raise ConfigError(f"loss.domain={list(cfg.domain)} is not allowed: two finite numbers [low, high], "
                              f"low < high")
    return Loss(name=cfg.name, value=value, grad=grad, dim=dim,
                minimiser=_constants("loss.minimiser", cfg.minimiser, constants),
                curvatures=curvatures, constants=constants, online=online, domain=domain)


def _depends_on_whole_x(expression: Expression) -> bool:
    subscripted = {id(n.value) for n in ast.walk(expression.tree) if coordinate_of(n) is not None}
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
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    expressions = tuple(parse_expression(key, str(v), constants, variable=False) for v in values)
    for expression in expressions:
        if not math.isfinite(float(expression.bind(NUMPY_OPS)(None))):
            raise ConfigError(f"{key}={value!r} is not a finite number")
    return expressions
