"""A composed config, checked and turned into an engine's Problem and the loop around it: every
ConfigError is raised here.

One run is a batch of one point; a job with `batch.sweep` set (a batched sweep's group) is a
batch of every point of those sweeps, each checked against the same rules as a single run's
values (`schema.check_ranges`), with the same messages, naming the point.
"""

from __future__ import annotations

from types import ModuleType
from typing import Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runner import engines, schema
from runner.descent import optimizers, pruning, schedules
from runner.descent.loop import Loop
from runner.errors import ConfigError
from runner.problems import datasets, losses, models
from runner.sweeps import points


def from_config(cfg: DictConfig) -> tuple[engines.Problem, Loop, ModuleType, Optional[points.Points]]:
    """The problem of `cfg`, its loop, its engine, and its points when it is a batch (else None)."""
    grid = points.parse(cfg.batch.sweep) if cfg.batch.sweep else None
    values = grid.all_values() if grid else {}
    if grid and "seed" in grid.keys and cfg.batch.spread:
        axis = grid.axes[grid.keys.index("seed")]
        if len(axis) < 2:  # a sample's spread needs two
            raise ConfigError(f"seed={int(axis[0])} is one seed: a spread over seeds (batch.spread=true) needs two or "
                              f"more, e.g. 'seed=range(0,5)'; or set batch.spread=false")
    try:
        schema.check_ranges(cfg, values)
    except ConfigError as error:
        if error.point is None:
            raise
        raise ConfigError(f"point #{error.point} ({' '.join(grid.overrides(error.point))}): {error}") from None
    constants = {key[len(points.LOSS_CONSTANT):]: v for key, v in values.items() if key.startswith(points.LOSS_CONSTANT)}
    seeds = values.get("seed")  # one per point: a model's start and mini-batch order
    if cfg.get("model") is not None or cfg.get("data") is not None or cfg.get("batch_size") is not None:
        loss = _model(cfg, constants, values)
        if "model.l2" in values:
            loss = loss.with_constants({"l2": values["model.l2"]})
        starts, shape = None, (loss.size,)  # drawn once the batch is known to fit
    else:
        if "model.l2" in values:
            raise ConfigError(f"hydra.sweeper.batch: model.l2 is a model's weight decay: "
                              f"set model={'|'.join(models.MODELS)}")
        loss = losses.from_config(cfg.loss)
        if constants:
            loss = loss.with_constants(constants)
        starts = values["x_start"] if "x_start" in values else np.array([schema.start_point(cfg.x_start)])
        shape = _shape(cfg, loss, starts)
    if cfg.sharpness_every is not None and not loss.twice_differentiable:
        raise ConfigError(f"sharpness_every={cfg.sharpness_every} needs the loss's second derivative: loss={loss.name}'s "
                          f"value uses abs, whose second derivative is 0 or undefined; use a smooth loss, or "
                          f"sharpness_every=null")
    schedule = schedules.from_config(cfg.get("schedule"), cfg.epochs, values)
    prune = pruning.from_config(cfg.batch.get("prune"), cfg.epochs, grid is not None, loss.measure_names)
    count = grid.count if grid else 1
    keep_bytes = cfg.batch.trajectory_mb * 2**20 if grid else None
    if grid:  # before any array of the batch is made
        itemsize = np.dtype(cfg.dtype.value).itemsize
        _check_memory(grid, shape, itemsize, keep_bytes, loss.working_bytes(grid.count, itemsize, seeds is not None))
    if starts is None:  # a model's: each seed's initial weights, drawn once per seed
        unique, each = np.unique(seeds if seeds is not None else [cfg.seed], return_inverse=True)
        starts = np.stack([loss.initial(int(s)) for s in unique])[each]
    x_start = np.broadcast_to((starts if shape else starts[:, 0]).reshape(len(starts), *([-1] if shape else [])),
                              (count, *shape)).copy()
    engine = engines.load(cfg.backend.name, cfg.backend.module)
    o = cfg.optimizer
    if o.name not in optimizers.RULES:
        raise ConfigError(f"optimizer={o.name} has no update rule; runner.descent.optimizers has "
                          f"{', '.join(optimizers.RULES)}")
    optimizer = optimizers.Optimizer(o.name, **{name: values[h.key] if h.key in values else OmegaConf.select(cfg, h.key)
                                                for name, h in optimizers.HYPERPARAMETERS.items()})
    if optimizers.needs_minimum(o.name) and loss.minimiser_values() is None:
        raise ConfigError(f"optimizer={o.name} needs the loss's minimum f*: loss={loss.name} has no loss.minimiser "
                          f"(set it, or take a loss that has one: {', '.join(_losses_with_minimiser())})")
    device = engine.resolve_device(cfg.device.value)
    problem = engines.Problem(loss, x_start, optimizer, cfg.dtype.value, device, cfg.stop.diverge_above, cfg.seed,
                              None if seeds is None else np.asarray(seeds, dtype=np.int64), schedule)
    loop = Loop(cfg.epochs, cfg.stop.tolerance, keep_bytes, cfg.sharpness_every, cfg.sharpness_iterations, prune)
    return problem, loop, engine, grid


