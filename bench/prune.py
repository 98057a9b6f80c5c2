"""Successive halving inside a batch against the whole grid: the best setting each finds, and what
each costs.

    python bench/prune.py                        # the three problems, NumPy
    python bench/prune.py --backend torch --repeats 3
    python bench/prune.py --early                # three rungs, at a 27th, a 9th and a third

For each problem a grid of settings runs as one batch twice, as `hydra.sweeper.batch=true` runs
it: whole, then pruned (`hydra.sweeper.prune`: rungs at a 9th and a third of the epochs, keeping
a third of the running points at each: a third of the grid's work at most). Printed: the best final loss of the whole grid
and the setting, the pruned batch's best (of the points that ran to the end) and its setting,
their ratio; the gradient evaluations (rows computed, summed over points: `Descent.computed`;
a mini-batch epoch is the same number of evaluations a row either way) and the wall time of
the pruned batch against the whole grid's. Times are the fastest of a few repeats, after a
warm-up, measured in one run: read the ratios (the machine is shared).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from models import fastest  # noqa: E402  (bench/models.py: the fastest of a few repeats each, taking turns)
from runner import problem, schema  # noqa: E402
from runner.descent.loop import descend  # noqa: E402
from runner.descent.outcomes import PRUNED  # noqa: E402

# name: (fixed overrides, batched sweeps, epochs)
PROBLEMS = {
    "ill_conditioned": (["loss=ill_conditioned", "optimizer=momentum", "x_start=1", "dtype=float64"],
                        ["lr=range(0.02,4.02,0.02)", "optimizer.momentum=range(0,1,0.01)"], 270),
    "rosenbrock": (["loss=rosenbrock", "optimizer=momentum", "x_start=[-1.5,2]", "dtype=float64"],
                   ["lr=range(0.00004,0.00404,0.00004)", "optimizer.momentum=range(0,1,0.01)"], 900),
    "logistic digits": (["model=logistic", "data=digits", "optimizer=momentum", "batch_size=64"],
                        ["lr=range(0.025,3.025,0.025)", "optimizer.momentum=0,0.5,0.8,0.9"], 81),
}


def batch(backend: str, fixed: list[str], sweeps: list[str], epochs: int, rungs: list[int], keep: float):
    """The problem, loop and engine of the batch job the sweeper composes (pruned where `rungs`)."""
    prune = [f"batch.prune.rungs=[{','.join(map(str, rungs))}]", f"batch.prune.keep={keep}",
             "batch.prune.metric=loss"] if rungs else []
    with initialize_config_dir(config_dir=str(schema.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"backend={backend}", f"epochs={epochs}", *fixed, *prune,
            "batch.sweep=[" + ",".join(f'"{s}"' for s in sweeps) + "]"])
    return problem.from_config(cfg)


def best(result, grid) -> tuple[float, str]:
    """The lowest final loss of the points that ran to the end, and its setting."""
    loss = np.where(result.summary.outcome == PRUNED, np.nan, result.summary.final_loss.astype(np.float64))
    loss = np.where(np.isfinite(loss), loss, np.nan)
    point = int(np.nanargmin(loss))
    return float(loss[point]), " ".join(grid.overrides(point))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=float, default=1 / 3)
    parser.add_argument("--only", choices=sorted(PROBLEMS), help="one problem")
    parser.add_argument("--early", action="store_true", help="rungs at E/27, E/9 and E/3 (about an eighth of the work)")
    args = parser.parse_args()
    schema.register()
    fractions = (27, 9, 3) if args.early else (9, 3)
    print(f"backend={args.backend}; rungs at {', '.join(f'E/{f}' for f in fractions)}, keep {args.keep:.3g}; "
          f"wall time the fastest of {args.repeats}")
    for name, (fixed, sweeps, epochs) in PROBLEMS.items():
        if args.only and name != args.only:
            continue
        rungs = [epochs // f for f in fractions]
        descents, runs = {}, {}
        for label, at in (("whole", []), ("pruned", rungs)):
            prob, loop, engine, grid = batch(args.backend, fixed, sweeps, epochs, at, args.keep)

            def run(label=label, prob=prob, engine=engine, loop=loop) -> None:
                descents[label] = descend(prob, engine, loop)

            runs[label] = run
        seconds = fastest(runs, args.repeats)
        (whole, whole_s), (pruned, pruned_s) = (descents["whole"], seconds["whole"]), (descents["pruned"], seconds["pruned"])
        whole_best, whole_at = best(whole, grid)
        pruned_best, pruned_at = best(pruned, grid)
        print(f"\n{name}: {grid.count} points ({grid.name()}), {epochs} epochs, rungs {rungs}")
        print(f"  whole grid : best final loss {whole_best:.6g} at {whole_at}")
        print(f"  pruned     : best final loss {pruned_best:.6g} at {pruned_at} "
              f"({pruned_best / whole_best if whole_best else float('nan'):.4f} x the grid's best)")
        print(f"  gradient evaluations: {pruned.computed:,} of {whole.computed:,} = {pruned.computed / whole.computed:.3f}")
        print(f"  wall time: {pruned_s:.3f} s of {whole_s:.3f} s = {pruned_s / whole_s:.3f}")


if __name__ == "__main__":
    main()
