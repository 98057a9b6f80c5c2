"""What theory says a point's descent does, on a loss whose curvatures are known.

Near the minimiser x* a loss is the quadratic of its Hessian, whose eigenvalues are the loss's
curvatures λ (a quadratic loss is that quadratic everywhere). Along each eigenvector, with
h = lr λ, sgd, heavy-ball momentum and PyTorch's Nesterov momentum step the error e_k and the
momentum buffer b_k (b_{k+1} = β b_k + λ e_k) by a 2 × 2 iteration matrix whose characteristic
polynomial is z² − T z + D:

    sgd       T = 1 − h              D = 0          (z = 1 − h)
    momentum  T = 1 + β − h          D = β          (x_{k+1} = x_k − lr b_{k+1})
    nesterov  T = (1 + β)(1 − h)     D = β (1 − h)  (x_{k+1} = x_k − lr (λ e_k + β b_{k+1}))

Its spectral radius ρ (the larger |z|, over every curvature) is the rate at which |x − x*|
shrinks (ρ < 1) or grows. By the Schur–Cohn conditions |D| < 1, |T| < 1 + D the iteration is
stable, for h > 0, exactly when

    sgd       lr L < 2
    momentum  lr L < 2 (1 + β)                       (0 ≤ β < 1)
    nesterov  lr L < 2 (1 + β) / (1 + 2 β)           ((1+β)(h−1) < 1 + β(1−h) for h > 1)

for the largest curvature L. On a quadratic with curvatures μ ≤ L, heavy ball converges fastest,
at rate (√κ − 1)/(√κ + 1) with κ = L/μ, for β* = ((√κ − 1)/(√κ + 1))² and lr* = (2/(√L + √μ))²
(Goh, "Why Momentum Really Works", Distill 2017). Adam has no such linear theory.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np

LINEAR = ("sgd", "momentum", "nesterov")  # the rules whose iteration on a quadratic is linear


def spectral_radius(rule: str, lr, momentum, curvatures) -> Optional[np.ndarray]:
    """ρ per point: `lr`, `momentum` of shape (points,) (momentum None for sgd), `curvatures`
    (points, m). None for a rule with no linear theory.

    >>> spectral_radius("sgd", np.array([0.1, 0.5, 0.75]), None, np.array([[2.0]] * 3)).round(12).tolist()
    [0.8, 0.0, 0.5]
    >>> float(spectral_radius("momentum", np.array([(2 / 1.1) ** 2]), np.array([(9 / 11) ** 2]),
    ...                       np.array([[0.01, 1.0]]))[0])   # the optimum for kappa = 100: 9/11
    0.8181818...
    """
    if rule not in LINEAR:
        return None
    lr = np.asarray(lr, dtype=np.float64)[:, None]
    beta = np.zeros_like(lr) if momentum is None or rule == "sgd" else np.asarray(momentum, dtype=np.float64)[:, None]
    h = lr * np.asarray(curvatures, dtype=np.float64)
    if rule == "nesterov":
        trace, det = (1 + beta) * (1 - h), beta * (1 - h)
    else:
        trace, det = 1 + beta - h, beta * np.ones_like(h)
    root = np.sqrt((trace**2 - 4 * det).astype(np.complex128))
    radius = np.maximum(np.abs((trace + root) / 2), np.abs((trace - root) / 2))
    return radius.max(axis=1)


def largest_stable_lr(rule: str, largest_curvature, momentum=None) -> Optional[np.ndarray]:
    """The stability bound on lr for the largest curvature L (per point, or a number).

    >>> largest_stable_lr("sgd", 2.0), largest_stable_lr("momentum", 1.0, 0.5), largest_stable_lr("nesterov", 1.0, 0.5)
    (1.0, 3.0, 1.5)
    """
    beta = 0.0 if momentum is None else np.asarray(momentum, dtype=np.float64)
    L = np.asarray(largest_curvature, dtype=np.float64)
    bound = {"sgd": lambda: 2 / L + 0 * beta, "momentum": lambda: 2 * (1 + beta) / L,
             "nesterov": lambda: 2 * (1 + beta) / (L * (1 + 2 * beta))}.get(rule)
    if bound is None:
        return None
    value = bound()
    return float(value) if np.ndim(value) == 0 else value


def heavy_ball_optimum(mu: float, L: float) -> tuple[float, float, float]:
    """(lr*, β*, rate*) of heavy-ball momentum on a quadratic with curvatures mu <= L.

    >>> [round(v, 4) for v in heavy_ball_optimum(0.01, 1.0)]
    [3.3058, 0.6694, 0.8182]
    """
    root = np.sqrt(L / mu)
    rate = (root - 1) / (root + 1)
    return float((2 / (np.sqrt(L) + np.sqrt(mu))) ** 2), float(rate**2), float(rate)


def of_problem(problem) -> Optional[np.ndarray]:
    """ρ of every point of a runner.engines.Problem, where the loss's whole spectrum is known and
    the learning rate constant (theory's rate is a constant lr's)."""
    if not problem.loss.spectrum_known() or problem.schedule is not None:
        return None
    curvatures = np.broadcast_to(problem.loss.curvature_values(), (problem.points, len(problem.loss.curvatures)))
    momentum = problem.optimizer.momentum
    return spectral_radius(problem.optimizer.name, problem.per_point(problem.optimizer.lr),
                           None if momentum is None else problem.per_point(momentum), curvatures)


def stability(rule: str, lr: np.ndarray, others: Mapping[str, np.ndarray], rate: np.ndarray,
              largest_curvature: np.ndarray, momentum: Optional[np.ndarray]) -> dict[str, np.ndarray]:
    """Measured against theory, for a batch whose points vary lr (and the keys of `others`): for
    each setting of the other keys, the largest lr whose measured rate is below 1, theory's
    largest stable lr there (`largest_stable_lr`), and the lr grid's step. Every array has one
    value per point; the result one per setting. Empty where the rule has no linear theory or no
    rate was measured.

    >>> lr = np.array([0.5, 0.9, 1.1])
    >>> s = stability("sgd", lr, {}, np.abs(1 - 2 * lr), np.full(3, 2.0), None)
    >>> s["largest_stable_lr"].tolist(), s["largest_stable_lr_theory"].tolist(), within_one_step(s).tolist()
    ([0.9], [1.0], [True])
    """
    if rule not in LINEAR or np.isnan(rate).all():
        return {}
    names = list(others)
    settings = np.stack([others[k] for k in names], axis=1) if names else np.zeros((len(lr), 0))
    unique, group = np.unique(settings, axis=0, return_inverse=True)
    group = group.reshape(-1)
    out: dict[str, list] = {**{k: [] for k in names}, "largest_stable_lr": [], "largest_stable_lr_theory": [],
                            "lr_step": []}
    steps = np.diff(np.unique(lr))
    for g, values in enumerate(unique):
        mine = np.flatnonzero(group == g)
        stable = mine[rate[mine] < 1]
        first = mine[0]
        for k, v in zip(names, values):
            out[k].append(v)
        out["largest_stable_lr"].append(float(lr[stable].max()) if stable.size else math.nan)
        out["largest_stable_lr_theory"].append(float(largest_stable_lr(
            rule, largest_curvature[first], None if momentum is None else momentum[first])))
        out["lr_step"].append(float(steps.max()) if steps.size else math.nan)
    return {k: np.array(v, dtype=np.float64) for k, v in out.items()}


def within_one_step(stability_table: Mapping[str, np.ndarray]) -> np.ndarray:
    """For each setting of `stability`: is the measured largest stable lr within one lr step of theory's?"""
    measured, bound = stability_table["largest_stable_lr"], stability_table["largest_stable_lr_theory"]
    return np.abs(measured - bound) <= stability_table["lr_step"] * (1 + 1e-9)
