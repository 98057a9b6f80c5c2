"""The examples in docstrings are run, so they stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["runner.schema", "runner.errors", "runner.app", "runner.__main__", "runner.report",
           "runner.problems.expressions", "runner.problems.losses", "runner.problems.datasets",
           "runner.engines", "runner.engines.numpy",
           "runner.descent.loop", "runner.descent.optimizers", "runner.descent.outcomes", "runner.descent.theory",
           "runner.descent.sharpness", "runner.descent.schedules", "runner.descent.pruning",
           "runner.sweeps.cluster", "runner.sweeps.points", "runner.sweeps.search", "runner.sweeps.sweep",
           "runner.records.batch", "runner.records.provenance", "runner.records.tracking", "runner.records.progress"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring example left to run"
    assert result.failed == 0
