"""Pruning inside a batch: an engine carries on from where it stood with a subset of its points,
and those points take the same steps as in the whole batch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend_params
from test_batches import composed

from runner.problem import from_config

CASES = {  # each kind of per-point value a subset takes: hyperparameters, loss constants, schedule
    # parameters, seeds (a model's mini-batch order), and a rule's state
    "adam": (["loss=quadratic", "optimizer=adam", "x_start=-2"], ["lr=0.01,0.1,0.5", "loss.params.a=0.5,2"]),
    "schedule": (["loss=ill_conditioned", "optimizer=momentum", "schedule=wsd", "schedule.warmup=3",
                  "schedule.decay=5"], ["lr=0.1,0.5", "schedule.floor=0,0.5", "optimizer.momentum=0.5,0.9"]),
    "model": (["model=logistic", "data=breast_cancer", "batch_size=128", "optimizer=momentum"],
              ["lr=0.01,0.1", "seed=0,1,2"]),
}


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_kept_points_carry_on_as_in_the_whole_batch(backend, case):
    overrides, sweeps = CASES[case]
    cfg = composed(f"backend={backend}", "dtype=float64", "epochs=12", *overrides,
                   "batch.sweep=[" + ",".join(f'"{s}"' for s in sweeps) + "]")
    problem, _, engine, _ = from_config(cfg)
    whole = engine.start(problem)
    before = whole.sharpness(5)
    rows = whole(13)
    after = whole.sharpness(5)

    for kept in (np.array([0, 2, problem.points - 1]), np.array([1])):  # one point: NumPy steps a scalar
        stepper = engine.start(problem)
        np.testing.assert_array_equal(stepper.sharpness(5), before)
        head = stepper(5)
        np.testing.assert_array_equal(head.x, rows.x[:5])
        state = stepper.state()
        assert state.epoch == 5 and state.x.shape == problem.x_start.shape
        resumed = engine.start(problem.subset(kept), resume=state.subset(kept))
        tail = resumed(8)
        for name in ("x", "loss", "grad"):
            ours, theirs = getattr(tail, name), getattr(rows, name)[5:, kept]
            assert ours.shape == theirs.shape
            scale = np.maximum(1.0, np.abs(theirs))
            assert np.max(np.abs(ours - theirs) / scale) <= (0 if backend == "numpy" else 1e-12), name
        if rows.measured is not None:
            np.testing.assert_allclose(tail.measured, rows.measured[5:, kept], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(resumed.sharpness(5), after[kept], rtol=1e-9)
