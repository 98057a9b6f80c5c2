"""Figures as pure functions: each returns a matplotlib Figure, the caller saves it.

Figures are built with `matplotlib.figure.Figure`, not pyplot, so no global state or GUI
backend is involved and a sweep of many jobs in one process leaks nothing.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from matplotlib.figure import Figure

from runner.engines import Trajectory


def article_figure(loss_value: Callable[[np.ndarray], np.ndarray], trajectory: Trajectory) -> Figure:
    """The article's figure: the loss curve in blue, the path taken in red with round markers.

    The article draws x in [-6, 6); the range widens to keep every finite visited point in view.
    """
    xs = trajectory.x.astype(np.float64)
    finite = xs[np.isfinite(xs)]
    half_width = max(6.0, 1.1 * float(np.abs(finite).max(initial=0.0)))
    curve_x = np.linspace(-half_width, half_width, 400)
    figure = Figure(figsize=(6.4, 4.8))
    axes = figure.subplots()
    axes.plot(curve_x, loss_value(curve_x), color="tab:blue")
    axes.plot(xs, trajectory.loss, color="red", marker="o")
    axes.set_title("gradient descent")
    axes.set_xlabel("X")
    axes.set_ylabel("loss function")
    return figure
