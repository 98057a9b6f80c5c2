"""Update rules, written once for every framework and for a batch of points.

`Optimizer` holds a rule's name and hyperparameters as plain values: a number each, or in a
batched sweep an array of one number per point. Each rule is a pair of pure functions in the
manner of optax, `init(x) -> state` and `update(grad, state, x) -> (new_x, new_state)`, written
with Python's arithmetic operators and the framework's `sqrt`, `pow`, `maximum` and `where`
from its `OPS`, so that the same lines run on NumPy arrays (and scalars), TensorFlow and JAX
tensors, and PyTorch tensors, with per-point hyperparameters broadcast against x. They follow
PyTorch's formulas (`torch.optim.SGD`, `torch.optim.Adam`, AMSGrad as `Adam(amsgrad=True)`);
the frameworks' own optimizer classes, which take one learning rate per parameter and not one
per point, are the reference the tests compare against. The adaptive steps also read the loss:
Polyak's f(x) and its minimum f*, Armijo's line search f(x) at its trial points.

`update(grad, state, x, lr)` takes another learning rate where a schedule sets one each epoch
(`runner.descent.schedules`): lr multiplies every rule's step, and Armijo's search starts there.

State is a tuple of arrays of fixed structure from the first step on (a momentum buffer starts
at zero: m * 0 + g = g, PyTorch's first step), as a compiled loop (`tf.while_loop`,
`lax.scan`) requires.

`HYPERPARAMETERS` is the one list of hyperparameters: their config keys, the values each may
take, and so the schema's fields (`runner.schema.OptimizerConfig`), its range checks, the keys a
batch may vary (`runner.sweeps.points.BATCHABLE`) and what a job's Optimizer is built from
(`runner.problem`). A new rule with a new hyperparameter is a function here, its entry in
`RULES`, its hyperparameter in `HYPERPARAMETERS`, and `conf/optimizer/NAME.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from runner.errors import ConfigError

Init = Callable[[Any], tuple]
Update = Callable[[Any, tuple, Any], tuple[Any, tuple]]


def _positive(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (values > 0)


def _fraction(values: np.ndarray) -> np.ndarray:
    return (values >= 0) & (values < 1)


def _open_unit(values: np.ndarray) -> np.ndarray:
    return (values > 0) & (values < 1)


@dataclass(frozen=True)
class Hyperparameter:
    """A hyperparameter some rule reads: where the config holds it, and what it may be."""

    key: str  # "lr" at the top of the config (every rule has one), the others under `optimizer.`
    allowed: Callable[[np.ndarray], np.ndarray]  # True for each value it may take
    says: str  # what it may be, as an error says it: "optimizer.momentum must be in [0, 1)"


HYPERPARAMETERS = {
    "lr": Hyperparameter("lr", _positive, "a finite number > 0"),
    "momentum": Hyperparameter("optimizer.momentum", _fraction, "in [0, 1)"),
    "beta1": Hyperparameter("optimizer.beta1", _fraction, "in [0, 1)"),
    "beta2": Hyperparameter("optimizer.beta2", _fraction, "in [0, 1)"),
    "eps": Hyperparameter("optimizer.eps", _positive, "a finite number > 0"),
    "decrease": Hyperparameter("optimizer.decrease", _open_unit, "in (0, 1)"),  # Armijo's c
    "shrink": Hyperparameter("optimizer.shrink", _open_unit, "in (0, 1)"),  # Armijo's backtracking factor
}


class Optimizer:
    """A rule and its hyperparameters: numbers, or arrays of one number per point. Each name of
    `HYPERPARAMETERS` reads as an attribute, None where not set.

    >>> o = Optimizer("momentum", 0.1, momentum=0.9)
    >>> o.hyperparameters(), o.lr, o.beta1
    ({'lr': 0.1, 'momentum': 0.9}, 0.1, None)
    """

    def __init__(self, name: str, lr: Any, **others: Any) -> None:
        unknown = sorted(set(others) - set(HYPERPARAMETERS))
        if unknown:
            raise TypeError(f"Optimizer has no hyperparameter {', '.join(unknown)}; it has {', '.join(HYPERPARAMETERS)}")
        self.name = name
        self._values = {"lr": lr, **{key: value for key, value in others.items() if value is not None}}

    def __getattr__(self, name: str) -> Any:
        if name in HYPERPARAMETERS:
            return self.__dict__["_values"].get(name)
        raise AttributeError(f"'Optimizer' object has no attribute {name!r}")

    def hyperparameters(self) -> dict[str, Any]:
        """The rule's hyperparameters that are set, by name."""
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Optimizer({self.name!r}, {', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


def sgd(h: Mapping[str, Any], ops: Mapping[str, Callable]) -> tuple[Init, Update]:
    """x <- x - lr g: the article's rule.

    >>> from runner.engines.numpy import OPS
    >>> init, update = sgd({"lr": 0.3}, OPS)
    >>> update(10.0, init(5.0), 5.0)[0]
    2.0
    """
    lr = h["lr"]
    return (lambda x: ()), (lambda g, state, x, lr=lr: (x - lr * g, state))


def momentum(h: Mapping[str, Any], ops: Mapping[str, Callable]) -> tuple[Init, Update]:
    """Heavy ball: b <- m b + g (b = g at the first step); x <- x - lr b."""
    lr, m = h["lr"], h["momentum"]

    def update(g, state, x, lr=lr):
        (b,) = state
        b = m * b + g
        return x - lr * b, (b,)

    return (lambda x: (x * 0,)), update


def nesterov(h: Mapping[str, Any], ops: Mapping[str, Callable]) -> tuple[Init, Update]:
    """Nesterov momentum: b <- m b + g; x <- x - lr (g + m b)."""
    lr, m = h["lr"], h["momentum"]

    def update(g, state, x, lr=lr):
        (b,) = state
        b = m * b + g
        return x - lr * (g + m * b), (b,)

    return (lambda x: (x * 0,)), update


def adam(h: Mapping[str, Any], ops: Mapping[str, Callable]) -> tuple[Init, Update]:
    """Adam with bias correction, eps added to the corrected root mean square (as PyTorch).
    The step count t is part of the state, one per point, in x's dtype (exact up to 2^24 steps
    in float32)."""
    return _adam(h, ops, amsgrad=False)


def amsgrad(h: Mapping[str, Any], ops: Mapping[str, Callable]) -> tuple[Init, Update]:
    """AMSGrad (Reddi, Kale and Kumar, "On the Convergence of Adam and Beyond", ICLR 2018): Adam
    whose denominator uses the largest second moment so far, so that no step size ever grows;
    bias-corrected as PyTorch's `Adam(amsgrad=True)`.

    >>> from runner.engines.numpy import OPS
    >>> h = {"lr": 0.1, "beta1": 0.0, "beta2": 0.5, "eps": 0.0}
    >>> def path(rule):
    ...     init, update = rule(h, OPS)
    ...     x, state = update(4.0, init(1.0), 1.0)  # v = 8: a step of lr, to 0.9
    ...     x, state = update(1.0, state, x)        # v = 4.5: AMSGrad divides by sqrt(8 / 0.75)
    ...     return round(float(x), 6)
    >>> path(amsgrad), path(adam)
    (0.869381, 0.859175)
    """
    return _adam(h, ops, amsgrad=True)


def _adam(h: Mapping[str, Any], ops: Mapping[str, Callable], amsgrad: bool) -> tuple[Init, Update]:
    """Adam's state is (m, v, t); AMSGrad's (m, v, largest v so far, t)."""
    lr, b1, b2, eps = h["lr"], h["beta1"], h["beta2"], h["eps"]
    sqrt, power, maximum = ops["sqrt"], ops["pow"], ops["maximum"]
    one_minus_b1, one_minus_b2 = 1 - b1, 1 - b2

    def update(g, state, x, lr=lr):
        m, v, *largest, t = state
        t = t + 1
        m = b1 * m + one_minus_b1 * g
        v = b2 * v + one_minus_b2 * g * g
        largest = [maximum(largest[0], v)] if amsgrad else []
        m_hat = m / (1 - power(b1, t))
        denominator = sqrt(largest[0] if amsgrad else v) / sqrt(1 - power(b2, t)) + eps
        return x - lr * m_hat / denominator, (m, v, *largest, t)

    return (lambda x: (x * 0, x * 0, *([x * 0] if amsgrad else []), b1 * 0)), update


TINY = float(np.finfo(np.float32).tiny)  # Polyak's floor under |g|^2


def _same(values: Any) -> Any:
    return values


def _column(values: Any) -> Any:
    return values[..., None]


def _per_point(objective: Callable, ops: Mapping[str, Callable], x: Any, g: Any) -> tuple[Any, Any, Callable]:
    """f(x) and |g|^2 of each point, shaped to broadcast against x, and the function that shapes
    another f so: for a vector parameter (points, n) a column (points, 1), else as they are."""
    f = objective(x)
    if len(g.shape) == len(f.shape):  # a scalar parameter: f and g are one number per point
        return f, g * g, _same
    return f[..., None], ops["sum"](g * g, -1)[..., None], _column


def polyak(h: Mapping[str, Any], ops: Mapping[str, Callable]) -> tuple[Init, Update]:
    """Polyak's step (B. T. Polyak, "Introduction to Optimization", 1987):
    x <- x - lr (f(x) - f*) / |g|^2 g, the step that would reach the minimum f* if f were linear
    along g; lr = 1 is Polyak's own, a smaller lr a damped one. It reads f(x) (`objective`, the
    engine's) and f* per point (`minimum`, the loss's value at its known minimiser). On y = x^2
    it is 1/4 whatever x: x halves every step.

    >>> from runner.engines.numpy import OPS
    >>> init, update = polyak({"lr": 1.0, "objective": lambda x: x * x, "minimum": 0.0}, OPS)
    >>> x = np.float64(5.0)
    >>> for _ in range(3):
    ...     x, state = update(2 * x, init(x), x)
    >>> float(x)
    0.625
    """
    lr, objective, minimum = h["lr"], h["objective"], h["minimum"]
    maximum = ops["maximum"]

    def update(g, state, x, lr=lr):
        f, squared, _ = _per_point(objective, ops, x, g)
        # At the minimum both f - f* and |g|^2 are 0: the floor (float32's smallest normal) makes
        # the step 0 there instead of 0 / 0.
        return x - lr * (f - minimum) / maximum(squared, squared * 0 + TINY) * g, state

    return (lambda x: ()), update


ARMIJO_TRIALS = 20  # t = lr, lr s, ..., lr s^19; where none is accepted, the last is taken


def armijo(h: Mapping[str, Any], ops: Mapping[str, Callable]) -> tuple[Init, Update]:
    """Gradient descent with Armijo's backtracking line search (Armijo, 1966), per point: the
    first of t = lr, lr s, lr s^2, ... (s: `shrink`) with sufficient decrease,
    f(x - t g) <= f(x) - c t |g|^2 (c: `decrease`), then x <- x - t g. Every point tries all
    ARMIJO_TRIALS steps, so that a compiled loop stays one shape; each costs one evaluation of f.
    On y = x^2 from lr = 1, halving, it rejects 1 (x would land on -x) and accepts 1/2, the
    minimum, in one step.

    >>> from runner.engines.numpy import OPS
    >>> init, update = armijo({"lr": 1.0, "decrease": 1e-4, "shrink": 0.5, "objective": lambda x: x * x}, OPS)
    >>> x = np.float64(5.0)
    >>> x, state = update(2 * x, init(x), x)
    >>> float(x)
    0.0
    """
    lr, c, shrink, objective = h["lr"], h["decrease"], h["shrink"], h["objective"]
    where = ops["where"]

    def update(g, state, x, lr=lr):
        f, squared, column = _per_point(objective, ops, x, g)
        t = lr + x * 0  # one step size per point (per coordinate of a point: all the same)
        chosen, found = t, t < 0
        for trial in range(ARMIJO_TRIALS):
            if trial:
                t = t * shrink
            accepted = column(objective(x - t * g)) <= f - c * t * squared
            chosen, found = where(accepted & ~found, t, chosen), found | accepted
        return x - where(found, chosen, t) * g, state

    return (lambda x: ()), update


# Each rule, and what it reads: hyperparameters (a batch may give them one value per point), and
# `objective` and `minimum` (f(x), and f* per point), which the engine gives the rules that read them.
RULES: dict[str, tuple[Callable[[Mapping[str, Any], Mapping[str, Callable]], tuple[Init, Update]], tuple[str, ...]]] = {
    "sgd": (sgd, ("lr",)),
    "momentum": (momentum, ("lr", "momentum")),
    "nesterov": (nesterov, ("lr", "momentum")),
    "adam": (adam, ("lr", "beta1", "beta2", "eps")),
    "amsgrad": (amsgrad, ("lr", "beta1", "beta2", "eps")),
    "polyak": (polyak, ("lr", "objective", "minimum")),
    "armijo": (armijo, ("lr", "decrease", "shrink", "objective")),
}


def needs_minimum(name: str) -> bool:
    """Whether rule `name` reads the loss's minimum f*."""
    return "minimum" in RULES[name][1]


def needs_objective(name: str) -> bool:
    """Whether rule `name` reads the loss f(x) itself (Polyak's step, Armijo's search), not its gradient alone."""
    return "objective" in RULES[name][1]


def rule(optimizer: Optimizer, ops: Mapping[str, Callable], convert: Optional[Callable] = None,
         objective: Optional[Callable] = None, minimum: Optional[np.ndarray] = None,
         domain: Optional[tuple[float, float]] = None) -> tuple[Init, Update]:
    """`init` and `update` of the optimizer's rule, each hyperparameter and the minimum f* (one
    per point) passed through `convert` (an engine's: a per-point array -> its own array shaped to
    broadcast against x); `objective` is the engine's f(x); with a `domain` (low, high), every
    new x projected onto it (AMSGrad's analysis, and Reddi's counterexample, are projected).

    >>> from runner.engines.numpy import OPS
    >>> init, update = rule(Optimizer("sgd", 1.0), OPS, domain=(-1.0, 1.0))
    >>> update(np.array([-5.0, 0.5, 5.0]), (), np.zeros(3))[0].tolist()
    [1.0, -0.5, -1.0]
    """
    function, reads = RULES[optimizer.name]
    values = {name: getattr(optimizer, name) for name in reads if name in HYPERPARAMETERS}
    if "minimum" in reads:
        if minimum is None:
            raise ConfigError(f"optimizer={optimizer.name} needs the loss's minimum f*, which this loss does not know")
        values["minimum"] = minimum
    h = {k: convert(v) if convert else v for k, v in values.items()}
    if "objective" in reads:
        h["objective"] = objective
    init, update = function(h, ops)
    if domain is None:
        return init, update
    low, high, where = domain[0], domain[1], ops["where"]

    def projected(g, state, x, **lr):
        x, state = update(g, state, x, **lr)
        return where(x < low, x * 0 + low, where(x > high, x * 0 + high, x)), state

    return init, projected
