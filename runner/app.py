"""One job: composed config -> problem -> descent -> MLflow run and files.

`main` is the Hydra task function; `record` does the work on a composed config and returns the
run's id and its final loss (of a batch: the best), the value a Hydra sweeper minimises
(`run_job`). A job is one run, or with `batch.sweep` set (a group of a batched sweep) one batch
of points; both are recorded by `runner.records.recording`, a run's output its trajectory, a batch's its
point table (`runner.records.batch`). `identity` is what a job's run is called and tagged with, whether
the job makes it or, for a job lost before it could, the sweeper (`record_lost`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runner import engines, job, process, schema
from runner.problem import from_config
from runner.records import batch, provenance, recording
from runner.sweeps import cluster
from runner.sweeps.points import Points

log = logging.getLogger("runner")

schema.register()
CONF_DIR = str(schema.CONF_DIR)


class Recorded(NamedTuple):
    run_id: str
    value: float  # the final loss; of a batch, the best final loss


def run_job(cfg: DictConfig) -> float:
    """Run gradient descent as `cfg` says and record it as one MLflow run; return the final loss."""
    return record(cfg).value


def record(cfg: DictConfig) -> Recorded:
    """Run gradient descent as `cfg` says and record it as one MLflow run (with skip_done=true, a
    FINISHED run of the same config stands in for it): its id and final loss."""
    from runner.records import tracking  # imported here: `--cfg` and `--help` need no MLflow

    hydra_cfg = HydraConfig.get()
    if job.in_launcher_process(hydra_cfg):
        process.own()
    cluster.handle_signals()
    uri = tracking.tracking_uri(cfg.mlflow.tracking_uri, Path(hydra_cfg.runtime.cwd))
    tracking.check_reachable(uri)  # an unreachable server is said at once, before any work
    # Everything that can reject the input happens before the store is touched.
    problem, loop, engine, grid = from_config(cfg)
    log.debug("engine %s (%s %s) on %s, %s, %d point(s) of shape %s", engine.__name__, engine.FRAMEWORK,
              engine.VERSION, problem.device, problem.dtype, problem.points, problem.shape)
    started = time.perf_counter()
    store = tracking.connect(uri, cfg.mlflow.experiment_name)
    log.debug("store %s, experiment %s: opened in %.2f s", uri, store.experiment_id, time.perf_counter() - started)
    name, params, tags = identity(cfg, problem, engine, grid)
    if cfg.skip_done and (done := store.finished_run(tags["config_hash"])):
        log.info("[%s] skipped: run %s already has this config (skip_done=true)", name, done)
        return Recorded(done, store.record(done).value)
    tags.update(cluster.job_tags())
    if (parent := job.parent_run_id(hydra_cfg)) is not None:
        tags.update({"mlflow.parentRunId": parent, job.NUMBER_TAG: job.number(hydra_cfg)})
    with store.run(name=name, tags=tags) as run_id:
        store.log_params(run_id, params)
        # The config first, so that a run whose process dies can still be run again (runner.reproduce).
        out_dir = Path(hydra_cfg.runtime.output_dir)
        store.log_artifacts(run_id, files=[], folders={"hydra": out_dir / hydra_cfg.output_subdir}
                            if hydra_cfg.output_subdir else {})
        value = recording.descend_and_record(store, run_id, cfg, problem, loop, engine, grid, hydra_cfg,
                                             batch.point_records if grid else recording.trajectory_records)
    return Recorded(run_id, value)


def identity(cfg: DictConfig, problem: engines.Problem, engine: Any, grid: Optional[Points]
             ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A job's run name, params and tags: what it is, where it ran and with which code."""
    tags = {"backend": cfg.backend.name, "framework": engine.FRAMEWORK, "framework_version": engine.VERSION,
            "device": problem.device, "loss": problem.loss.name, "optimizer": problem.optimizer.name,
            "config_hash": provenance.config_hash(cfg), **provenance.code_tags(),
            **provenance.version_tags(*provenance.LIBRARIES)}
    curvature = problem.loss.curvature_values()
    if curvature is not None and np.ptp(curvature.max(axis=1)) == 0:
        tags["loss_curvature"] = float(curvature.max())
    if grid:
        tags["kind"] = "batch"
    params = batch.params(flat_params(cfg), grid) if grid else flat_params(cfg)
    return run_name(cfg, grid), params, tags


def record_lost(store: Any, parent_id: str, cfg: DictConfig, number: int, status: str, error: str,
                tags: dict[str, str]) -> str:
    """The run of job `number` of a sweep that ended without making its own (its process died,
    its cluster ended it, it failed first): named, with params and tags as the job would have made
    it, ended `status` with `error` as its reason, and its config stored so that it can be re-run."""
    cfg = job.task_config(cfg)
    problem, _, engine, grid = from_config(cfg)  # the sweeper checked this config before launching the job
    name, params, identity_tags = identity(cfg, problem, engine, grid)
    run_id = store.create(name, {**identity_tags, **tags, "mlflow.parentRunId": parent_id, job.NUMBER_TAG: number,
                                 "error": error})
    store.log_params(run_id, params)
    store.log_text(run_id, job.config_yaml(cfg), "hydra/config.yaml")
    store.end(run_id, status)
    log.error("[job #%d %s] %s: %s", number, name, status, error)
    return run_id


def run_name(cfg: DictConfig, grid: Optional[Points] = None) -> str:
    """A name that says what the run is: 'tf-sgd-square-lr0.3', 'torch-sgd-logistic-digits-lr0.1'
    for a model, or for a batch 'numpy-momentum-ill_conditioned lr×momentum [200×200]'."""
    objective = f"{cfg.model.name}-{cfg.data.name}" if cfg.get("model") is not None else cfg.loss.name
    if grid:
        return f"{cfg.backend.name}-{cfg.optimizer.name}-{objective} {grid.name()}"
    return f"{cfg.backend.name}-{cfg.optimizer.name}-{objective}-lr{cfg.lr:g}"


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as MLflow params: dotted keys, a group's `name` under the group's key.

    The `mlflow` node says where results go, not what was run (and a URI may hold a password),
    and the `batch` node how a batch runs (its points are params of their own, `batch.params`):
    both are left out; so are, for a model, the loss and x_start, which it does not read, and
    `sharpness_iterations` where no sharpness is measured.

    >>> flat_params(OmegaConf.create({"lr": 0.3, "backend": {"name": "tf"}, "mlflow": {}}))
    {'lr': 0.3, 'backend': 'tf'}
    """
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tree.pop("mlflow", None)
    tree.pop("batch", None)
    if tree.get("model") is not None:
        tree.pop("loss", None)
        tree.pop("x_start", None)
    if tree.get("sharpness_every") is None:  # nothing measured: its power iterations are not a setting of the run
        tree.pop("sharpness_iterations", None)
    params: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            elif value is not None:  # a rule's unused hyperparameters, an unset minimiser
                params[prefix[:-1] if key == "name" and prefix else f"{prefix}{key}"] = value

    walk("", tree)
    return params


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@schema.reported
def main(cfg: DictConfig) -> float:
    return run_job(cfg)
