"""The examples in docstrings are run, so they stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["runner.schema", "runner.errors", "runner.expressions", "runner.losses", "runner.engines", "runner.engines.numpy",
           "runner.optimizers", "runner.outcomes", "runner.descent", "runner.theory", "runner.points", "runner.batch",
           "runner.provenance",
           "runner.app", "runner.__main__", "runner.tracking", "runner.search", "runner.report", "runner.sweeps", "runner.progress"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring example left to run"
    assert result.failed == 0
