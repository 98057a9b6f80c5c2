"""Figures as pure functions: each returns a matplotlib Figure, the caller saves it.

Figures are built with `matplotlib.figure.Figure`, not pyplot, so no global state or GUI
backend is involved and a sweep of many jobs in one process leaks nothing.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from matplotlib.figure import Figure

from runner.descent.loop import Trajectory
from runner.descent.sharpness import NAME as SHARPNESS


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


def path_figure(trajectory: Trajectory) -> Figure:
    """A vector parameter's run: the loss against the epoch, and the path of its first two coordinates."""
    figure = Figure(figsize=(10, 4.5))
    loss_axes, path_axes = figure.subplots(1, 2)
    loss_axes.plot(_on_scale(loss_axes, [trajectory.loss])[0], color="tab:blue")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss function")
    x = trajectory.x.reshape(len(trajectory.x), -1)
    if x.shape[1] >= 2:
        path_axes.plot(x[:, 0], x[:, 1], color="red", marker="o", markersize=2)
        path_axes.set_xlabel("x[0]")
        path_axes.set_ylabel("x[1]")
    figure.suptitle("gradient descent")
    return figure


def training_figure(trajectory: Trajectory, lr: Optional[float] = None) -> Figure:
    """A model's run: its training and validation loss against the epoch, and a classifier's
    validation accuracy; where the sharpness was measured, a third panel of it against 2/lr (the
    edge of stability: gradient descent on a quadratic of that curvature stops converging)."""
    measured = trajectory.measured
    sharp = measured.get(SHARPNESS)
    figure = Figure(figsize=(15 if sharp is not None else 10, 4.5), layout="constrained")
    loss_axes, other_axes, *sharp_axes = figure.subplots(1, 3 if sharp is not None else 2)
    epochs = np.arange(len(trajectory.loss))
    loss_axes.plot(epochs, measured["train_loss"], label="training", color="tab:blue")
    loss_axes.plot(epochs, measured["val_loss"], label="validation", color="tab:orange")
    loss_axes.set_yscale("log")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss (without the penalty)")
    loss_axes.legend()
    if "val_accuracy" in measured:
        other_axes.plot(epochs, measured["val_accuracy"], color="tab:green")
        other_axes.set_ylabel("validation accuracy")
    else:
        other_axes.plot(epochs, _on_scale(other_axes, [trajectory.grad_norm])[0], color="tab:red")
        other_axes.set_ylabel("gradient norm")
    other_axes.set_xlabel("epoch")
    if sharp is not None:
        (axes,) = sharp_axes
        at = ~np.isnan(sharp)
        axes.plot(epochs[at], sharp[at], color="tab:purple", marker=".", markersize=3, label="sharpness")
        if lr:
            axes.axhline(2 / lr, color="black", linestyle="--", linewidth=1, label=f"2/lr = {2 / lr:.4g}")
        axes.set_xlabel("epoch")
        axes.set_ylabel("largest Hessian eigenvalue")
        axes.legend()
    figure.suptitle("training")
    return figure


def edge_of_stability_figure(lines: list[tuple[str, float, np.ndarray, np.ndarray]]) -> Figure:
    """Runs of one model at several learning rates, (label, lr, training loss, sharpness) each by
    epoch (the sharpness NaN between measurements): the training loss, and the sharpness against
    2/lr in the run's colour: under gradient descent it rises to 2/lr and hovers there (Cohen et
    al., ICLR 2021) while the loss, going up and down, falls over the long run."""
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    loss_axes, sharp_axes = figure.subplots(1, 2)
    for (label, lr, loss, sharp), colour in zip(lines, _colours(len(lines))):
        epochs = np.arange(len(loss))
        loss_axes.plot(epochs, loss, color=colour, linewidth=1, label=label)
        at = ~np.isnan(sharp)
        sharp_axes.plot(epochs[at], sharp[at], color=colour, linewidth=1.2, label=label)
        sharp_axes.axhline(2 / lr, color=colour, linestyle="--", linewidth=1)
    loss_axes.set_yscale("log")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss")
    loss_axes.legend()
    sharp_axes.set_xlabel("epoch")
    sharp_axes.set_ylabel("sharpness (dashed: 2/lr)")
    sharp_axes.legend()
    figure.suptitle("the edge of stability: full-batch gradient descent")
    return figure


