"""A batch: one job that runs every point of a batched sweep's group as one descent, and what it
records in its one MLflow run (`point_records`, the batch's output for `runner.records.recording`).

- params: the group's config, each batched key as its sweep (`lr=range(0.001,1.2,0.001)`) with
  its count, min and max (`lr.count`, `lr.min`, `lr.max`);
- metrics: points, converged, not_converged, diverged (and pruned, with `computed_fraction`, the
  share of the whole grid's point-epochs computed), best_final_loss with the point's values
  (`best.lr`, ...), the fastest measured rate with its point's (`fastest.lr`, ...), and where lr
  is batched on a loss of known curvature the largest lr whose rate is below 1 against theory:
  `largest_stable_lr` and `largest_stable_lr_theory`, or with other batched keys (momentum) one
  value per setting as the histories `stability/measured`, `stability/theory` and
  `stability/<key>` (step k: the k-th setting, also in `stability.csv`) and the count of
  settings within one lr step of theory, `stability/within_one_step` of `stability/settings`;
- artifacts: `points.csv` (a row per point: its index, the batched keys, `SUMMARY_COLUMNS`, where
  its trajectory is kept, the overrides that rerun it), `rungs.csv` and `pruning.png` of a
  pruned batch (each rung's epoch, points ranked and kept, the metric's best and the bar to pass;
  the metric of some points until each stopped), the same table as `points.json`
  through `mlflow.log_table` for the UI, `trajectories.npz` (the whole rows of every point, or of
  an evenly spaced subset past `batch.trajectory_mb`, which the run says), figures, and the job's
  `.hydra/` and log.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig

from runner import engines
from runner.descent import outcomes, sharpness, theory
from runner.descent.loop import Descent, evenly_spaced
from runner.descent.pruning import Rung
from runner.records import plots, seeds, tables
from runner.records.recording import Records
from runner.sweeps.points import Points

# points.json, the table MLflow's UI shows, holds at most this many points (evenly spaced);
# points.csv holds them all.
TABLE_ROWS = 100_000

# A point's summary: what a run records as metrics (runner.descent.outcomes), with its final x, its
# outcome and theory's rate; runner.reproduce compares them all but the last.
SUMMARY_COLUMNS = ("final_x", "outcome", *outcomes.QUANTITIES, "spectral_radius")


def params(flat: dict[str, Any], grid: Points) -> dict[str, Any]:
    """The run's params: the config's, each batched key as its sweep, count, min and max.

    >>> from runner.sweeps.points import parse
    >>> params({"lr": 0.001, "epochs": 200}, parse(["lr=range(0.001,1.2,0.001)"]))
    {'lr': 'range(0.001,1.2,0.001)', 'epochs': 200, 'lr.count': 1199, 'lr.min': 0.001, 'lr.max': 1.199}
    """
    sweep_of = {key: text.split("=", 1)[1] for key, text in zip(grid.keys, grid.sweeps)}
    out = {key: sweep_of.get(key, value) for key, value in flat.items()}
    for key, axis in zip(grid.keys, grid.axes):
        out[key] = sweep_of[key]  # a loss constant the config did not have goes last
        out.update({f"{key}.count": len(axis), f"{key}.min": float(axis.min()), f"{key}.max": float(axis.max())})
    return out


def point_records(cfg: DictConfig, problem: engines.Problem, grid: Points, result: Descent,
                  wall_time: float, hydra_cfg: Any) -> Records:
    """A batch's records: a row per point (points.csv, and points.json for the UI), the kept
    trajectories, figures, the summary and, where lr is batched on a loss of known curvature, the
    stability bound against theory."""
    radius = theory.of_problem(problem)
    table = point_table(grid, result, radius, rerun_overrides(hydra_cfg, grid))
    out_dir = Path(hydra_cfg.runtime.output_dir)
    files = [tables.write_table(out_dir / "points.csv", table),
             write_trajectories(out_dir / "trajectories.npz", grid, result)]
    files += figures(out_dir, cfg, problem, grid, table)
    # A pruned point's rate is measured over the epochs it ran: no stability bound is read off them.
    stability = {} if result.rungs else _stability(problem, grid, table)
    if stability:
        files.append(tables.write_table(out_dir / "stability.csv", stability))
    summary = summary_metrics(grid, table, stability)
    kept = len(result.kept)
    lines = _lines(grid, summary, stability, kept, wall_time)
    if result.rungs:
        rungs = {f.name: np.array([getattr(r, f.name) for r in result.rungs]) for f in dataclasses.fields(Rung)}
        files.append(tables.write_table(out_dir / "rungs.csv", rungs))
        summary["computed_fraction"] = result.computed / (grid.count * (cfg.epochs + 1))
        lines.append(_rungs_line(cfg.batch.prune.metric, result.rungs, summary["computed_fraction"]))
        files.append(pruning_figure(out_dir / "pruning.png", cfg.batch.prune.metric, result))
    if sharpness.NAME in result.measure_names:
        files.append(sharpness_figure(out_dir / "sharpness.png", problem, grid, result))
        lines.append(_edge_line(problem, grid, table))
    shown = evenly_spaced(grid.count, TABLE_ROWS)
    more_tables = {}
    if seeds.SEED in grid.keys and cfg.batch.spread:
        names = seeds.quantities(problem.measure_names)
        spread = seeds.aggregate(grid, table, names)
        files.append(tables.write_table(out_dir / "seeds.csv", spread))
        more_tables["seeds.json"] = {k: tables.json_column(v) for k, v in spread.items()}
        summary.update(seeds.metrics(spread, names))
        lines.append(f"mean ± std over seeds: best {seeds.describe(spread, names)} (seeds.csv)")
        files += seed_figure(out_dir, cfg, problem, spread, names)
    return Records(
        value=float(summary.get("best_final_loss", math.nan)),
        metrics=summary,
        tags={"device": result.device, "points": grid.count, "trajectories_kept": f"{kept} of {grid.count}"},
        lines=lines,
        files=files,
        series=_history(stability),
        tables={"points.json": {k: tables.json_column(v[shown]) for k, v in table.items()}, **more_tables},
    )


def sharpness_figure(path: Path, problem: engines.Problem, grid: Points, result: Descent, most: int = 8) -> Path:
    """`sharpness.png`: the training loss and the sharpness against 2/lr of up to `most` of the
    kept points, evenly spaced."""
    lr = problem.per_point(problem.optimizer.lr)
    names = result.measure_names
    lines = [(" ".join(grid.overrides(int(result.kept[k]))), float(lr[result.kept[k]]),
              result.measured[:, k, names.index("train_loss")] if "train_loss" in names else result.loss[:, k],
              result.measured[:, k, names.index(sharpness.NAME)]) for k in evenly_spaced(len(result.kept), most)]
    plots.edge_of_stability_figure(lines).savefig(path)
    return path


def pruning_figure(path: Path, metric: str, result: Descent, most: int = 300) -> Path:
    """`pruning.png`: `metric` of up to `most` of the kept points (evenly spaced), each until
    it stopped, coloured by the rung that stopped it."""
    shown = evenly_spaced(len(result.kept), most)
    curves = result.loss if metric == "loss" else result.measured[..., result.measure_names.index(metric)]
    epochs = [r.epoch for r in result.rungs]
    points = result.kept[shown]
    pruned_at, diverged = result.summary.pruned_at[points], result.summary.outcome[points] == outcomes.DIVERGED
    stopped = np.where(diverged, -1, np.where(pruned_at >= 0, np.searchsorted(epochs, pruned_at), len(epochs)))
    plots.pruning_figure(metric, epochs, curves[:, shown], stopped).savefig(path)
    return path


def _rungs_line(metric: str, rungs: Any, fraction: float) -> str:
    """What the rungs of a pruned batch did.

    >>> print(_rungs_line("loss", [Rung(10, 90, 30, 0.5, 2.0), Rung(30, 30, 10, 0.01, 0.2)], 0.25))
    pruned by loss at epochs 10 (90 -> 30, bar 2), 30 (30 -> 10, bar 0.2): 25% of the whole grid's work (rungs.csv)
    """
    shown = ", ".join(f"{r.epoch} ({r.running} -> {r.kept}, bar {r.bar:.3g})" for r in rungs)
    return f"pruned by {metric} at epochs {shown}: {fraction:.0%} of the whole grid's work (rungs.csv)"


def _edge_line(problem: engines.Problem, grid: Points, table: dict[str, Any], most: int = 8) -> str:
    """The last sharpness measured × lr / 2 of up to `most` points: 1 at the edge of stability."""
    lr = problem.per_point(problem.optimizer.lr)
    edge = np.asarray(table[f"final_{sharpness.NAME}"], dtype=np.float64) * lr / 2
    shown = ", ".join(f"{edge[i]:.3g} at {' '.join(grid.overrides(int(i)))}" for i in evenly_spaced(grid.count, most))
    return f"last sharpness × lr / 2 (1: the edge of stability): {shown} (sharpness.png)"


def seed_figure(out_dir: Path, cfg: DictConfig, problem: engines.Problem, spread: dict[str, np.ndarray],
                names: list[str]) -> list[Path]:
    """`seeds.png`: the headline quantity's final and best value, mean ± std over seeds, against
    the first other batched key; none with no other key."""
    headline = seeds.headline(names)
    label = f"{cfg.backend.name} {problem.optimizer.name}"
    panels = [(name, seeds.bands(spread, label, name)) for name in
              (headline, "best" + headline[len("final"):]) if f"{name}.mean" in spread]
    if not any(np.isfinite(mean).any() for _, _, mean, _ in panels[0][1]):  # no other key; or every setting pruned
        return []
    path = out_dir / "seeds.png"
    plots.seed_bands_figure(seeds.setting_keys(spread)[0], panels, int(spread["seeds"][0])).savefig(path)
    return [path]


def point_table(grid: Points, result: Descent, radius: Optional[np.ndarray],
                overrides: list[str]) -> dict[str, Any]:
    """A column per name, a row per point: the batched keys, the summary, where its rows are
    kept, and the command-line overrides that rerun the point alone."""
    s = result.summary
    table: dict[str, Any] = {"point": np.arange(grid.count)}
    for key, values in grid.all_values().items():
        table[key] = values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values
    table["final_x"] = s.final_x if s.final_x.ndim == 1 else s.final_x.reshape(grid.count, -1)
    table["outcome"] = s.outcome
    for name in outcomes.QUANTITIES:
        if name != "pruned_at" or (s.pruned_at >= 0).any():  # a column of pruned batches alone
            table[name] = getattr(s, name)
    table.update(s.measured)  # a model's final and best training and validation loss and accuracy
    if radius is not None:
        table["spectral_radius"] = radius
    trajectory = np.full(grid.count, -1)
    trajectory[result.kept] = np.arange(len(result.kept))
    table["trajectory"] = trajectory
    table["overrides"] = _CommandLines(grid, " ".join(overrides))
    return table


@dataclass(frozen=True)
class _CommandLines:
    """The overrides column, made when rows of it are asked for (a million points' text would
    take a GB to hold at once)."""

    grid: Points
    prefix: str

    def __len__(self) -> int:
        return self.grid.count

    def __getitem__(self, rows: Any) -> list[str]:
        return self.grid.command_lines(self.prefix, rows)


def rerun_overrides(hydra_cfg: Any, grid: Points) -> list[str]:
    """The job's own overrides without its batched keys, `batch.sweep` and `batch.prune` (a point
    alone runs every epoch); with `hydra.mode=RUN` after a preset, whose own `hydra.mode:
    MULTIRUN` would run its sweep again."""
    batched = set(grid.keys) | {"batch.sweep"}
    kept = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") not in batched
            and not o.startswith("batch.prune.")]
    if hydra_cfg.runtime.choices.get("experiment") not in (None, "null"):
        kept.append("hydra.mode=RUN")
    return kept


def write_trajectories(path: Path, grid: Points, result: Descent) -> Path:
    """The kept rows in one compressed file: `points` (their indices), `x`, `loss`, `grad`
    ((rows, kept, ...): column k is the k-th kept point, NaN after its last row), `norms` past
    RECORDED coordinates, a model's measures by name (`val_accuracy`, ... (rows, kept)), and each
    batched key's values at those points (`lr`, ...)."""
    arrays = {"points": result.kept, "x": result.x, "loss": result.loss, "grad": result.grad,
              **{key: values[result.kept] for key, values in grid.all_values().items()}}
    if result.norms is not None:
        arrays["norms"] = result.norms
    for m, name in enumerate(result.measure_names):
        arrays[name] = result.measured[..., m]
    # np.savez_compressed, at zlib's fastest level: a third of its time, files a tenth larger
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as file:
                np.lib.format.write_array(file, np.asanyarray(array), allow_pickle=False)
    return path


