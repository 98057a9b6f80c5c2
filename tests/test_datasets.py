"""Datasets as conf/data/ sets them: read from scikit-learn's wheel or made to order, split by
their seed, standardised on the training rows alone, an intercept added; bad values refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO
from omegaconf import OmegaConf

from runner.errors import ConfigError
from runner.problems import datasets

SHAPES = {  # rows, features before the intercept, task, classes
    "diabetes": (442, 10, datasets.REGRESSION, 0),
    "breast_cancer": (569, 30, datasets.BINARY, 2),
    "digits": (1797, 64, datasets.CLASSES, 10),
}


def config(name, **changes):
    cfg = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
    return OmegaConf.merge(cfg, changes)


def test_every_dataset_has_its_config():
    assert sorted(p.stem for p in (REPO / "conf" / "data").glob("*.yaml")) == sorted(datasets.LOADERS)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_a_packaged_dataset_is_split_standardised_on_its_training_rows_and_given_an_intercept(name):
    rows, features, task, classes = SHAPES[name]
    data = datasets.prepare(config(name))
    assert (data.task, data.classes) == (task, classes)
    assert len(data.y_train) + len(data.y_val) == rows and len(data.y_val) == round(0.2 * rows)
    assert data.x_train.shape == (len(data.y_train), features + 1) and data.x_val.shape[1] == features + 1
    assert (data.x_train[:, -1] == 1).all() and (data.x_val[:, -1] == 1).all()
    columns = data.x_train[:, :-1]
    varying = columns.std(axis=0) > 0  # digits' blank corner pixels stay 0
    np.testing.assert_allclose(columns.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(columns.std(axis=0)[varying], 1, rtol=1e-12)
    assert varying.sum() >= features - 3
    # The validation rows are scaled by the training rows' statistics, not their own.
    assert np.abs(data.x_val[:, :-1].mean(axis=0)).max() > 1e-3
    if task == datasets.REGRESSION:
        assert data.y_train.dtype == np.float64 and abs(data.y_train.mean()) < 1e-12
    else:
        assert data.y_train.dtype == np.int64 and set(np.unique(data.y_train)) == set(range(classes))


def test_the_split_is_drawn_from_its_seed():
    first, again, other = (datasets.prepare(config("diabetes", split_seed=s)) for s in (0, 0, 1))
    assert first.digest == again.digest and np.array_equal(first.x_train, again.x_train)
    assert first.digest != other.digest
    raw = datasets.prepare(config("diabetes", standardize=False, intercept=False))
    assert raw.x_train.shape[1] == 10 and raw.y_train.mean() > 100  # the target as scikit-learn gives it


def test_a_synthetic_problem_has_the_spectrum_it_was_given():
    data = datasets.prepare(config("synthetic", rows=300, features=12, condition=1000.0, noise=0.0))
    hessian = data.x_train.T @ data.x_train / len(data.x_train)
    eigenvalues = np.sort(np.linalg.eigvalsh(hessian))[::-1]
    np.testing.assert_allclose(eigenvalues, np.geomspace(1, 1e-3, 12), rtol=1e-10)
    # Without noise, both parts are exactly linear in the same weights.
    w = np.linalg.lstsq(data.x_train, data.y_train, rcond=None)[0]
    np.testing.assert_allclose(data.x_val @ w, data.y_val, atol=1e-9)
    assert len(data.y_val) == 60 and data.source == "runner.problems.datasets.synthetic"
    noisy = datasets.prepare(config("synthetic", rows=300, features=12, condition=1000.0, noise=0.5))
    assert np.array_equal(noisy.x_train, data.x_train) and not np.array_equal(noisy.y_train, data.y_train)


@pytest.mark.parametrize("name, changes, message", [
    ("mnist", {}, "data=mnist is not a dataset: allowed are diabetes, breast_cancer, digits, synthetic"),
    ("digits", {"validation": 1.0}, "data.validation=1.0 is not allowed: the validation part is a fraction"),
    ("synthetic", {"condition": 0.5}, "data.condition=0.5 is not allowed: the condition number is a finite number >= 1"),
    ("synthetic", {"rows": 5}, "data.rows=5 is not allowed: least squares with a set spectrum needs at least as many"),
    ("synthetic", {"noise": -1.0}, "data.noise=-1.0 is not allowed"),
])
def test_a_bad_value_is_one_line_naming_the_key(name, changes, message):
    cfg = config("digits" if name == "mnist" else name, **changes)
    if name == "mnist":
        cfg.name = "mnist"
    with pytest.raises(ConfigError) as error:
        datasets.prepare(cfg)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
