"""Pruning inside a batch: an engine carries on from where it stood with a subset of its points,
and those points take the same steps as in the whole batch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend_params
from test_batches import batch, composed

from runner.problem import from_config

CASES = {  # each kind of per-point value a subset takes: hyperparameters, loss constants, schedule
    # parameters, seeds (a model's mini-batch order), and a rule's state
    "adam": (["loss=quadratic", "optimizer=adam", "x_start=-2"], ["lr=0.01,0.1,0.5", "loss.params.a=0.5,2"]),
    "schedule": (["loss=ill_conditioned", "optimizer=momentum", "schedule=wsd", "schedule.warmup=3",
                  "schedule.decay=5"], ["lr=0.1,0.5", "schedule.floor=0,0.5", "optimizer.momentum=0.5,0.9"]),
    "model": (["model=logistic", "data=breast_cancer", "batch_size=128", "optimizer=momentum"],
              ["lr=0.01,0.1", "seed=0,1,2"]),
}


@pytest.mark.parametrize("backend", backend_params(parity=True))
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

    stepper = engine.start(problem)
    np.testing.assert_array_equal(stepper.sharpness(5), before)
    head = stepper(5)
    np.testing.assert_array_equal(head.x, rows.x[:5])
    state = stepper.state()
    assert state.epoch == 5 and state.x.shape == problem.x_start.shape
    for kept in (np.array([0, 2, problem.points - 1]), np.array([1])):  # one point: NumPy steps a scalar
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

GRID = (["loss=ill_conditioned", "optimizer=momentum", "epochs=60", "dtype=float64"],
        ["lr=range(0.2,4.2,0.2)", "optimizer.momentum=0,0.5,0.8,0.9"])  # 80 points, the largest lr diverge
RUNGS, KEEP = (5, 15, 40), 0.3


def by_hand(full, metric: np.ndarray, higher_is_better: bool = False):
    """Successive halving done by hand on the whole batch's rows: at each rung, the running points
    (those that have not diverged) ranked by `metric` (rows, points) and the best KEEP kept; each
    point's rung of pruning (-1: none), and the rungs' (epoch, running, kept)."""
    pruned_at = np.full(metric.shape[1], -1)
    running = np.arange(metric.shape[1])
    rungs = []
    for rung in RUNGS:
        running = np.array([p for p in running if full.summary.diverged_at[p] < 0 or full.summary.diverged_at[p] > rung])
        score = -metric[rung, running] if higher_is_better else metric[rung, running]
        kept = np.sort(running[np.argsort(score, kind="stable")[:int(np.ceil(KEEP * len(running)))]])
        pruned_at[np.setdiff1d(running, kept)] = rung
        rungs.append((rung, len(running), len(kept)))
        running = kept
    return pruned_at, rungs, running


@pytest.mark.parametrize("backend", backend_params(parity=True))
def test_a_pruned_batch_keeps_at_each_rung_the_best_and_steps_them_alone(backend):
    overrides, sweeps = GRID
    full, grid, _ = batch(f"backend={backend}", *overrides, sweeps=sweeps)
    pruned, _, _ = batch(f"backend={backend}", *overrides, f"batch.prune.rungs=[{','.join(map(str, RUNGS))}]",
                         f"batch.prune.keep={KEEP}", "batch.prune.metric=loss", sweeps=sweeps)
    pruned_at, rungs, survivors = by_hand(full, full.loss)
    assert (full.summary.outcome == "diverged").sum() >= 5 and len(survivors) >= 2
    assert [(r.epoch, r.running, r.kept) for r in pruned.rungs] == rungs
    np.testing.assert_array_equal(pruned.summary.pruned_at, pruned_at)
    np.testing.assert_array_equal(pruned.summary.outcome == "pruned", pruned_at >= 0)
    np.testing.assert_array_equal(pruned.summary.epochs_run[pruned_at >= 0], pruned_at[pruned_at >= 0])
    for point in range(grid.count):  # every point's rows as in the whole batch, up to where it stopped
        ours, theirs = pruned.trajectory(point), full.trajectory(point)
        assert len(ours.x) == (pruned_at[point] + 1 if pruned_at[point] >= 0 else len(theirs.x))
        difference = np.max(np.abs(ours.x - theirs.x[:len(ours.x)]) / np.maximum(1.0, np.abs(ours.x)))
        assert difference <= (0 if backend == "numpy" else 1e-12), point
    # the work: every point up to the first rung, then the kept ones alone
    stepped = [grid.count] + [kept for _, _, kept in rungs]
    assert pruned.computed == sum(n * (end - start) for n, start, end in zip(stepped, (0, *(r + 1 for r in RUNGS)),
                                                                            (*(r + 1 for r in RUNGS), 61)))
    assert pruned.computed < full.computed / 3


def test_a_batch_of_models_pruned_by_validation_accuracy_keeps_the_most_accurate():
    common = ["model=logistic", "data=breast_cancer", "epochs=60", "batch_size=64"]
    sweeps = ["lr=0.001,0.003,0.01,0.03,0.1,0.3", "seed=0,1,2"]
    full, grid, problem = batch(*common, sweeps=sweeps)
    pruned, _, _ = batch(*common, f"batch.prune.rungs=[{','.join(map(str, RUNGS))}]", f"batch.prune.keep={KEEP}",
                         "batch.prune.metric=val_accuracy", sweeps=sweeps)
    accuracy = full.measured[..., full.measure_names.index("val_accuracy")]
    pruned_at, rungs, survivors = by_hand(full, accuracy, higher_is_better=True)
    assert [(r.epoch, r.running, r.kept) for r in pruned.rungs] == rungs
    np.testing.assert_array_equal(pruned.summary.pruned_at, pruned_at)
    np.testing.assert_array_equal(pruned.summary.measured["final_val_accuracy"][survivors],
                                  full.summary.measured["final_val_accuracy"][survivors])


def test_a_pruned_sweep_records_its_rungs_and_the_report_shows_them(here):
    import runner
    from runner import reproduce

    sweep = runner.sweep("loss=ill_conditioned", "optimizer=momentum", "epochs=60", "lr=range(0.2,4.2,0.2)",
                         "optimizer.momentum=0,0.5,0.8,0.9", "hydra.sweeper.prune.rungs=[5,15,40]",
                         "hydra.sweeper.prune.keep=0.3", batch=True)
    (run,) = sweep.runs()
    assert run.summary["points"] == 80 and run.summary["pruned"] == 80 - 3 - run.summary["diverged"]
    assert 0 < run.summary["computed_fraction"] < 1 / 3
    assert run.summary["converged"] + run.summary["not_converged"] == 3
    best = run.points[run.points["outcome"] != "pruned"]["final_loss"].min()
    assert run.summary["best_final_loss"] == best
    assert {"rungs.csv", "pruning.png", "points.csv"} <= set(run.artifacts)
    rungs = run.artifact_file("rungs.csv").read_text().splitlines()
    assert rungs[0] == "epoch,running,kept,best,bar" and [line.split(",")[0] for line in rungs[1:]] == ["5", "15", "40"]
    (row,) = sweep.table.to_dict("records")
    assert row["rungs"].startswith("5: ") and row["rungs"].endswith("->3") and row["pruned"] == run.summary["pruned"]
    assert (run.points["pruned_at"].fillna(-1) >= 0).sum() == run.summary["pruned"]
    assert "batch.prune" not in run.points["overrides"][0]  # a point alone runs every epoch
    assert reproduce.main([run.run_id]) == 0  # the same rungs prune the same points


BAD_PRUNES = [
    (["hydra.sweeper.prune.metric=val_accuracy"], "hydra.sweeper.prune.metric=val_accuracy is not a metric this run "
                                                  "records each epoch: allowed are loss"),
    (["hydra.sweeper.prune.rungs=[10,100]"], "hydra.sweeper.prune.rungs=[10, 100] is not allowed: increasing epochs "
                                             "from 1 to 99 (epochs=100)"),
    (["hydra.sweeper.prune.rungs=[30,10]"], "hydra.sweeper.prune.rungs=[30, 10] is not allowed: increasing epochs"),
    (["hydra.sweeper.prune.keep=1"], "hydra.sweeper.prune.keep=1.0 is not allowed: a fraction in (0, 1)"),
    (["hydra.sweeper.prune.keep=0"], "hydra.sweeper.prune.keep=0.0 is not allowed: a fraction in (0, 1)"),
    (["hydra.sweeper.batch=false"], "hydra.sweeper.prune.rungs=[10, 30] prunes the points of a batch: add "
                                    "hydra.sweeper.batch=true"),
]


@pytest.mark.parametrize("args, message", BAD_PRUNES, ids=[" ".join(a) for a, _ in BAD_PRUNES])
def test_a_bad_prune_is_one_line_and_records_nothing(here, store_uri, args, message):
    import runner
    from conftest import snapshot

    before = snapshot(store_uri)
    with pytest.raises(runner.ConfigError) as refused:
        runner.sweep("lr=0.1,0.2,0.3", "epochs=100", "hydra.sweeper.batch=true", "hydra.sweeper.prune.rungs=[10,30]", *args)
    assert message in str(refused.value) and len(str(refused.value).strip().splitlines()) == 1, refused.value
    assert snapshot(store_uri) == before


def test_over_seeds_a_setting_with_a_pruned_seed_has_no_spread():
    from runner.records import seeds
    from runner.sweeps.points import parse

    grid = parse(["lr=0.1,0.2", "seed=0,1"])
    table = {"final_loss": np.array([1.0, 2.0, 3.0, 5.0]), "outcome": np.array(["converged", "pruned", "converged",
                                                                               "converged"]),
             "pruned_at": np.array([-1, 10, -1, -1])}
    rows = seeds.aggregate(grid, table, ["final_loss"])
    assert rows["pruned"].tolist() == [1, 0] and np.isnan(rows["final_loss.mean"][0])
    assert rows["final_loss.mean"][1] == 4.0 and seeds.best(rows, "final_loss") == 1


def test_a_pruned_batch_of_models_over_seeds_records_every_figure_and_table(here):
    """Pruned by validation accuracy: every setting loses a seed, so none has a spread, and the
    batch still records its tables and figures, the report its rungs beside the seeds."""
    import runner

    sweep = runner.sweep("model=logistic", "data=digits", "batch_size=64", "epochs=27", "lr=0.01,0.03,0.1,0.3,1",
                         "seed=0,1,2", "hydra.sweeper.prune.rungs=[3,9]", "hydra.sweeper.prune.metric=val_accuracy",
                         batch=True)
    (run,) = sweep.runs()
    assert run.status == "FINISHED" and run.summary["pruned"] == 13
    assert {"rungs.csv", "seeds.csv", "points.csv"} <= set(run.artifacts)
    (row,) = sweep.table.to_dict("records")
    assert row["rungs"] == "3: 15->5, 9: 5->2" and "no setting has a finite mean" in row["over_seeds"]


def test_a_pruned_batch_measures_the_sharpness_and_its_schedule_at_the_whole_batchs_epochs():
    """Rungs that fall between two measurements of the sharpness: each is still measured every K
    epochs, and each row's learning rate is the schedule's, for the points still running."""
    overrides = ["loss=ill_conditioned", "optimizer=momentum", "epochs=40", "dtype=float64", "sharpness_every=7",
                 "schedule=cosine"]
    sweeps = ["lr=range(0.2,2.2,0.2)", "optimizer.momentum=0,0.5,0.9"]
    full, grid, _ = batch(*overrides, sweeps=sweeps)
    pruned, _, _ = batch(*overrides, "batch.prune.rungs=[5,18]", "batch.prune.keep=0.5", "batch.prune.metric=loss",
                         sweeps=sweeps)
    assert [r.epoch for r in pruned.rungs] == [5, 18]
    names = full.measure_names
    for point in range(grid.count):
        ours, theirs = pruned.trajectory(point), full.trajectory(point)
        rows = len(ours.x)
        for name in ("lr", "sharpness"):
            np.testing.assert_array_equal(ours.measured[name], theirs.measured[name][:rows], err_msg=name)
        assert np.isfinite(ours.measured["sharpness"][::7]).all() and names == pruned.measure_names
