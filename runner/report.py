"""The sweep report, built from what the jobs recorded: their MLflow runs and trajectory CSVs.

Built by the sweeper at the end of every sweep (`report_grid`), and printed again on demand:

    python -m runner.report [--experiment NAME] [--sweep RUN_ID] [--csv] [--sort COLUMN ...]
    python -m runner.report --batch RUN_ID [--csv] [--sort COLUMN ...] [--limit N]

prints the table of the newest sweep of the experiment (default `runner`), or of the sweep
whose parent run is RUN_ID, as the sweep recorded it (`report/runs.csv` of its parent run);
with --batch, the points of a batch run (its `points.csv`). A batched sweep's report is
`runner.records.batch_report`'s, which ends as this one does (`finish`) and measures parity alike (`parity`).

One row per job (backend, optimizer, loss, lr, any other key the sweep varied, final x, final
loss, outcome, steps to tolerance, wall time, parity), two figures, and a parity line per backend, all logged to the
sweep's parent run under `report/` and written into the sweep folder.

Parity is the largest difference between a job's x and that of another backend at the same
settings, over the epochs both ran, relative to max(1, |x|).
"""

from __future__ import annotations

if __name__ == "__main__":  # a process of its own: its collector set before the imports below
    from runner import process

    process.own()

import argparse
import csv
import io
import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from runner.descent import theory
from runner.descent.outcomes import DIVERGED
from runner.errors import FAILED, FINISHED
from runner.records import plots, tables

log = logging.getLogger("runner")

SETTINGS = ["backend", "optimizer", "loss", "lr"]
RESULTS = ["final_x", "final_loss", "outcome", "steps_to_tolerance", "rate", "wall_time_s", "parity"]
COLUMNS = SETTINGS + RESULTS
MEASURED = ["val_loss", "val_accuracy"]  # a model's, at its last epoch
MODEL_SILENT = ["final_x", "steps_to_tolerance", "rate"]


@dataclass
class Job:
    """One child run and its trajectory (empty when the run failed before recording one)."""

    record: object  # runner.records.tracking.RunRecord
    series: dict[str, np.ndarray]

    @property
    def x(self) -> np.ndarray:
        names = ["x"] if "x" in self.series else sorted(
            (k for k in self.series if k.startswith("x/")), key=lambda k: int(k[2:]))  # x/2 before x/10
        return np.stack([self.series[n] for n in names], axis=1) if names else np.empty((0, 0))


