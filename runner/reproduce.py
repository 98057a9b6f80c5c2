"""Re-run logged runs from the configs stored with them, and check that everything comes out the same.

    python -m runner.reproduce RUN_ID [--launcher basic|joblib|submitit_local|submitit_slurm] [--tracking-uri URI]

RUN_ID is a run, a batch run, or a sweep's parent run (a grid, a search or a batched sweep),
whose every child is re-run: a run that did not finish (a job that failed, or was lost with its
process or to its cluster) is re-run too, and said how it ends now. The config is each run's own `hydra/config.yaml` artifact, checked
against today's schema. For a run, every metric series is compared value for value (bit for
bit as float64; NaN equals NaN), and so are its summary (`runner.descent.outcomes.QUANTITIES`) and
outcome. For a batch run, every point's row of `points.csv` (its summary, final x and outcome,
written in full precision) and every kept trajectory of `trajectories.npz`. A sweep's runs are
re-run through `--launcher`, by default the one the sweep ran on (read from its runs' stored
Hydra config): `basic` one after another here, `joblib` in parallel processes, `submitit_local`
as submitit processes, `submitit_slurm` as SLURM jobs (the sweep's partition and time limit), so
that a SLURM sweep can be checked on a laptop and the other way round.

Exit 0 when everything matches, 1 when something differs (naming the run and where), 2 when
a run cannot be re-run. Where the code or a framework version differs from the run's, it says
so: that is the usual reason for a mismatch.
"""

from __future__ import annotations

if __name__ == "__main__":  # a process of its own: its collector set before the imports below
    from runner import process

    process.own()

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import OmegaConf

from runner import schema
from runner.descent.loop import descend
from runner.descent.outcomes import QUANTITIES
from runner.errors import FINISHED, ConfigError
from runner.problem import from_config
from runner.records import batch, provenance, tables
from runner.sweeps import cluster

LAUNCHERS = ("basic", "joblib", "submitit_local", "submitit_slurm")
# Hydra's launcher classes, as a sweep's runs record them (hydra.launcher._target_)
LAUNCHER_OF = {"BasicLauncher": "basic", "JoblibLauncher": "joblib", "LocalLauncher": "submitit_local",
               "SlurmLauncher": "submitit_slurm"}
