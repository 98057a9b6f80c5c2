"""The typed schema of a runner config, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `runner_schema` first in its defaults, so every YAML file and every
command-line override is merged into these dataclasses: a wrong type (`lr=abc`), a misspelt
key (`lrr=0.1`) or a bad enum value (`device=gpu`) fails while Hydra composes the config,
before anything is computed or logged.

Types cannot say "greater than zero"; `check_ranges` does, right after composition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from omegaconf import MISSING, DictConfig


class ConfigError(CompactHydraException):
    """A config value that is well typed but not allowed; Hydra prints it as one line."""


class Device(Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"  # the GPU when the backend sees one, else the CPU


class DType(Enum):
    float32 = "float32"
    float64 = "float64"


@dataclass
class BackendConfig:
    """Which engine computes the gradient: a module `runner.engines.<name>`."""

    name: str = MISSING


@dataclass
class LossConfig:
    """A loss of one parameter `x`, written as expressions (see `runner.losses`)."""

    name: str = MISSING
    value: str = MISSING  # e.g. "x**2"
    grad: str = MISSING  # the hand-written derivative, e.g. "2*x", used by backend=numpy
    minimiser: Optional[float] = None
    curvature: Optional[float] = None  # second derivative at the minimiser: stable for lr < 2/L


@dataclass
class MlflowConfig:
    # null: $MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db in the launch folder
    tracking_uri: Optional[str] = None
    experiment_name: str = "runner"


@dataclass
class RunnerConfig:
    backend: BackendConfig = MISSING
    loss: LossConfig = MISSING
    x_start: float = 5.0
    epochs: int = 15
    lr: float = 0.3
    device: Device = Device.cpu
    dtype: DType = DType.float32
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def register() -> None:
    ConfigStore.instance().store(name="runner_schema", node=RunnerConfig)


def check_ranges(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key and what is allowed, for values no type can exclude.

    >>> from omegaconf import OmegaConf
    >>> check_ranges(OmegaConf.create({"x_start": 5.0, "epochs": 15, "lr": -0.1}))
    Traceback (most recent call last):
    runner.schema.ConfigError: lr=-0.1 is not allowed: lr must be a finite number > 0
    """
    if cfg.epochs < 0:
        raise ConfigError(f"epochs={cfg.epochs} is not allowed: epochs must be an integer >= 0")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"lr={cfg.lr} is not allowed: lr must be a finite number > 0")
    if not math.isfinite(cfg.x_start):
        raise ConfigError(f"x_start={cfg.x_start} is not allowed: x_start must be a finite number")