def _stability(problem: engines.Problem, grid: Points, table: dict[str, Any]) -> dict[str, np.ndarray]:
    """`theory.stability` of the batch: where lr is batched, the rate known and the rule linear,
    for each setting of the other batched keys; empty otherwise."""
    curvatures = problem.loss.curvature_values()
    if "lr" not in grid.keys or curvatures is None or problem.schedule is not None:
        return {}
    others = {k: grid.values(k) for k in grid.keys if k not in ("lr", "x_start")}
    momentum = problem.optimizer.momentum
    return theory.stability(problem.optimizer.name, grid.values("lr"), others, np.asarray(table["rate"], np.float64),
                            np.broadcast_to(curvatures.max(axis=1), (grid.count,)),
                            None if momentum is None else problem.per_point(momentum))


def summary_metrics(grid: Points, table: dict[str, Any], stability: dict[str, np.ndarray]) -> dict[str, float]:
    """The batch's summary: counts of outcomes, the best final loss and the fastest rate with
    the values of their points, and the stability bound where there is one setting."""
    outcome = np.asarray(table["outcome"])
    metrics: dict[str, float] = {"points": grid.count,
                                 **{label: int(np.sum(outcome == label)) for label in _outcomes(table)}}
    # the best and the fastest of the points that ran to the end: a pruned point's values are its rung's
    unpruned = outcome != outcomes.PRUNED
    final = np.where(unpruned, np.asarray(table["final_loss"], dtype=np.float64), np.nan)
    if np.isfinite(final).any():
        best = int(np.nanargmin(np.where(np.isfinite(final), final, np.nan)))
        metrics["best_final_loss"] = float(final[best])
        metrics.update(_point_values("best", grid, best))
    rate = np.where(unpruned, np.asarray(table["rate"], dtype=np.float64), np.nan)
    if np.isfinite(rate).any():
        fastest = int(np.nanargmin(rate))
        metrics["fastest_rate"] = float(rate[fastest])
        metrics.update(_point_values("fastest", grid, fastest))
    if stability and len(stability["largest_stable_lr"]) == 1:
        metrics["largest_stable_lr"] = float(stability["largest_stable_lr"][0])
        metrics["largest_stable_lr_theory"] = float(stability["largest_stable_lr_theory"][0])
    elif stability:
        metrics["stability/settings"] = len(stability["largest_stable_lr"])
        metrics["stability/within_one_step"] = int(np.sum(theory.within_one_step(stability)))
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}


