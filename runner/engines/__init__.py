"""Engines: one module per framework, behind one small interface.

`backend=NAME` selects the module `runner.engines.NAME`, imported only then, so a NumPy run
never pays for importing TensorFlow or PyTorch. Each engine module provides:

    FRAMEWORK: str                    the framework's distribution name, e.g. "tensorflow"
    VERSION: str                      its version
    OPS: dict[str, callable]          the framework's sin, cos, exp, ... for loss expressions
    resolve_device(requested) -> str  "cpu" | "cuda" | "auto" -> the device to use, or a
                                      ConfigError naming the backend
    descend(loss, x_start, epochs, lr, dtype, device) -> Trajectory

An engine knows nothing of Hydra or MLflow: it takes plain values and returns arrays, so it can
be tested and benchmarked alone. Adding a backend is one module here plus `conf/backend/NAME.yaml`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from runner.schema import ConfigError

# What to `pip install` when an engine's framework is missing, where the name differs.
INSTALL_HINT = {"tensorflow": "tensorflow-cpu", "torch": "torch==2.13.0"}


@dataclass(frozen=True)
class Trajectory:
    """Gradient descent as plain data: row k holds x_k, the loss at x_k and the gradient at x_k.

    Row 0 is the starting point, so each array has epochs + 1 rows.
    """

    x: np.ndarray
    loss: np.ndarray
    grad: np.ndarray
    device: str  # where the parameter actually lived, as the framework names it


def load(backend: str) -> ModuleType:
    """Import the engine of `backend`, or raise a ConfigError saying what to install.

    >>> load("numpy").FRAMEWORK
    'numpy'
    """
    module_name = f"{__name__}.{backend}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise ConfigError(f"backend={backend}: there is no engine module {module_name}")
        if error.name is None or error.name.startswith(__name__):
            raise
        package = error.name.split(".")[0]
        raise ConfigError(
            f"backend={backend} needs the Python package '{package}', which is not installed: "
            f"pip install {INSTALL_HINT.get(package, package)}"
        )


def no_gpu(backend: str, requested: str, why: str) -> ConfigError:
    """The error for device=cuda where the backend has no GPU to use."""
    return ConfigError(f"device={requested}: backend={backend} {why}; use device=cpu or device=auto")
