"""Update rules: a description every engine reads, and hand-written NumPy updates.

`Optimizer` holds a rule's name and hyperparameters as plain values. The `tf` and `torch`
engines map it onto their framework's own optimizer classes; the `numpy` engine uses the
functions below, written after PyTorch's formulas (`torch.optim.SGD`, `torch.optim.Adam`) so
that the three engines trace the same path. Each rule is a pair of pure functions in the
manner of optax: `init(x) -> state` and `update(grad, state, x) -> (new_x, new_state)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

Init = Callable[[Any], tuple]
Update = Callable[[Any, tuple, Any], tuple[Any, tuple]]


@dataclass(frozen=True)
class Optimizer:
    name: str
    lr: float
    momentum: Optional[float] = None
    beta1: Optional[float] = None
    beta2: Optional[float] = None
    eps: Optional[float] = None


def sgd(o: Optimizer, c: Callable) -> tuple[Init, Update]:
    """x <- x - lr g: the article's rule.

    >>> init, update = sgd(Optimizer("sgd", lr=0.3), float)
    >>> update(10.0, init(5.0), 5.0)[0]
    2.0
    """
    lr = c(o.lr)
    return (lambda x: ()), (lambda g, state, x: (x - lr * g, state))


def momentum(o: Optimizer, c: Callable) -> tuple[Init, Update]:
    """Heavy ball: b <- m b + g (b = g at the first step); x <- x - lr b."""
    lr, m = c(o.lr), c(o.momentum)

    def update(g, state, x):
        (b,) = state
        b = g if b is None else m * b + g
        return x - lr * b, (b,)

    return (lambda x: (None,)), update


def nesterov(o: Optimizer, c: Callable) -> tuple[Init, Update]:
    """Nesterov momentum: b <- m b + g; x <- x - lr (g + m b)."""
    lr, m = c(o.lr), c(o.momentum)

    def update(g, state, x):
        (b,) = state
        b = g if b is None else m * b + g
        return x - lr * (g + m * b), (b,)

    return (lambda x: (None,)), update


def adam(o: Optimizer, c: Callable) -> tuple[Init, Update]:
    """Adam with bias correction, eps added to the corrected root mean square (as PyTorch)."""
    lr, b1, b2, eps = c(o.lr), c(o.beta1), c(o.beta2), c(o.eps)
    one = c(1.0)

    def update(g, state, x):
        m, v, t = state
        t += 1
        m = b1 * m + (one - b1) * g
        v = b2 * v + (one - b2) * g * g
        m_hat = m / (one - b1**t)
        denominator = np.sqrt(v) / np.sqrt(one - b2**t) + eps
        return x - lr * m_hat / denominator, (m, v, t)

    return (lambda x: (x * 0, x * 0, 0)), update


RULES: dict[str, Callable[[Optimizer, Callable], tuple[Init, Update]]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "adam": adam,
}