def _outcomes(table: dict[str, Any]) -> tuple[str, ...]:
    """The outcomes a batch counts: pruned too, where it was pruned."""
    return outcomes.OUTCOMES if "pruned_at" in table else outcomes.OUTCOMES[:-1]


def _point_values(prefix: str, grid: Points, point: int) -> dict[str, float]:
    """`prefix.KEY` for each batched key of one coordinate at `point`."""
    out = {}
    for key in grid.keys:
        value = grid.values(key)[point]
        if np.size(value) == 1:
            out[f"{prefix}.{key}"] = float(np.reshape(value, -1)[0])
    return out


def _history(stability: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """With several settings, the stability bound as metric histories, one step per setting."""
    if not stability or len(stability["largest_stable_lr"]) < 2:
        return {}
    names = {"largest_stable_lr": "stability/measured", "largest_stable_lr_theory": "stability/theory"}
    return {names.get(name, f"stability/{name}"): values for name, values in stability.items() if name != "lr_step"}


def figures(out_dir: Path, cfg: DictConfig, problem: engines.Problem, grid: Points, table: dict[str, Any]) -> list[Path]:
    """The batch against its first key (final loss and rate, with theory), and for two keys a
    map of the rate over both (with the stability bound and the optimum of heavy ball)."""
    key = next((k for k in grid.keys if k != "x_start"), None)
    if key is None:
        return []
    rate = np.asarray(table["rate"], dtype=np.float64)
    diverged = np.asarray(table["outcome"]) == outcomes.DIVERGED
    x = grid.values(key)
    label = f"{cfg.backend.name} {problem.optimizer.name}"
    theory_line = (x, np.asarray(table["spectral_radius"])) if "spectral_radius" in table and len(grid.keys) == 1 else None
    bound = _bound(problem, grid) if key == "lr" and len(grid.keys) == 1 else None
    paths = [out_dir / f"batch_{key.rsplit('.', 1)[-1]}.png"]
    plots.batch_figure(key, [(label, x, np.asarray(table["final_loss"], dtype=np.float64), rate, diverged)],
                       theory_line, bound).savefig(paths[0])
    rest = [k for k in grid.keys if k != "x_start"]
    if len(rest) == 2 and len(grid.keys) == 2 and np.isfinite(rate).any():
        paths.append(out_dir / "rate_map.png")
        rate_map(grid, problem, rate, f"{label} on {cfg.loss.name}").savefig(paths[1])
    return paths


def rate_map(grid: Points, problem: engines.Problem, rate: np.ndarray, title: str):
    """The rate over the batch's two keys, with theory where lr and momentum are the keys."""
    x_key, y_key = grid.keys
    fastest = int(np.nanargmin(rate))
    best = (float(grid.values(x_key)[fastest]), float(grid.values(y_key)[fastest]), float(rate[fastest]))
    boundary = optimum = None
    curvatures = problem.loss.curvature_values()
    rule = problem.optimizer.name
    if (x_key, y_key) == ("lr", "optimizer.momentum") and curvatures is not None and rule in ("momentum", "nesterov"):
        largest = float(curvatures.max())
        boundary = (lambda beta: theory.largest_stable_lr(rule, largest, beta))
        if rule == "momentum" and problem.loss.spectrum_known() and curvatures.shape[1] == 2:
            optimum = theory.heavy_ball_optimum(float(curvatures.min()), largest)
            optimum = (optimum[0], optimum[1], optimum[2])
    return plots.rate_map_figure(x_key, grid.axes[0], y_key, grid.axes[1], rate.reshape(grid.shape),
                                 boundary, optimum, best, title)


def _bound(problem: engines.Problem, grid: Points) -> Optional[float]:
    """Theory's largest stable lr, where the batch's points share the loss's largest curvature."""
    curvatures = problem.loss.curvature_values()
    if curvatures is None or np.ptp(curvatures.max(axis=1)) > 0 or problem.schedule is not None:
        return None  # theory's bound is a constant lr's
    momentum = problem.optimizer.momentum
    return theory.largest_stable_lr(problem.optimizer.name, float(curvatures.max()),
                                    None if momentum is None else float(np.reshape(momentum, -1)[0]))


def _lines(grid: Points, summary: dict[str, float], stability: dict[str, np.ndarray], kept: int,
           wall_time: float) -> list[str]:
    """The terminal's account of a batch: its outcomes, its best points, the stability bound."""
    counts = ", ".join(f"{int(summary[k])} {k}" for k in outcomes.OUTCOMES if k in summary)
    lines = [f"{grid.count} points in {wall_time:.3g} s: {counts}"]
    for name, metric, prefix in (("best final loss", "best_final_loss", "best"), ("fastest rate", "fastest_rate", "fastest")):
        if metric in summary:
            at = " ".join(f"{k}={summary[f'{prefix}.{k}']:.6g}" for k in grid.keys if f"{prefix}.{k}" in summary)
            lines.append(f"{name} {summary[metric]:.6g} at {at}")
    if stability:
        pairs = list(zip(stability["largest_stable_lr"], stability["largest_stable_lr_theory"]))
        shown = "; ".join(f"{m:.6g} (theory {t:.6g})" for m, t in pairs[:3]) + ("; ..." if len(pairs) > 3 else "")
        lines.append(f"largest lr with rate < 1: {shown}")
    if kept < grid.count:
        lines.append(f"whole trajectories kept for {kept} of {grid.count} points (batch.trajectory_mb); every "
                     f"point's summary is in points.csv")
    return lines