def _model(cfg: DictConfig, constants: dict, values: dict) -> models.Model:
    """The model of `cfg` on its data, or a ConfigError for a config that is not one model on one dataset."""
    datasets_allowed = "|".join(datasets.LOADERS)
    if cfg.get("model") is None:
        if cfg.get("data") is None:
            raise ConfigError(f"batch_size={cfg.batch_size} needs a model, whose training rows it batches: "
                              f"model={'|'.join(models.MODELS)} data={datasets_allowed}")
        raise ConfigError(f"data={cfg.data.name} needs a model to train: model={'|'.join(models.MODELS)}")
    if cfg.get("data") is None:
        raise ConfigError(f"model={cfg.model.name} needs data to train on: data={datasets_allowed}")
    default_loss = next(d["loss"] for d in OmegaConf.load(schema.CONF_DIR / "config.yaml").defaults
                        if isinstance(d, DictConfig) and "loss" in d)
    if cfg.loss.name != default_loss or cfg.loss.expr is not None:
        raise ConfigError(f"model={cfg.model.name} and loss={cfg.loss.name} at once: a model's loss is its own "
                          f"on data={cfg.data.name}; drop the loss, or the model and the data")
    if cfg.dim is not None:
        raise ConfigError(f"dim={cfg.dim} is not allowed with model={cfg.model.name}: x is the model's parameters")
    if constants or "x_start" in values:
        batched = ", ".join(sorted({*(points.LOSS_CONSTANT + k for k in constants),
                                    *(["x_start"] if "x_start" in values else [])}))
        raise ConfigError(f"hydra.sweeper.batch: {batched} cannot be batched with model={cfg.model.name}; "
                          f"a batch of models may vary {', '.join(points.MODEL_BATCHABLE)}")
    if cfg.batch_size is not None and optimizers.needs_objective(cfg.optimizer.name):
        raise ConfigError(f"optimizer={cfg.optimizer.name} with batch_size={cfg.batch_size} is not allowed: its step "
                          f"reads the loss, and a mini-batch's is not the loss; use the full batch (batch_size=null)")
    return models.from_config(cfg.model, datasets.prepare(cfg.data), cfg.batch_size)


def _losses_with_minimiser() -> list[str]:
    """The losses of conf/loss/ that set their minimiser."""
    files = sorted((schema.CONF_DIR / "loss").glob("*.yaml"))
    return [path.stem for path in files if OmegaConf.load(path).get("minimiser") is not None]


def _shape(cfg: DictConfig, loss: losses.Loss, starts: np.ndarray) -> tuple[int, ...]:
    """The shape of one point's x, from the loss, `dim` and x_start (one row per point)."""
    shape = loss.shape(starts[0])
    if cfg.dim is not None:
        if loss.dim is not None and loss.dim != cfg.dim:
            raise ConfigError(f"dim={cfg.dim} is not allowed: loss={loss.name} has {loss.dim} coordinates")
        shape = () if cfg.dim == 1 else (cfg.dim,)
    if shape and starts.shape[1] not in (1, shape[0]):
        shown = cfg.x_start if len(starts) == 1 else starts[0].tolist()
        raise ConfigError(f"x_start={shown} is not allowed: x has {shape[0]} coordinates "
                          f"(give {shape[0]} numbers, or one for all)")
    return shape


def _check_memory(grid: points.Points, shape: tuple[int, ...], itemsize: int, keep_bytes: int,
                  working: int = 0) -> None:
    coordinates = int(np.prod(shape))
    needed = points.memory_needed(grid.count, coordinates, itemsize, keep_bytes) + working
    available = points.memory_available()
    if available is not None and needed > available:
        layers = f", {working / 2**30:.1f} GB of it the models' layer outputs" if working else ""
        raise ConfigError(
            f"hydra.sweeper.batch: a batch of {grid.count} points ({grid.name()}, x of {coordinates} coordinates) "
            f"needs about {needed / 2**30:.1f} GB of memory{layers}, more than the {available / 2**30:.1f} GB "
            f"available: sweep fewer values, or batch fewer keys (hydra.sweeper.batch=[lr])")
