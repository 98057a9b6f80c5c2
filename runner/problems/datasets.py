"""Datasets a model is trained on, read and prepared once per job on the host, then handed to an
engine as arrays.

Three ship inside scikit-learn's wheel, so nothing is downloaded: diabetes (regression, 442 x 10),
breast cancer (two classes, 569 x 30) and digits (ten classes, 1,797 x 64). A fourth is made
here: a least-squares problem whose Hessian spectrum the config sets (its size, condition number
and noise), so that theory's rates and stable learning rates are known exactly.

Preparation is part of the experiment (the article series' part 3), each step a config key of
conf/data/NAME.yaml: a train/validation split drawn from `split_seed`, standardisation fitted on
the training part alone (a regression's target too) and applied to both, and an intercept column.

    data = prepare(OmegaConf.load("conf/data/digits.yaml"))
    data.x_train.shape, data.classes        # (1438, 65), 10
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from runner.errors import ConfigError

REGRESSION, BINARY, CLASSES = "regression", "binary", "classes"


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset: float64 features (an intercept column last, where asked), targets
    (float64 for a regression, class indices for a classifier), split into train and validation."""

    name: str
    task: str  # REGRESSION, BINARY or CLASSES
    x_train: np.ndarray  # (rows, features)
    y_train: np.ndarray  # (rows,)
    x_val: np.ndarray
    y_val: np.ndarray
    classes: int  # 0 for a regression
    source: str  # where the raw data comes from, as MLflow's dataset source says it
    digest: str  # of the prepared arrays: the same digest is the same data, bit for bit
    intercept: bool = False  # whether the last feature is a column of ones

    @property
    def features(self) -> int:
        return self.x_train.shape[1]

    def describe(self) -> str:
        """One line, as a run's log says it.

        >>> prepare({"name": "synthetic", "rows": 100, "features": 4, "condition": 10, "noise": 0,
        ...          "seed": 0, "validation": 0.2, "split_seed": 0, "standardize": False,
        ...          "intercept": False}).describe()
        'synthetic: regression, 100 train + 20 validation rows of 4 features'
        """
        what = self.task if self.task == REGRESSION else f"{self.classes} classes"
        return (f"{self.name}: {what}, {len(self.y_train)} train + {len(self.y_val)} validation rows "
                f"of {self.features} features")


def _sklearn(loader: str, **kwargs: Any) -> Callable[[Mapping[str, Any]], tuple[np.ndarray, np.ndarray, str]]:
    # Read once a process (digits: 30-50 ms of parsing its CSV), for every job of an in-process
    # sweep and every job a sweep checks first; read-only, as `prepare` only indexes it.
    @functools.cache
    def load_once() -> tuple[np.ndarray, np.ndarray, str]:
        import sklearn  # imported when a dataset is read: a run of y = x^2 does not pay for it
        from sklearn import datasets

        bunch = getattr(datasets, loader)(**kwargs)
        source = f"sklearn.datasets.{loader} (scikit-learn {sklearn.__version__})"
        x, y = bunch.data.astype(np.float64), np.asarray(bunch.target)
        x.setflags(write=False)
        y.setflags(write=False)
        return x, y, source

    return lambda cfg: load_once()


def _synthetic(cfg: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
    """Least squares whose training Hessian, X^T X / rows, has the eigenvalues `spectrum(cfg)`:
    X = sqrt(rows) U diag(sqrt(eigenvalues)) V^T with U's columns and V orthonormal, drawn from
    `seed`; y = X w* + noise * e. The validation rows are drawn alike, from the same w*."""
    rows, features = cfg["rows"], cfg["features"]
    generator = np.random.default_rng(cfg["seed"])
    roots = np.sqrt(spectrum(cfg))
    w_star = generator.standard_normal(features)
    v = np.linalg.qr(generator.standard_normal((features, features)))[0]

    def part(count: int) -> tuple[np.ndarray, np.ndarray]:
        u = np.linalg.qr(generator.standard_normal((count, features)))[0]
        x = math.sqrt(count) * (u * roots) @ v.T
        return x, x @ w_star + cfg["noise"] * generator.standard_normal(count)

    validation = max(1, round(rows * cfg["validation"]))
    x_train, y_train = part(rows)
    x_val, y_val = part(validation)
    # Kept apart: the training part's spectrum is exact, so it is not split again (`prepare`).
    return np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]), "runner.problems.datasets.synthetic"


