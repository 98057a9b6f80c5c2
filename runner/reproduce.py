"""Re-run a logged run from the config stored with it, and check that everything comes out the same.

    python -m runner.reproduce RUN_ID [--tracking-uri URI]

The config is the run's own `hydra/config.yaml` artifact, checked against today's schema. For
a run, every metric series is compared value for value (bit for bit as float64; NaN equals NaN),
and so are its summary (`runner.outcomes.QUANTITIES`) and outcome. For a batch run, every
point's row of `points.csv` (its summary, final x and outcome, written in full precision) and
every kept trajectory of `trajectories.npz`. Exit 0 when everything matches, 1 when something
differs, 2 when the run cannot be re-run. Where the code or a framework version differs from
the run's, it says so: that is the usual reason for a mismatch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    args = parser.parse_args(argv)

    from runner import provenance, schema, tracking
    from runner.descent import descend
    from runner.errors import ConfigError
    from runner.problem import build

    schema.register()
    uri = tracking.tracking_uri(args.tracking_uri, Path.cwd())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            store = tracking.open_run(uri, args.run_id)
            path = store.download(args.run_id, "hydra/config.yaml", Path(tmp))
            if path is None:
                raise ConfigError(f"run {args.run_id} has no hydra/config.yaml artifact to re-run")
            cfg = OmegaConf.merge(OmegaConf.structured(schema.RunnerConfig), OmegaConf.load(path))
            problem, engine, grid = build(cfg)
        except Exception as error:  # one line, whatever went wrong: this is a command for people
            print(f"cannot re-run {args.run_id}: {error}", file=sys.stderr)
            return 2

        record = store.record(args.run_id)
        print(f"re-running {record.name} ({args.run_id}) from its stored config")
        now = {**provenance.code_tags(), "framework_version": engine.VERSION,
               **provenance.version_tags(*provenance.LIBRARIES)}
        for key, value in now.items():
            if key in record.tags and record.tags[key] != value:
                print(f"  note: {key} was {record.tags[key]}, is {value} now")

        result = descend(problem, engine)
        if grid is None:
            all_match = _compare_run(store, record, cfg, result)
        else:
            all_match = _compare_batch(store, record, grid, result, Path(tmp))
    print("every metric matches" if all_match else "MISMATCH: the re-run differs from the logged run")
    return 0 if all_match else 1


def _compare_run(store, record, cfg, result) -> bool:
    """Every logged series, the summary and the outcome of a run against the re-run's."""
    from runner import tracking
    from runner.outcomes import QUANTITIES

    trajectory, summary = result.trajectory(0), result.summary.values(0)
    steps = tracking.logged_steps(len(trajectory.x), cfg.mlflow.max_logged_steps)
    all_match = True
    for name, series in trajectory.columns().items():
        fresh = series[steps].astype(np.float64)
        stored = store.metric_series(record.run_id, name)
        same = stored.shape == fresh.shape and np.array_equal(stored, fresh, equal_nan=True)
        all_match &= same
        print(f"  {name}: {len(fresh)} logged steps, {'identical' if same else _first_difference(stored, fresh)}")
    for name in QUANTITIES:
        stored, value = record.metrics.get(name), summary.get(name)
        if stored is None and value is None:
            continue
        same = stored is not None and value is not None and np.array_equal(
            np.float64(stored), np.float64(value), equal_nan=True)
        all_match &= bool(same)
        print(f"  {name}: {'identical' if same else f'was {stored}, is {value} now'}")
    if record.tags.get("outcome") != result.summary.outcome[0]:
        all_match = False
        print(f"  outcome: was {record.tags.get('outcome')}, is {result.summary.outcome[0]} now")
    return all_match


def _compare_batch(store, record, grid, result, tmp: Path) -> bool:
    """Every point's summary in points.csv, and every kept trajectory, against the re-run's."""
    from runner import batch

    stored_path = store.download(record.run_id, "points.csv", tmp / "stored")
    if stored_path is None:
        print("  points.csv: not in the run")
        return False
    stored = batch.read_points(stored_path)
    fresh = batch.point_table(grid, result, None, [])  # the spectral radius is theory, not measured
    compared = [c for c in batch.SUMMARY_COLUMNS if c in stored and c in fresh]
    differing = []
    for name in compared:
        now = batch.text_column(name, fresh[name])
        if len(now) != len(stored[name]):
            print(f"  points.csv: {len(stored[name])} points logged, {len(now)} now")
            return False
        differing += [(i, name, stored[name][i], now[i]) for i in range(len(now)) if stored[name][i] != now[i]]
    points = sorted({i for i, *_ in differing})
    if points:
        i, name, was, now = min(differing)
        print(f"  points: {grid.count - len(points)} of {grid.count} identical; first differing: point #{i} "
              f"({' '.join(grid.overrides(i))}): {name} was {was or 'blank'}, is {now or 'blank'} now")
    else:
        print(f"  points: {grid.count} of {grid.count} identical ({', '.join(compared)})")

    npz = store.download(record.run_id, "trajectories.npz", tmp / "stored")
    same_rows = npz is not None
    if npz is not None:
        logged = np.load(npz)
        for name in ("points", "x", "loss", "grad", "norms"):
            mine = result.kept if name == "points" else getattr(result, name)
            if name not in logged and mine is None:
                continue
            same = name in logged and mine is not None and logged[name].shape == mine.shape and np.array_equal(
                logged[name], mine, equal_nan=True)
            same_rows &= same
            if not same:
                print(f"  trajectories.npz: {name} DIFFERS")
        if same_rows:
            print(f"  trajectories.npz: x, loss and grad of {len(result.kept)} kept points identical")
    else:
        print("  trajectories.npz: not in the run")
    return not points and same_rows


def _first_difference(stored: np.ndarray, fresh: np.ndarray) -> str:
    if stored.shape != fresh.shape:
        return f"DIFFERS: {len(stored)} steps logged, {len(fresh)} now"
    step = int(np.flatnonzero(~((stored == fresh) | (np.isnan(stored) & np.isnan(fresh))))[0])
    return f"DIFFERS from step {step}: logged {stored[step]!r}, now {fresh[step]!r}"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
