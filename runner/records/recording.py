"""What a job records, one way for a single run and a batch: the descent, timed, then its records.

`descend_and_record` is the skeleton every job goes through: a label, the timed descent (with a
progress bar where the job has the terminal to itself), the job's output turned into `Records`,
those logged to the run, the terminal's lines, and the files uploaded once the log is complete
(the job's `.hydra/` config went up when its run began).
A job's output is one of two functions of the descent: `trajectory_records` for a single run
(every epoch of its one point: per-step metrics, trajectory.csv and the article's figure), and
`runner.records.batch.point_records` for a batch (a row per point: points.csv, its summary, figures).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from omegaconf import DictConfig

from runner import engines, job
from runner.descent import schedules, theory
from runner.descent.loop import Descent, Loop, Trajectory, timed
from runner.problems.expressions import NUMPY_OPS
from runner.records import plots, tables

log = logging.getLogger("runner")


@dataclass
class Records:
    """A job's records, before they go to its run."""

    value: float  # what a sweeper minimises: the final loss; of a batch, the best final loss
    metrics: dict[str, float]  # single values
    tags: dict[str, Any]
    lines: list[str]  # for the terminal, each under the job's label
    files: list[Path]  # artifacts, at the run's root
    trajectory: Optional[Trajectory] = None  # every series of it, per step (metrics' steps)
    series: dict[str, np.ndarray] = field(default_factory=dict)  # metric histories: one value a step
    tables: dict[str, dict] = field(default_factory=dict)  # artifact file -> columns, as the UI shows tables


Outputs = Callable[[DictConfig, engines.Problem, Any, Descent, float, Any], Records]


def descend_and_record(store: Any, run_id: str, cfg: DictConfig, problem: engines.Problem, loop: Loop,
                       engine: Any, grid: Any, hydra_cfg: Any, outputs: Outputs) -> float:
    """Run the descent of the job and record it in its run (`outputs` makes its records); the
    value a sweeper minimises."""
    what = grid.name() if grid else f"lr={cfg.lr}"
    label = f"[{job.position(hydra_cfg)}{cfg.backend.name} {problem.optimizer.name} {what}]"
    if problem.loss.data is not None:  # a model's: before it trains, so that a run that fails shows it too
        store.log_dataset(run_id, problem.loss.data)
        log.info("%s %s", label, problem.loss.data.describe())
    result, wall_time = timed(problem, engine, loop, None if job.in_launcher_process(hydra_cfg) else label)
    log.debug("descent: %d rows of %d point(s) in %.3f s", len(result.loss), problem.points, wall_time)
    records = outputs(cfg, problem, grid, result, wall_time, hydra_cfg)
    store.log_outputs(run_id, {**records.metrics, "wall_time_s": wall_time}, records.tags, records.trajectory,
                      cfg.mlflow.max_logged_steps, records.series)
    for name, columns in records.tables.items():
        store.log_table(run_id, columns, name)
    for line in records.lines:
        log.info("%s %s", label, line)
    log.info("%s MLflow: %s", label, store.describe(run_id))
    for handler in logging.getLogger().handlers:  # the log file goes up next: make it complete
        handler.flush()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    store.log_artifacts(run_id, files=[*records.files, out_dir / f"{hydra_cfg.job.name}.log"], folders={})
    return records.value


def trajectory_records(cfg: DictConfig, problem: engines.Problem, grid: None, result: Descent,
                       wall_time: float, hydra_cfg: Any) -> Records:
    """A single run's records: every epoch's x, loss and gradient, its summary, trajectory.csv and
    the article's figure (a path per coordinate for a vector)."""
    trajectory, summary = result.trajectory(0), result.summary
    out_dir = Path(hydra_cfg.runtime.output_dir)
    csv_path = tables.write_series(out_dir / "trajectory.csv", trajectory.columns())
    png_path = out_dir / "gradient_descent.png"
    if problem.loss.data is not None:  # a model's
        figure = plots.training_figure(trajectory, problem.optimizer.lr)
    elif trajectory.x.ndim == 1:
        figure = plots.article_figure(problem.loss.objective(NUMPY_OPS, ()), trajectory)
    else:
        figure = plots.path_figure(trajectory)
    figure.savefig(png_path)
    files = [png_path, csv_path]
    radius = theory.of_problem(problem)
    metrics = {**summary.values(0), **({} if radius is None else {"spectral_radius": float(radius[0])})}
    lines = _lines(problem, trajectory, summary)
    if problem.schedule is not None and problem.schedule.name == "ramp":
        found, line, figure_path = _range_test(problem, trajectory, out_dir)
        metrics.update(found)
        lines.append(line)
        files.append(figure_path)
    return Records(
        value=float(trajectory.loss[-1]),
        metrics=metrics,
        tags={"device": trajectory.device, "outcome": summary.outcome[0]},
        lines=lines,
        files=files,
        trajectory=trajectory,
    )


def _range_test(problem: engines.Problem, trajectory: Trajectory, out_dir: Path) -> tuple[dict, str, Path]:
    """The LR range test of a run whose lr ramps up (`schedules.range_test`): its metrics
    `lr_suggested` and `lr_blowup`, its line beside theory's stability bound where the loss knows
    its curvature, and `lr_range_test.png`."""
    lr = trajectory.measured[schedules.LR]
    suggested, blowup = schedules.range_test(lr, trajectory.loss)
    curvature, momentum = problem.loss.curvature, problem.optimizer.momentum
    bound = None if curvature is None else theory.largest_stable_lr(problem.optimizer.name, curvature, momentum)
    bound = None if bound is None else float(bound)
    rose = f"started to rise at lr {blowup:.4g}" if np.isfinite(blowup) else f"did not rise up to lr {float(lr[-1]):.4g}"
    theory_says = "" if bound is None else f" (theory's stability bound: {bound:.4g})"
    path = out_dir / "lr_range_test.png"
    plots.range_test_figure(lr, trajectory.loss, suggested, blowup, bound).savefig(path)
    line = f"LR range test: the loss fell fastest at lr {suggested:.4g} (suggested), and {rose}{theory_says} ({path.name})"
    return {"lr_suggested": suggested, "lr_blowup": blowup}, line, path


def _lines(problem: engines.Problem, trajectory: Trajectory, summary: Any) -> list[str]:
    """The terminal's account of a run: the article's line, how it ended."""
    if trajectory.x.ndim == 1:
        # The article's line; a long run shows its first and last 8 epochs.
        path = np.array2string(np.around(trajectory.x, 2), max_line_width=sys.maxsize, threshold=20, edgeitems=8)
    else:
        # past RECORDED coordinates, both ends show the recorded head, and the norm of the whole x
        start = np.around(problem.x_start[0, :trajectory.x.shape[1]], 4).tolist()
        path = f"x: {start} -> {np.around(trajectory.x[-1].astype(np.float64), 4).tolist()}"
        if trajectory.x_norm is not None:
            path += f" (first {trajectory.x.shape[1]} of {problem.x_start[0].size}; |x| {trajectory.x_norm[-1]:.4g})"
    steps = int(summary.steps_to_tolerance[0])
    within = "" if steps < 0 else f" (within tolerance at epoch {steps})"
    return [path, f"{summary.outcome[0]} after {len(trajectory.x) - 1} epochs, final loss "
                  f"{trajectory.loss[-1]:.6g}{within}"]
