"""One job: composed config -> engine -> trajectory -> MLflow run and files.

`main` is the Hydra task function; `run_job` does the work on a composed config and returns the
final loss, the value a Hydra sweeper minimises.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runner import engines, losses, outcomes, plots, progress, provenance, schema, sweep
from runner.optimizers import Optimizer
from runner.schema import ConfigError

log = logging.getLogger("runner")

schema.register()
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def run_job(cfg: DictConfig) -> float:
    """Run gradient descent as `cfg` says and record it as one MLflow run; return the final loss."""
    from runner import tracking  # imported here: `--cfg` and `--help` need no MLflow

    hydra_cfg = HydraConfig.get()
    uri = tracking.tracking_uri(cfg.mlflow.tracking_uri, Path(hydra_cfg.runtime.cwd))
    tracking.check_reachable(uri)  # an unreachable server is said at once, before any work
    # Everything that can reject the input happens before the store is touched.
    problem, engine = build_problem(cfg)
    log.debug("engine %s (%s %s) on %s, %s, x of shape %s", engine.__name__, engine.FRAMEWORK, engine.VERSION,
              problem.device, problem.dtype, problem.x_start.shape)
    started = time.perf_counter()
    store = tracking.connect(uri, cfg.mlflow.experiment_name)
    log.debug("store %s, experiment %s: opened in %.2f s", uri, store.experiment_id, time.perf_counter() - started)
    config_hash = provenance.config_hash(cfg)
    if cfg.skip_done and (done := store.finished_run(config_hash)):
        log.info("[%s] skipped: run %s already has this config (skip_done=true)", run_name(cfg), done)
        return float(store.record(done).metrics.get("final_loss", float("nan")))

    tags = {"backend": cfg.backend.name, "framework": engine.FRAMEWORK, "framework_version": engine.VERSION,
            "device": problem.device, "loss": problem.loss.name, "optimizer": problem.optimizer.name,
            "config_hash": config_hash, **provenance.code_tags(),
            **provenance.version_tags(*provenance.LIBRARIES)}
    if problem.loss.curvature is not None:
        tags["loss_curvature"] = problem.loss.curvature
    if parent := sweep.parent_run_id(hydra_cfg):
        tags["mlflow.parentRunId"] = parent
    with store.run(name=run_name(cfg), tags=tags) as run_id:
        store.log_params(run_id, flat_params(cfg))
        trajectory = descend_and_record(store, run_id, cfg, problem, engine, hydra_cfg)
    return float(trajectory.loss[-1])


def descend_and_record(store, run_id: str, cfg: DictConfig, problem: engines.Problem, engine: Any,
                       hydra_cfg: Any) -> engines.Trajectory:
    """The descent, then everything it produced: metrics, outcome, files, the terminal lines."""
    label = f"[{sweep.position(hydra_cfg)}{cfg.backend.name} {problem.optimizer.name} lr={cfg.lr}]"
    bar = None if sweep.shares_terminal(hydra_cfg) else progress.for_terminal(label, problem.epochs + 1)
    started = time.perf_counter()
    try:
        trajectory = engine.descend(dataclasses.replace(problem, progress=bar))
    finally:
        if bar:
            bar.close()
    wall_time = time.perf_counter() - started
    log.debug("descent: %d rows in %.3f s", len(trajectory.x), wall_time)
    outcome = outcomes.classify(trajectory, cfg.stop.tolerance, cfg.stop.diverge_above)
    store.log_trajectory(run_id, trajectory, cfg.mlflow.max_logged_steps)
    summary = {"final_loss": trajectory.loss[-1], "final_grad_norm": trajectory.grad_norm[-1],
               "epochs_run": len(trajectory.x) - 1, "wall_time_s": wall_time}
    if outcome.steps_to_tolerance is not None:
        summary["steps_to_tolerance"] = outcome.steps_to_tolerance
    store.log_metrics(run_id, summary)
    store.set_tags(run_id, {"device": trajectory.device, "outcome": outcome.label})

    out_dir = Path(hydra_cfg.runtime.output_dir)
    csv_path = write_csv(out_dir / "trajectory.csv", trajectory)
    png_path = out_dir / "gradient_descent.png"
    if trajectory.x.ndim == 1:
        figure = plots.article_figure(problem.loss.objective(engines.load("numpy").OPS, ()), trajectory)
    else:
        figure = plots.path_figure(trajectory)
    figure.savefig(png_path)

    say(label, problem, trajectory, outcome, store.describe(run_id))
    for handler in logging.getLogger().handlers:  # the log file goes up next: make it complete
        handler.flush()
    store.log_artifacts(
        run_id,
        files=[png_path, csv_path, out_dir / f"{hydra_cfg.job.name}.log"],
        folders={"hydra": out_dir / hydra_cfg.output_subdir} if hydra_cfg.output_subdir else {},
    )
    return trajectory


def say(label: str, problem: engines.Problem, trajectory: engines.Trajectory,
        outcome: outcomes.Outcome, where: str) -> None:
    """The terminal's account of a run: the article's line, how it ended, where it is."""
    if trajectory.x.ndim == 1:
        # The article's line; a long run shows its first and last 8 epochs.
        rounded = np.array2string(np.around(trajectory.x, 2), max_line_width=sys.maxsize,
                                  threshold=20, edgeitems=8)
        log.info("%s %s", label, rounded)
    else:
        log.info("%s x: %s -> %s", label, problem.x_start.tolist(), np.around(trajectory.x[-1], 4).tolist())
    steps = "" if outcome.steps_to_tolerance is None else f" (within tolerance at epoch {outcome.steps_to_tolerance})"
    log.info("%s %s after %d epochs, final loss %.6g%s", label, outcome.label,
             len(trajectory.x) - 1, trajectory.loss[-1], steps)
    log.info("%s MLflow: %s", label, where)


def build_problem(cfg: DictConfig) -> tuple[engines.Problem, Any]:
    """Check `cfg` and turn it into an engine's Problem; every ConfigError is raised here."""
    schema.check_ranges(cfg)
    loss = losses.from_config(cfg.loss)
    start = schema.start_point(cfg.x_start)
    shape = loss.shape(start)
    if cfg.dim is not None:
        if loss.dim is not None and loss.dim != cfg.dim:
            raise ConfigError(f"dim={cfg.dim} is not allowed: loss={loss.name} has {loss.dim} coordinates")
        shape = () if cfg.dim == 1 else (cfg.dim,)
    if shape and len(start) not in (1, shape[0]):
        raise ConfigError(f"x_start={cfg.x_start} is not allowed: x has {shape[0]} coordinates "
                          f"(give {shape[0]} numbers, or one for all)")
    x_start = np.broadcast_to(np.array(start, dtype=np.float64).reshape(-1 if shape else ()), shape).copy()
    engine = engines.load(cfg.backend.name, cfg.backend.module)
    o = cfg.optimizer
    if o.name not in engine.OPTIMIZERS:
        raise ConfigError(f"optimizer={o.name}: backend={cfg.backend.name} implements "
                          f"{', '.join(engine.OPTIMIZERS)}")
    optimizer = Optimizer(o.name, cfg.lr, o.momentum, o.beta1, o.beta2, o.eps)
    device = engine.resolve_device(cfg.device.value)
    return engines.Problem(loss, x_start, cfg.epochs, optimizer, cfg.dtype.value, device,
                           cfg.stop.diverge_above, cfg.seed), engine


def run_name(cfg: DictConfig) -> str:
    """A name that says what the run is, e.g. 'tf-sgd-square-lr0.3'."""
    return f"{cfg.backend.name}-{cfg.optimizer.name}-{cfg.loss.name}-lr{cfg.lr:g}"


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as MLflow params: dotted keys, a group's `name` under the group's key.

    The `mlflow` node says where results go, not what was run (and a URI may hold a password),
    so it is left out.

    >>> flat_params(OmegaConf.create({"lr": 0.3, "backend": {"name": "tf"}, "mlflow": {}}))
    {'lr': 0.3, 'backend': 'tf'}
    """
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tree.pop("mlflow", None)
    params: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            elif value is not None:  # a rule's unused hyperparameters, an unset minimiser
                params[prefix[:-1] if key == "name" and prefix else f"{prefix}{key}"] = value

    walk("", tree)
    return params


def write_csv(path: Path, trajectory: engines.Trajectory) -> Path:
    """Every epoch of the trajectory, one row per step: step, then the series of `columns()`."""
    columns = trajectory.columns()
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", *columns])
        for step, row in enumerate(zip(*(series.tolist() for series in columns.values()))):
            writer.writerow([step, *row])
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    return run_job(cfg)
