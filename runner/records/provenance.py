"""What a run needs to be reproduced: a canonical hash of its config, and where its code came from."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PROJECT = Path(__file__).resolve().parents[2]  # the checkout: runner/records/ is two below it
# Keys that say where or whether to record, not what is computed. A batch's points
# (`batch.sweep`) are what it computes: hashed, when there are any.
NOT_HASHED = ("mlflow", "skip_done", "batch")
# The keys that were null in some config when runs began to be recorded, and were hashed so. Any
# other null is left out of the hash: a key added later with a null default (a new rule's
# hyperparameter) moves no recorded run's hash, so skip_done still finds it.
HASHED_NULLS = frozenset({"backend.module", "dim", "loss.curvature", "loss.dim", "loss.expr", "loss.grad",
                          "loss.minimiser", "optimizer.beta1", "optimizer.beta2", "optimizer.eps",
                          "optimizer.momentum"})


def config_hash(cfg: DictConfig) -> str:
    """A hash of the resolved config that ignores how numbers were spelt.

    >>> a = config_hash(OmegaConf.create({"lr": 0.3, "x_start": 5}))
    >>> a == config_hash(OmegaConf.create({"lr": 0.30, "x_start": 5.0}))
    True
    >>> a == config_hash(OmegaConf.create({"lr": 0.31, "x_start": 5}))
    False
    """
    # Not to_container(cfg) whole: in a sweep's job configs the hydra node cannot be resolved yet.
    tree = {key: _plain(cfg[key]) for key in cfg if key not in (*NOT_HASHED, "hydra")}
    if tree.get("sharpness_every") is None:  # measures nothing: its settings change nothing, nor the hash
        tree.pop("sharpness_iterations", None)
    if (tree.get("schedule") or {}).get("name") == "constant":  # lr throughout, as before schedules were
        tree.pop("schedule")
    if cfg.get("batch") and cfg.batch.sweep:
        tree["batch.sweep"] = list(cfg.batch.sweep)
    if cfg.get("batch") and (cfg.batch.get("prune") or {}).get("rungs") is not None:  # a pruned batch records other numbers than a whole one
        tree["batch.prune"] = _plain(cfg.batch.prune)
    text = json.dumps(_canonical(_without_new_nulls(tree)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _without_new_nulls(tree: dict, prefix: str = "") -> dict:
    """`tree` without the nulls whose keys are not HASHED_NULLS.

    >>> _without_new_nulls({"dim": None, "optimizer": {"momentum": None, "decrease": None, "name": "sgd"}})
    {'dim': None, 'optimizer': {'momentum': None, 'name': 'sgd'}}
    """
    kept = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            kept[key] = _without_new_nulls(value, f"{path}.")
        elif value is not None or path in HASHED_NULLS:
            kept[key] = value
    return kept


def _plain(value: Any) -> Any:
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return value.name if isinstance(value, Enum) else value


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)  # 5 and 5.0, 0.3 and 0.30: one number, one spelling
    return value


@functools.lru_cache(maxsize=None)
def code_tags() -> dict[str, str]:
    """The project's git commit and whether its tree had uncommitted changes, and the Python."""
    tags = {"python_version": platform.python_version()}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        tags.update(git_commit=commit, git_dirty=str(bool(status.strip())).lower())
    except (OSError, subprocess.SubprocessError):
        tags.update(git_commit="unknown", git_dirty="unknown")
    return tags


# The libraries whose versions a run records (framework_version comes from the engine).
LIBRARIES = ("numpy", "hydra-core", "omegaconf", "mlflow|mlflow-skinny", "matplotlib")


@functools.lru_cache(maxsize=None)
def version_tags(*distributions: str) -> dict[str, str]:
    """`<name>_version` for each installed distribution; `a|b` takes the first of a and b
    that is installed (`mlflow|mlflow-skinny`: the client alone, as on a GPU machine).

    >>> version_tags("numpy|not-a-package")["numpy_version"] == metadata.version("numpy")
    True
    """
    tags = {}
    for names in distributions:
        for name in names.split("|"):
            try:
                tags[f"{names.split('|')[0].replace('-', '_')}_version"] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                pass
    return tags