# name -> (task, how the raw rows are read)
LOADERS: dict[str, tuple[str, Callable]] = {
    "diabetes": (REGRESSION, _sklearn("load_diabetes", scaled=False)),
    "breast_cancer": (BINARY, _sklearn("load_breast_cancer")),
    "digits": (CLASSES, _sklearn("load_digits")),
    "synthetic": (REGRESSION, _synthetic),
}


def spectrum(cfg: Mapping[str, Any]) -> np.ndarray:
    """The synthetic problem's Hessian eigenvalues, largest first: from 1 down to 1 / condition,
    evenly spaced on a log scale.

    >>> spectrum({"features": 3, "condition": 100}).tolist()
    [1.0, 0.1, 0.01]
    """
    return np.geomspace(1.0, 1.0 / cfg["condition"], cfg["features"])


def check(cfg: Mapping[str, Any]) -> None:
    """A ConfigError naming the key and what is allowed, for a value no type can exclude."""
    if cfg["name"] not in LOADERS:
        raise ConfigError(f"data={cfg['name']} is not a dataset: allowed are {', '.join(LOADERS)}")
    if not 0 < cfg["validation"] < 1:
        raise ConfigError(f"data.validation={cfg['validation']} is not allowed: the validation part is a fraction "
                          "of the rows, > 0 and < 1")
    if cfg["name"] == "synthetic":
        if not cfg["features"] >= 1:
            raise ConfigError(f"data.features={cfg['features']} is not allowed: it must be an integer >= 1")
        if not cfg["rows"] >= cfg["features"]:
            raise ConfigError(f"data.rows={cfg['rows']} is not allowed: least squares with a set spectrum needs at "
                              f"least as many rows as features ({cfg['features']})")
        if not (math.isfinite(cfg["condition"]) and cfg["condition"] >= 1):
            raise ConfigError(f"data.condition={cfg['condition']} is not allowed: the condition number is a finite "
                              "number >= 1")
        if not (math.isfinite(cfg["noise"]) and cfg["noise"] >= 0):
            raise ConfigError(f"data.noise={cfg['noise']} is not allowed: it must be a finite number >= 0")


def prepare(cfg: Mapping[str, Any]) -> Dataset:
    """The dataset `cfg` names, read, split, standardised on its training part and given an
    intercept, as its keys say."""
    check(cfg)
    task, load = LOADERS[cfg["name"]]
    x, y, source = load(cfg)
    if cfg["name"] == "synthetic":  # made split: its training rows come first
        train = np.arange(cfg["rows"])
        val = np.arange(cfg["rows"], len(y))
    else:
        order = np.random.default_rng(cfg["split_seed"]).permutation(len(y))
        cut = len(y) - max(1, round(len(y) * cfg["validation"]))
        train, val = np.sort(order[:cut]), np.sort(order[cut:])
    x_train, x_val = x[train], x[val]
    y_train, y_val = y[train], y[val]
    if task == REGRESSION:
        y_train, y_val = y_train.astype(np.float64), y_val.astype(np.float64)
    else:
        y_train, y_val = y_train.astype(np.int64), y_val.astype(np.int64)
    if cfg["standardize"]:
        mean, scale = x_train.mean(axis=0), x_train.std(axis=0)
        scale[scale == 0] = 1.0  # a column constant over the training rows (digits' blank corners) stays 0
        x_train, x_val = (x_train - mean) / scale, (x_val - mean) / scale
        if task == REGRESSION:
            y_mean, y_scale = y_train.mean(), y_train.std() or 1.0
            y_train, y_val = (y_train - y_mean) / y_scale, (y_val - y_mean) / y_scale
    if cfg["intercept"]:
        x_train, x_val = (np.concatenate([part, np.ones((len(part), 1))], axis=1) for part in (x_train, x_val))
    arrays = [np.ascontiguousarray(a) for a in (x_train, y_train, x_val, y_val)]
    digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()[:16]
    classes = 0 if task == REGRESSION else int(max(y.max() + 1, 2))
    return Dataset(cfg["name"], task, *arrays, classes=classes, source=source, digest=digest,
                   intercept=bool(cfg["intercept"]))