def range_test_figure(lr: np.ndarray, loss: np.ndarray, suggested: float, blowup: float,
                      bound: Optional[float]) -> Figure:
    """The LR range test: the loss against the learning rate that reached it (the rate of the
    update before each row, both on log scales), the suggested lr, where the loss began to rise,
    and theory's stability bound where the loss knows its curvature."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    shown = np.isfinite(loss[1:]) & (loss[1:] > 0)
    axes.plot(lr[:-1][shown], loss[1:][shown], color="tab:blue", linewidth=1.2)
    axes.set_xscale("log")
    axes.set_yscale("log")
    for value, colour, style, label in ((suggested, "tab:green", "-", "suggested (fastest fall)"),
                                        (blowup, "tab:red", "-", "the loss starts to rise"),
                                        (bound, "black", "--", "theory's stability bound")):
        if value is not None and np.isfinite(value):
            axes.axvline(value, color=colour, linestyle=style, linewidth=1, label=f"{label}: {value:.4g}")
    axes.set_xlabel("learning rate (of the update before)")
    axes.set_ylabel("loss")
    axes.legend()
    axes.set_title("LR range test")
    return figure


def validation_figure(series: list[tuple], name: str, seeds: int = 0) -> Figure:
    """Every model's `name` (validation accuracy or loss) against the epoch, one panel per setting
    other than the backend, one line per backend: where the frameworks agree, one line shows.

    `series` holds (panel, backend, values) per job, or (panel, backend, mean, std) per setting of
    a batch over `seeds` seeds: the mean, with a band of ± one std."""
    panels_named = sorted({line[0] for line in series})
    columns = min(4, max(1, len(panels_named)))
    rows = -(-len(panels_named) // columns) or 1
    figure = Figure(figsize=(4 * columns, 3.4 * rows), layout="constrained")
    panels = np.atleast_1d(figure.subplots(rows, columns, sharey=True, squeeze=False)).reshape(-1)
    for axes, panel in zip(panels, panels_named):
        mine = sorted((line[1:] for line in series if line[0] == panel), key=lambda line: line[0])
        for (backend, values, *std), colour, style in zip(mine, _colours(len(mine)), ["-", "--", ":", "-."] * 4):
            epochs = np.arange(len(values))
            axes.plot(epochs, values, label=backend, color=colour, linestyle=style, linewidth=1.2)
            if std:
                axes.fill_between(epochs, values - std[0], values + std[0], color=colour, alpha=0.15, linewidth=0)
        axes.set_title(panel, fontsize="x-small")
        axes.set_xlabel("epoch")
        axes.legend(fontsize="x-small")
    for axes in panels[len(panels_named):]:
        axes.set_visible(False)
    panels[0].set_ylabel(name.replace("_", " ") + (f": mean ± std over {seeds} seeds" if seeds else ""))
    return figure


def trajectories_figure(series: list[tuple[str, str, np.ndarray]], quantity: str = "loss") -> Figure:
    """Every job's loss (symmetric log scale), or another quantity such as a scalar x (linear),
    against the epoch, one panel per backend.

    `series` holds (backend, label, values) per job.
    """
    backends = sorted({backend for backend, _, _ in series})
    figure = Figure(figsize=(5 * max(1, len(backends)), 4.5), layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, max(1, len(backends)), sharey=True))
    for axes, backend in zip(panels, backends):
        mine = [(label, values) for b, label, values in series if b == backend]
        shown = _on_scale(axes, [values for _, values in mine]) if quantity == "loss" else [v for _, v in mine]
        for (label, _), values, colour in zip(mine, shown, _colours(len(mine))):
            axes.plot(np.arange(len(values)), values, label=label, color=colour, linewidth=1)
        axes.set_title(f"backend={backend}")
        axes.set_xlabel("epoch")
        axes.legend(fontsize="x-small", ncol=2)
    panels[0].set_ylabel(f"loss (0 drawn at {LOG_FLOOR:g})" if quantity == "loss" else quantity)
    return figure


def final_loss_figure(points: list[tuple[str, float, float, bool]], stability_bound: float | None) -> Figure:
    """The final loss against lr, one line per (backend, optimizer); diverged runs marked x.

    `points` holds (series label, lr, final loss, diverged) per job. `stability_bound` is
    lr = 2/L for plain gradient descent on a loss of curvature L, where known.
    """
    figure = Figure(figsize=(7, 4.8), layout="constrained")
    axes = figure.subplots()
    labels = sorted({label for label, _, _, _ in points})
    # Backends that agree draw on top of each other: distinct dashes and marker sizes keep each visible.
    styles = [("-", 9), ("--", 6), (":", 4), ("-.", 3)]
    for i, (label, colour) in enumerate(zip(labels, _colours(len(labels)))):
        mine = sorted((lr, loss, diverged) for l, lr, loss, diverged in points if l == label)
        lrs = np.array([p[0] for p in mine])
        (finals,) = _on_scale(axes, [np.array([p[1] for p in mine])])
        diverged = np.array([p[2] for p in mine], dtype=bool)
        dashes, size = styles[i % len(styles)]
        axes.plot(lrs, finals, color=colour, marker="o", markersize=size, linestyle=dashes, label=label)
        axes.scatter(lrs[diverged], finals[diverged], color=colour, marker="x", s=90, zorder=3)
    if stability_bound is not None:
        axes.axvline(stability_bound, color="grey", linestyle="--", label=f"lr = 2/L = {stability_bound:g}")
    axes.set_xlabel("lr")
    axes.set_ylabel(f"final loss (x: diverged; 0 drawn at {LOG_FLOOR:g})")
    axes.set_title("final loss against learning rate")
    if labels or stability_bound is not None:
        axes.legend(fontsize="small")
    return figure


LOG_FLOOR = 1e-30  # losses below it (down to an exact 0) are drawn at it on a log scale


def _on_scale(axes, series: list[np.ndarray]) -> list[np.ndarray]:
    """Set a log y scale for non-negative series (returned clipped at LOG_FLOOR), symlog otherwise.

    Non-finite values become NaN: they leave a gap instead of breaking the scale.
    """
    values = [np.where(np.isfinite(v), v, np.nan) for v in (np.asarray(s, dtype=np.float64) for s in series)]
    if any(np.nanmin(v, initial=0.0) < 0 for v in values if v.size):
        axes.set_yscale("symlog", linthresh=1e-8)
        return values
    axes.set_yscale("log")
    return [np.maximum(v, LOG_FLOOR) for v in values]


def pruning_figure(metric: str, rungs: list[int], curves: np.ndarray, stopped: np.ndarray) -> Figure:
    """Successive halving as it went: `metric` (rows, points) of some of a batch's points against
    the epoch, each curve ending where its point stopped, coloured by the rung that stopped it
    (`stopped`: the rung's index; len(rungs) for the points that ran to the end, -1 for those
    that diverged, in grey), the rungs dashed."""
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axes = figure.subplots()
    values = curves.astype(np.float64)
    if "accuracy" not in metric:
        values = _on_scale(axes, [values])[0]
    colours = _colours(len(rungs) + 1)
    for stage in (-1, *range(len(rungs) + 1)):
        chosen = np.flatnonzero(stopped == stage)
        if not chosen.size:
            continue
        label, colour, width = ((f"stopped at epoch {rungs[stage]}", colours[stage], 0.8) if 0 <= stage < len(rungs)
                                else ("ran to the end", colours[-1], 1.5) if stage == len(rungs) else
                                ("diverged", "lightgrey", 0.6))
        lines = axes.plot(values[:, chosen], color=colour, linewidth=width, alpha=0.9 if stage == len(rungs) else 0.5)
        lines[0].set_label(f"{label} ({chosen.size} drawn)")
    for rung in rungs:
        axes.axvline(rung, color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric.replace("_", " "))
    axes.set_title(f"successive halving by {metric.replace('_', ' ')}")
    axes.legend(fontsize="small")
    return figure


def _colours(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["viridis"](i / max(1, n - 1) * 0.9) for i in range(n)] if n > 1 else ["tab:blue"]


def batch_figure(key: str, series: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                 theory: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 bound: Optional[float] = None) -> Figure:
    """A batch against one of its keys: the final loss (left) and the measured rate (right).

    `series` holds (label, the key's values, final losses, rates, diverged) per batch (one line
    each, e.g. per backend); `theory` the spectral radius against the key's values; `bound` the
    theoretical stability bound on the key (lr = 2/L for sgd), drawn on both panels.
    """
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    loss_axes, rate_axes = figure.subplots(1, 2, sharex=True)
    styles = [("-", 2.5), ("--", 2.0), (":", 2.0), ("-.", 1.5)]
    for i, ((label, x, final_loss, rate, diverged), colour) in enumerate(zip(series, _colours(len(series)))):
        order = np.argsort(x, kind="stable")
        dashes, width = styles[i % len(styles)]
        (finals,) = _on_scale(loss_axes, [np.asarray(final_loss, dtype=np.float64)[order]])
        loss_axes.plot(x[order], finals, color=colour, linestyle=dashes, linewidth=width, label=label)
        loss_axes.scatter(x[order][diverged[order]], finals[diverged[order]], color=colour, marker="x", s=12, zorder=3)
        rate_axes.plot(x[order], rate[order], color=colour, linestyle=dashes, linewidth=width, label=f"{label} (measured)")
    if theory is not None:
        order = np.argsort(theory[0], kind="stable")
        rate_axes.plot(theory[0][order], theory[1][order], color="black", linewidth=0.8, label="spectral radius (theory)")
    rate_axes.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="rate 1: the stability bound")
    if bound is not None:
        for axes in (loss_axes, rate_axes):
            axes.axvline(bound, color="tab:red", linestyle="--", linewidth=1,
                         label=f"{key} = {bound:.4g}: stable below (theory)")
    rate_axes.set_yscale("log")
    loss_axes.set_ylabel(f"final loss (x: diverged; 0 drawn at {LOG_FLOOR:g})")
    rate_axes.set_ylabel("convergence rate per epoch (|x - x*| ratio)")
    for axes in (loss_axes, rate_axes):
        axes.set_xlabel(key)
        axes.legend(fontsize="x-small")
    loss_axes.set_title(f"final loss against {key}")
    rate_axes.set_title(f"measured rate against {key}")
    return figure


def seed_bands_figure(key: str, panels: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]],
                      seeds: int) -> Figure:
    """Means over seeds against `key`, each with a band of ± one standard deviation: one panel per
    quantity, `panels` holding (quantity, lines), each line (label, the key's values, mean, std)."""
    figure = Figure(figsize=(6 * len(panels), 4.6), layout="constrained")
    for axes, (name, lines) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        for (label, x, mean, std), colour, style in zip(lines, _colours(len(lines)), ["-", "--", ":", "-."] * 8):
            order = np.argsort(x, kind="stable")
            x, mean, std = x[order], mean[order], std[order]
            axes.plot(x, mean, color=colour, linestyle=style, linewidth=1.8, label=label)
            axes.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        drawn = [mean for _, _, mean, _ in lines if np.isfinite(mean).any()]  # a pruned batch's may be NaN
        if "accuracy" not in name and drawn and all(np.nanmin(mean) > 0 for mean in drawn):
            axes.set_yscale("log")
        xs = np.concatenate([x for _, x, _, _ in lines])
        if drawn and xs.min() > 0 and xs.max() >= 10 * xs.min():  # learning rates a decade or more apart
            axes.set_xscale("log")
        axes.set_xlabel(key)
        axes.set_ylabel(f"{name.replace('_', ' ')}: mean ± std over {seeds} seeds")
        axes.set_title(f"{name.replace('_', ' ')} against {key}")
        axes.legend(fontsize="x-small")
    return figure


def rate_map_figure(x_key: str, x_values: np.ndarray, y_key: str, y_values: np.ndarray, rate: np.ndarray,
                    boundary: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                    optimum: Optional[tuple[float, float, float]] = None,
                    best: Optional[tuple[float, float, float]] = None, title: str = "") -> Figure:
    """The measured rate over a grid of two keys, `rate` of shape (len(x_values), len(y_values)):
    below 1 in colour (darker: faster; the scale starts at the fastest rate, rounded down to a
    tenth), at or above 1 (not converging) in grey, unknown in white.
    `boundary(y)` draws the theoretical stability bound on x; `optimum` and `best` mark the
    theoretical and the measured fastest point (x, y, rate)."""
    from matplotlib import colormaps

    figure = Figure(figsize=(7.5, 6), layout="constrained")
    axes = figure.subplots()
    colours = colormaps["viridis"].with_extremes(over="lightgrey", bad="white")
    fastest = float(np.nanmin(rate)) if np.isfinite(rate).any() else 0.0
    mesh = axes.pcolormesh(x_values, y_values, np.ma.masked_invalid(rate.T), cmap=colours,
                           vmin=min(0.9, np.floor(max(0.0, fastest) * 10) / 10), vmax=1.0, shading="nearest")
    figure.colorbar(mesh, ax=axes, extend="max", label="convergence rate per epoch (grey: 1 or more)")
    if boundary is not None:
        y = np.linspace(float(np.min(y_values)), float(np.max(y_values)), 400)
        axes.plot(boundary(y), y, color="tab:red", linewidth=1.5, label="stability bound (theory)")
    if optimum is not None:
        axes.scatter([optimum[0]], [optimum[1]], marker="*", s=110, color="tab:red", edgecolor="white", zorder=4,
                     label=f"optimum (theory): {x_key}={optimum[0]:.4g}, {y_key}={optimum[1]:.4g}, rate {optimum[2]:.4g}")
    if best is not None:
        axes.scatter([best[0]], [best[1]], marker="o", s=260, facecolor="none", edgecolor="black", linewidth=1.5,
                     zorder=3, label=f"fastest measured: {x_key}={best[0]:.4g}, {y_key}={best[1]:.4g}, rate {best[2]:.4g}")
    axes.set_xlim(float(np.min(x_values)), float(np.max(x_values)))
    axes.set_ylim(float(np.min(y_values)), float(np.max(y_values)))
    axes.set_xlabel(x_key)
    axes.set_ylabel(y_key)
    axes.set_title(title or f"convergence rate over {x_key} × {y_key}")
    if boundary is not None or optimum is not None or best is not None:
        axes.legend(fontsize="x-small", loc="lower left")
    return figure
