"""One job: composed config -> problem -> descent -> MLflow run and files.

`main` is the Hydra task function; `record` does the work on a composed config and returns the
run's id and its final loss (of a batch: the best), the value a Hydra sweeper minimises
(`run_job`). A job is one run, or
with `batch.sweep` set (a group of a batched sweep) one batch of points (`runner.batch`).
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runner import batch, cluster, descent, engines, outcomes, plots, provenance, schema, sweeps, theory
from runner.expressions import NUMPY_OPS
from runner.points import Points
from runner.problem import build

log = logging.getLogger("runner")

schema.register()
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class Recorded(NamedTuple):
    run_id: str
    value: float  # the final loss; of a batch, the best final loss


def run_job(cfg: DictConfig) -> float:
    """Run gradient descent as `cfg` says and record it as one MLflow run; return the final loss."""
    return record(cfg).value


def record(cfg: DictConfig) -> Recorded:
    """Run gradient descent as `cfg` says and record it as one MLflow run (with skip_done=true, a
    FINISHED run of the same config stands in for it): its id and final loss."""
    from runner import tracking  # imported here: `--cfg` and `--help` need no MLflow

    hydra_cfg = HydraConfig.get()
    cluster.handle_signals()
    uri = tracking.tracking_uri(cfg.mlflow.tracking_uri, Path(hydra_cfg.runtime.cwd))
    tracking.check_reachable(uri)  # an unreachable server is said at once, before any work
    # Everything that can reject the input happens before the store is touched.
    problem, engine, grid = build(cfg)
    log.debug("engine %s (%s %s) on %s, %s, %d point(s) of shape %s", engine.__name__, engine.FRAMEWORK,
              engine.VERSION, problem.device, problem.dtype, problem.points, problem.shape)
    started = time.perf_counter()
    store = tracking.connect(uri, cfg.mlflow.experiment_name)
    log.debug("store %s, experiment %s: opened in %.2f s", uri, store.experiment_id, time.perf_counter() - started)
    config_hash = provenance.config_hash(cfg)
    name = run_name(cfg, grid)
    if cfg.skip_done and (done := store.finished_run(config_hash)):
        log.info("[%s] skipped: run %s already has this config (skip_done=true)", name, done)
        return Recorded(done, float(store.record(done).metrics.get("final_loss" if grid is None else "best_final_loss",
                                                                     math.nan)))

    tags = {"backend": cfg.backend.name, "framework": engine.FRAMEWORK, "framework_version": engine.VERSION,
            "device": problem.device, "loss": problem.loss.name, "optimizer": problem.optimizer.name,
            "config_hash": config_hash, **provenance.code_tags(),
            **provenance.version_tags(*provenance.LIBRARIES), **cluster.job_tags()}
    curvature = problem.loss.curvature_values()
    if curvature is not None and np.ptp(curvature.max(axis=1)) == 0:
        tags["loss_curvature"] = float(curvature.max())
    if grid:
        tags["kind"] = "batch"
    if parent := sweeps.parent_run_id(hydra_cfg):
        tags["mlflow.parentRunId"] = parent
    with store.run(name=name, tags=tags) as run_id:
        if grid:
            store.log_params(run_id, batch.params(flat_params(cfg), grid))
            return Recorded(run_id, batch.descend_and_record(store, run_id, cfg, problem, engine, grid, hydra_cfg))
        store.log_params(run_id, flat_params(cfg))
        trajectory = descend_and_record(store, run_id, cfg, problem, engine, hydra_cfg)
    return Recorded(run_id, float(trajectory.loss[-1]))


def descend_and_record(store, run_id: str, cfg: DictConfig, problem: engines.Problem, engine: Any,
                       hydra_cfg: Any) -> descent.Trajectory:
    """The descent, then everything it produced: metrics, outcome, files, the terminal lines."""
    label = f"[{sweeps.position(hydra_cfg)}{cfg.backend.name} {problem.optimizer.name} lr={cfg.lr}]"
    result, wall_time = descent.timed(problem, engine, None if sweeps.shares_terminal(hydra_cfg) else label)
    trajectory, summary = result.trajectory(0), result.summary
    log.debug("descent: %d rows in %.3f s", len(trajectory.x), wall_time)
    store.log_trajectory(run_id, trajectory, cfg.mlflow.max_logged_steps)
    radius = theory.of_problem(problem)
    store.log_metrics(run_id, {**summary.values(0), "wall_time_s": wall_time,
                               **({} if radius is None else {"spectral_radius": float(radius[0])})})
    store.set_tags(run_id, {"device": trajectory.device, "outcome": summary.outcome[0]})

    out_dir = Path(hydra_cfg.runtime.output_dir)
    csv_path = write_csv(out_dir / "trajectory.csv", trajectory)
    png_path = out_dir / "gradient_descent.png"
    if trajectory.x.ndim == 1:
        figure = plots.article_figure(problem.loss.objective(NUMPY_OPS, ()), trajectory)
    else:
        figure = plots.path_figure(trajectory)
    figure.savefig(png_path)

    say(label, problem, trajectory, summary, store.describe(run_id))
    for handler in logging.getLogger().handlers:  # the log file goes up next: make it complete
        handler.flush()
    store.log_artifacts(
        run_id,
        files=[png_path, csv_path, out_dir / f"{hydra_cfg.job.name}.log"],
        folders={"hydra": out_dir / hydra_cfg.output_subdir} if hydra_cfg.output_subdir else {},
    )
    return trajectory


def say(label: str, problem: engines.Problem, trajectory: descent.Trajectory,
        summary: outcomes.Summary, where: str) -> None:
    """The terminal's account of a run: the article's line, how it ended, where it is."""
    if trajectory.x.ndim == 1:
        # The article's line; a long run shows its first and last 8 epochs.
        rounded = np.array2string(np.around(trajectory.x, 2), max_line_width=sys.maxsize,
                                  threshold=20, edgeitems=8)
        log.info("%s %s", label, rounded)
    else:
        log.info("%s x: %s -> %s", label, problem.x_start[0].tolist(), np.around(trajectory.x[-1], 4).tolist())
    steps = int(summary.steps_to_tolerance[0])
    within = "" if steps < 0 else f" (within tolerance at epoch {steps})"
    log.info("%s %s after %d epochs, final loss %.6g%s", label, summary.outcome[0],
             len(trajectory.x) - 1, trajectory.loss[-1], within)
    log.info("%s MLflow: %s", label, where)


def run_name(cfg: DictConfig, grid: Optional[Points] = None) -> str:
    """A name that says what the run is: 'tf-sgd-square-lr0.3', or for a batch
    'numpy-momentum-ill_conditioned lr×momentum [200×200]'."""
    if grid:
        return f"{cfg.backend.name}-{cfg.optimizer.name}-{cfg.loss.name} {grid.name()}"
    return f"{cfg.backend.name}-{cfg.optimizer.name}-{cfg.loss.name}-lr{cfg.lr:g}"


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as MLflow params: dotted keys, a group's `name` under the group's key.

    The `mlflow` node says where results go, not what was run (and a URI may hold a password),
    and the `batch` node how a batch runs (its points are params of their own, `batch.params`):
    both are left out.

    >>> flat_params(OmegaConf.create({"lr": 0.3, "backend": {"name": "tf"}, "mlflow": {}}))
    {'lr': 0.3, 'backend': 'tf'}
    """
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tree.pop("mlflow", None)
    tree.pop("batch", None)
    params: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            elif value is not None:  # a rule's unused hyperparameters, an unset minimiser
                params[prefix[:-1] if key == "name" and prefix else f"{prefix}{key}"] = value

    walk("", tree)
    return params


def write_csv(path: Path, trajectory: descent.Trajectory) -> Path:
    """Every epoch of the trajectory, one row per step: step, then the series of `columns()`."""
    columns = trajectory.columns()
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", *columns])
        for step, row in enumerate(zip(*(series.tolist() for series in columns.values()))):
            writer.writerow([step, *row])
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@schema.reported
def main(cfg: DictConfig) -> float:
    return run_job(cfg)