IDENTICAL, DIFFERS, CANNOT = 0, 1, 2
RERUN = -1  # a run that had not finished, re-run: nothing to compare, it says how it ends now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("run_id", help="a run, a batch run, or a sweep's parent run")
    parser.add_argument("--launcher", choices=LAUNCHERS, help="for a sweep: where its runs are re-run "
                        "(default: the launcher the sweep ran on)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    args = parser.parse_args(argv)

    from runner.records import tracking

    uri = tracking.tracking_uri(args.tracking_uri, Path.cwd())
    try:
        store = tracking.open_run(uri, args.run_id)
        record = store.record(args.run_id)
    except Exception as error:  # one line, whatever went wrong: this is a command for people
        print(f"cannot re-run {args.run_id}: {error}", file=sys.stderr)
        return CANNOT
    if record.tags.get("kind") == "sweep":
        return _sweep(uri, store, record, args.launcher)
    status, lines = check(uri, args.run_id)
    print("\n".join(lines), file=sys.stderr if status == CANNOT else sys.stdout)
    return IDENTICAL if status == RERUN else status


def check(uri: str, run_id: str) -> tuple[int, list[str]]:
    """Re-run one logged run (or batch) and compare: IDENTICAL, DIFFERS or CANNOT, and what to
    print. A plain function of plain values, so that any launcher's worker can run it."""
    from runner.records import tracking  # MLflow: imported where a run is read, as everywhere outside tracking

    schema.register()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            store = tracking.open_run(uri, run_id)
            path = store.download(run_id, "hydra/config.yaml", Path(tmp))
            if path is None:
                raise ConfigError(f"run {run_id} has no hydra/config.yaml artifact to re-run")
            cfg = OmegaConf.merge(schema.defaults(), OmegaConf.load(path))
            problem, loop, engine, grid = from_config(cfg)
        except Exception as error:  # one line, whatever went wrong
            return CANNOT, [f"cannot re-run {run_id}: {error}"]

        record = store.record(run_id)
        lines = [f"re-running {record.name} ({run_id}) from its stored config"]
        now = {**provenance.code_tags(), "framework_version": engine.VERSION,
               **provenance.version_tags(*provenance.LIBRARIES)}
        lines += [f"  note: {key} was {record.tags[key]}, is {value} now"
                  for key, value in now.items() if key in record.tags and record.tags[key] != value]
        result = descend(problem, engine, loop)
        if record.status != FINISHED:
            summary = result.summary
            now = (f"{summary.outcome[0]}, final loss {summary.final_loss[0]:.6g}" if grid is None else
                   f"best final loss {np.nanmin(summary.final_loss):.6g} over {grid.count} points")
            lines.append(f"  it ended {record.status} ({record.tags.get('error', 'no reason recorded')}); "
                         f"re-run now: {now}")
            return RERUN, lines
        if grid is None:
            all_match = _compare_run(store, record, cfg, result, lines)
        else:
            all_match = _compare_batch(store, record, grid, result, Path(tmp), lines)
    lines.append("every metric matches" if all_match else "MISMATCH: the re-run differs from the logged run")
    return (IDENTICAL if all_match else DIFFERS), lines


def _sweep(uri: str, store: Any, parent: Any, launcher: Optional[str]) -> int:
    """Every run of the sweep re-run through `launcher` and compared; one line each, a summary."""
    runnable = store.children(parent.run_id)
    if not runnable:
        print(f"cannot re-run sweep {parent.run_id}: it has no run", file=sys.stderr)
        return CANNOT
    stored, options = _stored_launcher(store, runnable[0].run_id)
    launcher = launcher or stored
    print(f"re-running {parent.name} ({parent.run_id}): {len(runnable)} runs through {launcher}"
          f"{' (as it ran)' if launcher == stored else f' (it ran through {stored})'}", flush=True)
    results = _launch(launcher, options, uri, [c.run_id for c in runnable])
    differing = []
    for child, (status, lines) in zip(runnable, results):
        verdict = {IDENTICAL: "identical", DIFFERS: "DIFFERS", CANNOT: "cannot be re-run", RERUN: "re-run"}[status]
        print(f"  {child.name} ({child.run_id}): {verdict}")
        if status not in (IDENTICAL, RERUN):
            differing.append(status)
        if status != IDENTICAL:  # what differs (after the line that says what was re-run), or why it cannot
            print("\n".join(f"    {line.strip()}" for line in (lines if status == CANNOT else lines[1:])))
    finished = sum(child.status == FINISHED for child in runnable)
    rerun = len(runnable) - finished
    same = sum(child.status == FINISHED and status == IDENTICAL for child, (status, _) in zip(runnable, results))
    print(f"{same} of {finished} runs identical"
          + (f"; {rerun} that had not finished re-run" if rerun else ""))
    return max(differing, default=IDENTICAL)


def _stored_launcher(store: Any, run_id: str) -> tuple[str, dict]:
    """The launcher a run was launched through, and its settings, from its `hydra/hydra.yaml`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = store.download(run_id, "hydra/hydra.yaml", Path(tmp))
        launcher = OmegaConf.load(path).hydra.get("launcher", {}) if path else {}
    target = str(launcher.get("_target_", "")).rsplit(".", 1)[-1]
    options = {key: launcher.get(key) for key in ("partition", "timeout_min", "cpus_per_task", "gpus_per_node",
                                                   "mem_gb") if launcher.get(key) is not None}
    return LAUNCHER_OF.get(target, "basic"), options


def _launch(launcher: str, options: dict, uri: str, run_ids: list[str]) -> list[tuple[int, list[str]]]:
    """`check` of every run, through the launcher."""
    if launcher == "basic":
        return [check(uri, run_id) for run_id in run_ids]
    if launcher == "joblib":
        from joblib import Parallel, delayed

        return Parallel(n_jobs=-1)(delayed(check)(uri, run_id) for run_id in run_ids)
    import submitit

    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:  # submitit's logs, where a cluster's nodes see them
        executor = submitit.AutoExecutor(folder=folder, cluster="local" if launcher == "submitit_local" else "slurm")
        if launcher == "submitit_slurm":
            executor.update_parameters(**{("slurm_partition" if k == "partition" else k): v for k, v in options.items()})
        jobs = executor.map_array(check, [uri] * len(run_ids), run_ids)
        if launcher == "submitit_local":
            return [job.result() for job in jobs]

        try:
            ended = cluster.wait(jobs)
        except KeyboardInterrupt:
            cluster.cancel(jobs)
            raise
        return [(CANNOT, [f"cannot re-run {run_id}: {ended[job.job_id]}"]) if job.job_id in ended else job.result()
                for run_id, job in zip(run_ids, jobs)]


def _compare_run(store, record, cfg, result, lines: list[str]) -> bool:
    """Every logged series, the summary and the outcome of a run against the re-run's."""
    from runner.records import tracking

    trajectory, summary = result.trajectory(0), result.summary.values(0)
    all_match = True
    for name, (_, fresh) in tracking.logged_series(trajectory, cfg.mlflow.max_logged_steps).items():
        stored = store.metric_series(record.run_id, name)
        same = stored.shape == fresh.shape and np.array_equal(stored, fresh, equal_nan=True)
        all_match &= same
        lines.append(f"  {name}: {len(fresh)} logged steps, {'identical' if same else _first_difference(stored, fresh)}")
    for name in (*QUANTITIES, *result.summary.measured):  # and a model's final and best measures
        stored, value = record.metrics.get(name), summary.get(name)
        if stored is None and (value is None or name in result.summary.measured):
            continue  # a measure's final and best: not logged by runs recorded before they were
        same = stored is not None and value is not None and np.array_equal(
            np.float64(stored), np.float64(value), equal_nan=True)
        all_match &= bool(same)
        lines.append(f"  {name}: {'identical' if same else f'was {stored}, is {value} now'}")
    if record.tags.get("outcome") != result.summary.outcome[0]:
        all_match = False
        lines.append(f"  outcome: was {record.tags.get('outcome')}, is {result.summary.outcome[0]} now")
    return all_match


def _compare_batch(store, record, grid, result, tmp: Path, lines: list[str]) -> bool:
    """Every point's summary in points.csv, and every kept trajectory, against the re-run's."""
    stored_path = store.download(record.run_id, "points.csv", tmp / "stored")
    if stored_path is None:
        lines.append("  points.csv: not in the run")
        return False
    stored = tables.read_table(stored_path)
    fresh = batch.point_table(grid, result, None, [])  # the spectral radius is theory, not measured
    compared = [c for c in (*batch.SUMMARY_COLUMNS, *result.summary.measured) if c in stored and c in fresh]
    differing = []
    for name in compared:
        now = tables.text_column(name, fresh[name])
        if len(now) != len(stored[name]):
            lines.append(f"  points.csv: {len(stored[name])} points logged, {len(now)} now")
            return False
        differing += [(i, name, stored[name][i], now[i]) for i in range(len(now)) if stored[name][i] != now[i]]
    points = sorted({i for i, *_ in differing})
    if points:
        i, name, was, now = min(differing)
        lines.append(f"  points: {grid.count - len(points)} of {grid.count} identical; first differing: point #{i} "
                     f"({' '.join(grid.overrides(i))}): {name} was {was or 'blank'}, is {now or 'blank'} now")
    else:
        lines.append(f"  points: {grid.count} of {grid.count} identical ({', '.join(compared)})")

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
                lines.append(f"  trajectories.npz: {name} DIFFERS")
        if same_rows:
            lines.append(f"  trajectories.npz: x, loss and grad of {len(result.kept)} kept points identical")
    else:
        lines.append("  trajectories.npz: not in the run")
    return not points and same_rows


def _first_difference(stored: np.ndarray, fresh: np.ndarray) -> str:
    if stored.shape != fresh.shape:
        return f"DIFFERS: {len(stored)} values logged, {len(fresh)} now"
    step = int(np.flatnonzero(~((stored == fresh) | (np.isnan(stored) & np.isnan(fresh))))[0])
    return f"DIFFERS from step {step}: logged {stored[step]!r}, now {fresh[step]!r}"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
