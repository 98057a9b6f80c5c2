"""One job: composed config -> engine -> trajectory -> MLflow run and files.

`main` is the Hydra task function; `run_job` does the work on a composed config and returns the
final loss, the value a Hydra sweeper would minimise.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runner import engines, losses, plots, schema

log = logging.getLogger("runner")

schema.register()
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def run_job(cfg: DictConfig) -> float:
    """Run gradient descent as `cfg` says and record it as one MLflow run."""
    # Everything that can reject the input happens before the store is touched.
    schema.check_ranges(cfg)
    loss = losses.from_config(cfg.loss)
    backend = cfg.backend.name
    engine = engines.load(backend)
    device = engine.resolve_device(cfg.device.value)

    from runner import tracking  # imported here: `--cfg` and `--help` need no MLflow

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    uri = tracking.tracking_uri(cfg.mlflow.tracking_uri, Path(hydra_cfg.runtime.cwd))
    store = tracking.connect(uri, cfg.mlflow.experiment_name)
    tags = {"backend": backend, "framework": engine.FRAMEWORK, "framework_version": engine.VERSION,
            "device": device, "loss": loss.name}
    with store.run(name=run_name(cfg), tags=tags) as run_id:
        store.log_params(run_id, flat_params(cfg))
        trajectory = engine.descend(loss, cfg.x_start, cfg.epochs, cfg.lr, cfg.dtype.value, device)
        store.set_tags(run_id, {"device": trajectory.device})
        store.log_trajectory(run_id, trajectory)

        csv_path = write_csv(out_dir / "trajectory.csv", trajectory)
        png_path = out_dir / "gradient_descent.png"
        plots.article_figure(loss.value.bind(engines.load("numpy").OPS), trajectory).savefig(png_path)

        rounded = np.array2string(np.around(trajectory.x, 2), max_line_width=sys.maxsize)
        log.info("[%s lr=%s] %s", backend, cfg.lr, rounded)
        log.info("[%s lr=%s] MLflow: %s", backend, cfg.lr, store.describe(run_id))
        for handler in logging.getLogger().handlers:
            handler.flush()
        store.log_artifacts(
            run_id,
            files=[png_path, csv_path, out_dir / f"{hydra_cfg.job.name}.log"],
            folders={"hydra": out_dir / hydra_cfg.output_subdir} if hydra_cfg.output_subdir else {},
        )
    return float(trajectory.loss[-1])


def run_name(cfg: DictConfig) -> str:
    """A name that says what the run is, e.g. 'tf-square-lr0.3'."""
    return f"{cfg.backend.name}-{cfg.loss.name}-lr{cfg.lr:g}"


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
            else:
                params[prefix[:-1] if key == "name" and prefix else f"{prefix}{key}"] = value

    walk("", tree)
    return params


def write_csv(path: Path, trajectory: engines.Trajectory) -> Path:
    """Every epoch of the trajectory, one row per step: step, x, loss, grad."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", "x", "loss", "grad"])
        for step, row in enumerate(zip(trajectory.x.tolist(), trajectory.loss.tolist(),
                                       trajectory.grad.tolist())):
            writer.writerow([step, *row])
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    return run_job(cfg)