def report_grid(store, parent_id: str, folder: Path, records: Sequence[Any], reused: int = 0) -> bool:
    """Write, log and print the report of a sweep of `records` (its runs, the first `reused` of
    them FINISHED runs of earlier sweeps standing in for jobs that skip_done skipped); True when
    every run FINISHED."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [Job(record, tables.read_series(store.download(record.run_id, "trajectory.csv", Path(tmp))))
                for record in records]
    varied = varied_keys([job.record.params for job in jobs])
    measured = [name for name in MEASURED if any(name in job.series for job in jobs)]  # models' sweeps
    rows = [_row(job, jobs, varied, measured) for job in jobs]
    rows.sort(key=lambda r: (r["loss"], r["optimizer"], _float(r["lr"]), r["backend"]))
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(jobs, rows, out, varied)
    # A model's x is its weights: their first few, its steps to tolerance and rate say little
    results = [c for c in RESULTS if c not in MODEL_SILENT] + measured if measured else RESULTS
    return finish(store, parent_id, out, rows, SETTINGS + varied + results, f"{len(rows)} runs ({reused} reused)",
                  figures)


def finish(store, parent_id: str, out: Path, rows: list[dict], columns: Sequence[str], what: str,
           figures: Sequence[Path], metrics: Optional[dict] = None, more_tables: Sequence[Path] = ()) -> bool:
    """How every sweep's report ends: `runs.csv` (the columns, then each run's status, id and
    error), the `report/` folder logged to the parent run with the counts and the parity per
    backend as metrics, the table and each failure on the terminal; True when nothing failed."""
    with (out / "runs.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[*columns, "status", "run_id", "error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    failed = [r for r in rows if r["status"] != FINISHED]
    worst: dict[str, float] = {}
    for row in rows:
        if isinstance(row["parity"], float) and math.isfinite(row["parity"]):
            worst[row["backend"]] = max(worst.get(row["backend"], 0.0), row["parity"])
    worst = dict(sorted(worst.items()))
    store.log_artifacts(parent_id, files=[], folders={"report": out})
    store.log_metrics(parent_id, {"jobs": len(rows), "jobs_failed": len(failed), **(metrics or {}),
                                  **{f"parity/{b}": v for b, v in worst.items()}})
    store.set_tags(parent_id, {"jobs": len(rows), "jobs_failed": len(failed)})
    log.info("Sweep report: %s, %d failed; tables %s, figures %s", what, len(failed),
             ", ".join(str(t) for t in [out / "runs.csv", *more_tables]), ", ".join(str(f) for f in figures) or "none")
    log.info("\n%s", tables.format_table(rows, columns))
    if worst:
        log.info("Parity (largest relative difference from the other backends): %s",
                 ", ".join(f"{b} {v:.3g}" for b, v in worst.items()))
    for row in failed:
        log.error("Job failed: %s: %s", row["run_name"], row["error"] or row["status"])
    return not failed


def parity(mine: Any, others: Sequence[Any], x_of: Callable[[Any], Optional[np.ndarray]]) -> float:
    """The largest difference between `mine`'s x and that of another backend's run of the same
    settings (every param but the backend), relative to max(1, |x|), over the rows both have
    (`x_of`: a run's x, rows first; None or empty when it has none); NaN when there is none."""
    def settings(item: Any) -> tuple:
        return tuple(sorted((k, v) for k, v in item.record.params.items() if k != "backend"))

    worst = math.nan
    a = x_of(mine)
    for other in others:
        b = x_of(other)
        if (other is mine or a is None or b is None or not len(a) or not len(b) or settings(other) != settings(mine)
                or other.record.params.get("backend") == mine.record.params.get("backend") or a.shape[1:] != b.shape[1:]):
            continue
        n = min(len(a), len(b))
        first, second = a[:n].astype(np.float64), b[:n].astype(np.float64)
        both = np.isfinite(first) & np.isfinite(second)
        if both.any():
            difference = float(np.max(np.abs(first - second)[both] / np.maximum(1.0, np.abs(second[both]))))
            worst = difference if math.isnan(worst) else max(worst, difference)
    return worst


def varied_keys(params: Sequence[dict[str, str]]) -> list[str]:
    """The params, beyond backend, optimizer, loss and lr (and a model and its data, which the
    loss column names), whose values differ between jobs
    (what a search or a grid over other keys changed), in name order.

    >>> varied_keys([{"lr": "0.1", "optimizer.momentum": "0.5", "epochs": "9"},
    ...              {"lr": "0.2", "optimizer.momentum": "0.9", "epochs": "9"}])
    ['optimizer.momentum']
    """
    keys = sorted({k for p in params for k in p} - set(SETTINGS) - {"model", "data"})  # both in the loss column
    return [k for k in keys if len({p.get(k) for p in params}) > 1]


def _float(text: object) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _row(job: Job, jobs: list[Job], varied: Sequence[str] = (), measured: Sequence[str] = ()) -> dict:
    r = job.record
    x = job.x
    final_x = x[-1].tolist() if len(x) else None
    return {
        "backend": r.params.get("backend", ""), "optimizer": r.params.get("optimizer", ""),
        "loss": tables.minimised(r.params), "lr": tables.number(r.params.get("lr", "")),
        **{key: tables.number(r.params.get(key, "")) for key in varied},
        "final_x": "" if final_x is None else (final_x[0] if len(final_x) == 1 else final_x),
        "final_loss": r.metrics.get("final_loss", ""),
        "outcome": r.tags.get("outcome", "failed" if r.status == FAILED else r.status.lower()),
        "steps_to_tolerance": _int_or_blank(r.metrics.get("steps_to_tolerance")),
        "rate": r.metrics.get("rate", ""),
        "wall_time_s": r.metrics.get("wall_time_s", ""),
        "parity": parity(job, jobs, lambda j: j.x),
        **{name: float(job.series[name][-1]) if name in job.series else "" for name in measured},
        "status": r.status, "run_id": r.run_id, "run_name": r.name,
        "error": r.tags.get("error", ""),
    }


def _int_or_blank(value: Optional[float]) -> object:
    return "" if value is None else int(value)


def _figures(jobs: list[Job], rows: list[dict], out: Path, varied: Sequence[str] = ()) -> list[Path]:
    def line(j: Job, name: str) -> tuple[str, str, np.ndarray]:
        params = j.record.params
        return params.get("backend", "?"), f"{params.get('optimizer', '')} lr={params.get('lr', '')}", j.series[name]

    series = [line(j, "loss") for j in jobs if "loss" in j.series]
    paths = [out / "trajectories.png", out / "final_loss_vs_lr.png"]
    plots.trajectories_figure(series).savefig(paths[0])
    points = [(f"{r['backend']} {r['optimizer']}", float(r["lr"]), float(r["final_loss"]),
               r["outcome"] == DIVERGED) for r in rows if r["final_loss"] != "" and r["lr"] != ""]
    plots.final_loss_figure(points, _stability_bound(jobs)).savefig(paths[1])
    if jobs and all("x" in j.series for j in jobs):  # a scalar parameter: its path too, as the article draws it
        paths.append(out / "paths.png")
        plots.trajectories_figure([line(j, "x") for j in jobs], "x").savefig(paths[-1])
    name = next((n for n in ("val_accuracy", "val_loss") if any(n in j.series for j in jobs)), None)
    if name:  # a sweep of models: each setting's validation curve, one line per backend
        by_row = {r["run_id"]: r for r in rows}

        def setting(row: dict) -> str:
            named = " ".join(f"{k.split('.')[-1]}={row[k]}" for k in ("lr", *varied) if row[k] != "")
            return f"{row['loss']}, {row['optimizer']}\n{named}"

        series = [(setting(by_row[j.record.run_id]), j.record.params.get("backend", "?"), j.series[name])
                  for j in jobs if name in j.series]
        paths.append(out / "validation.png")
        plots.validation_figure(series, name).savefig(paths[-1])
    return paths


def _stability_bound(jobs: list[Job]) -> Optional[float]:
    """Theory's largest stable lr, where every run shares one rule, its momentum and the loss's
    largest curvature (`theory.largest_stable_lr`) at a constant lr; else None."""
    if any(j.record.params.get("schedule", "constant") != "constant" for j in jobs):
        return None
    settings = {(j.record.params.get("optimizer"), j.record.params.get("optimizer.momentum"),
                 j.record.tags.get("loss_curvature")) for j in jobs}
    if len(settings) != 1:
        return None
    ((rule, momentum, curvature),) = settings
    if curvature is None:
        return None
    return theory.largest_stable_lr(rule, float(curvature), None if momentum is None else float(momentum))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.report",
                                     description="Print the table of runs of a sweep, or the points of a batch.")
    parser.add_argument("--experiment", default="runner", help="the MLflow experiment (default: runner)")
    parser.add_argument("--sweep", metavar="RUN_ID", help="the sweep's parent run (default: the newest sweep)")
    parser.add_argument("--batch", metavar="RUN_ID", help="a batch run: print its points instead")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of an aligned table")
    parser.add_argument("--sort", nargs="+", metavar="COLUMN",
                        help=f"sort by these columns (default: as recorded): {', '.join(COLUMNS)}, "
                             "another key the sweep varied, or a column of a batch's points")
    parser.add_argument("--limit", type=int, metavar="N", help="print the first N rows (after sorting)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    args = parser.parse_args(argv)

    from runner.records import tracking  # MLflow, imported once the arguments are good (--help needs none)

    uri = tracking.tracking_uri(args.tracking_uri, Path.cwd())
    try:
        if args.batch:
            store = tracking.open_run(uri, args.batch)
            run, artifact, what = args.batch, "points.csv", "batch"
        else:
            store = tracking.open_experiment(uri, args.experiment)
            sweeps = store.sweeps()
            run = args.sweep or (sweeps[0].run_id if sweeps else None)
            if run is None:
                raise ValueError(f"experiment {args.experiment!r} has no sweep yet")
            artifact, what = "report/runs.csv", "sweep"
        with tempfile.TemporaryDirectory() as tmp:
            path = store.download(run, artifact, Path(tmp))
            if path is None:
                raise ValueError(f"run {run} of experiment {store.experiment_name!r} holds no {what} "
                                 f"{'points' if args.batch else 'report'} ({artifact})")
            text = path.read_text()
    except Exception as error:  # one line: this is a command for people
        print(f"runner.report: {error}", file=sys.stderr)
        return 2
    reader = csv.DictReader(io.StringIO(text))
    raw = list(reader)
    hidden = ("status", "run_id", "error") + (() if args.csv else ("overrides",))
    columns = [c for c in reader.fieldnames or COLUMNS if c not in hidden]
    unknown = [c for c in args.sort or () if c not in columns]
    if unknown:
        print(f"runner.report: --sort {unknown[0]}: allowed columns are {', '.join(columns)}", file=sys.stderr)
        return 2
    rows = [{key: tables.number(value) for key, value in row.items()} for row in raw]
    order = list(range(len(rows)))
    if args.sort:  # numbers before text (a failed run's blank cells last), then by value
        order.sort(key=lambda i: tuple((isinstance(rows[i][c], str), rows[i][c]) for c in args.sort))
    order = order[: args.limit] if args.limit is not None else order
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(raw[0]) if raw else COLUMNS)
        writer.writeheader()
        writer.writerows(raw[i] for i in order)
    else:
        shown = f", {len(order)} shown" if len(order) < len(rows) else ""
        print(f"{what} {run} of experiment {store.experiment_name!r}: {len(rows)} {'points' if args.batch else 'runs'}{shown}")
        print(tables.format_table([rows[i] for i in order], columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
