"""Re-run a logged run from the config stored with it, and check that every metric comes out the same.

    python -m runner.reproduce RUN_ID [--tracking-uri URI]

The config is the run's own `hydra/config.yaml` artifact, checked against today's schema. Every
metric series is compared value for value (bit for bit as float64; NaN equals NaN), and so are
the summary metrics other than the wall time. Exit 0 when everything matches, 1 when something
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

SUMMARY = ("final_loss", "final_grad_norm", "epochs_run", "steps_to_tolerance")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    args = parser.parse_args(argv)

    from runner import provenance, schema, tracking
    from runner.app import build_problem
    from runner.outcomes import classify

    schema.register()
    uri = tracking.tracking_uri(args.tracking_uri, Path.cwd())
    try:
        store = tracking.open_run(uri, args.run_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = store.download(args.run_id, "hydra/config.yaml", Path(tmp))
            if path is None:
                raise schema.ConfigError(f"run {args.run_id} has no hydra/config.yaml artifact to re-run")
            cfg = OmegaConf.merge(OmegaConf.structured(schema.RunnerConfig), OmegaConf.load(path))
        problem, engine = build_problem(cfg)
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

    trajectory = engine.descend(problem)
    outcome = classify(trajectory, cfg.stop.tolerance, cfg.stop.diverge_above)
    steps = tracking.logged_steps(len(trajectory.x), cfg.mlflow.max_logged_steps)
    fresh = {name: series[steps].astype(np.float64) for name, series in trajectory.columns().items()}
    summary = {"final_loss": trajectory.loss[-1], "final_grad_norm": trajectory.grad_norm[-1],
               "epochs_run": len(trajectory.x) - 1, "steps_to_tolerance": outcome.steps_to_tolerance}

    all_match = True
    for name, series in fresh.items():
        stored = store.metric_series(args.run_id, name)
        same = stored.shape == series.shape and np.array_equal(stored, series, equal_nan=True)
        all_match &= same
        print(f"  {name}: {len(series)} logged steps, {'identical' if same else _first_difference(stored, series)}")
    for name in SUMMARY:
        stored, value = record.metrics.get(name), summary[name]
        same = (stored is None and value is None) or (
            stored is not None and value is not None and np.array_equal(np.float64(stored), np.float64(value), equal_nan=True))
        all_match &= bool(same)
        print(f"  {name}: {'identical' if same else f'was {stored}, is {value} now'}")
    if record.tags.get("outcome") != outcome.label:
        all_match = False
        print(f"  outcome: was {record.tags.get('outcome')}, is {outcome.label} now")
    print("every metric matches" if all_match else "MISMATCH: the re-run differs from the logged run")
    return 0 if all_match else 1


def _first_difference(stored: np.ndarray, fresh: np.ndarray) -> str:
    if stored.shape != fresh.shape:
        return f"DIFFERS: {len(stored)} steps logged, {len(fresh)} now"
    step = int(np.flatnonzero(~((stored == fresh) | (np.isnan(stored) & np.isnan(fresh))))[0])
    return f"DIFFERS from step {step}: logged {stored[step]!r}, now {fresh[step]!r}"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
