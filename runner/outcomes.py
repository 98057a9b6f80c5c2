"""How a run ended: converged, not converged, or diverged, read off its trajectory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from runner.engines import Trajectory, first_diverged_row

CONVERGED, NOT_CONVERGED, DIVERGED = "converged", "not_converged", "diverged"


@dataclass(frozen=True)
class Outcome:
    label: str  # converged | not_converged | diverged
    steps_to_tolerance: Optional[int]  # the first epoch whose gradient norm is within tolerance


def classify(trajectory: Trajectory, tolerance: float, diverge_above: float) -> Outcome:
    """`diverged` if the last row is non-finite or beyond the bound (the engine stopped there),
    `converged` if the last gradient norm is within `tolerance` (a stationary point),
    `not_converged` otherwise.

    >>> t = Trajectory(np.array([5.0, 2.0]), np.array([25.0, 4.0]), np.array([10.0, 4.0]), "cpu")
    >>> classify(t, tolerance=1e-4, diverge_above=1e6)
    Outcome(label='not_converged', steps_to_tolerance=None)
    """
    norms = trajectory.grad_norm
    within = np.flatnonzero(norms <= tolerance)
    steps = int(within[0]) if within.size else None
    last = len(trajectory.x) - 1
    if first_diverged_row(trajectory.x[last:], trajectory.loss[last:], diverge_above) is not None:
        return Outcome(DIVERGED, steps)
    return Outcome(CONVERGED if norms[last] <= tolerance else NOT_CONVERGED, steps)
