"""The sweep report, built from what the jobs recorded: their MLflow runs and trajectory CSVs.

Built by the sweeper at the end of every sweep (`build`), and printed again on demand:

    python -m runner.report [--experiment NAME] [--sweep RUN_ID] [--csv] [--sort COLUMN ...]
    python -m runner.report --batch RUN_ID [--csv] [--sort COLUMN ...] [--limit N]

prints the table of the newest sweep of the experiment (default `runner`), or of the sweep
whose parent run is RUN_ID, as the sweep recorded it (`report/runs.csv` of its parent run);
with --batch, the points of a batch run (its `points.csv`). A batched sweep's report is
`runner.batch_report`'s.

One row per job (backend, optimizer, loss, lr, any other key the sweep varied, final x, final
loss, outcome, steps to tolerance, wall time, parity), two figures, and a parity line per backend, all logged to the
sweep's parent run under `report/` and written into the sweep folder.

Parity is the largest difference between a job's x and that of another backend at the same
settings, over the epochs both ran, relative to max(1, |x|).
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from runner import plots
from runner.outcomes import DIVERGED

log = logging.getLogger("runner")

SETTINGS = ["backend", "optimizer", "loss", "lr"]
RESULTS = ["final_x", "final_loss", "outcome", "steps_to_tolerance", "rate", "wall_time_s", "parity"]
COLUMNS = SETTINGS + RESULTS
HEADERS = {"final_x": "final x", "final_loss": "final loss", "steps_to_tolerance": "steps", "wall_time_s": "wall s",
           # a batch's points
           "final_grad_norm": "final |grad|", "epochs_run": "epochs", "diverged_at": "diverged at",
           "spectral_radius": "spectral radius", "trajectory": "kept as"}


@dataclass
class Job:
    """One child run and its trajectory (empty when the run failed before recording one)."""

    record: object  # runner.tracking.RunRecord
    series: dict[str, np.ndarray]

    @property
    def settings(self) -> tuple:
        """Everything but the backend: jobs with equal settings must agree."""
        return tuple(sorted((k, v) for k, v in self.record.params.items() if k != "backend"))

    @property
    def x(self) -> np.ndarray:
        names = ["x"] if "x" in self.series else sorted(
            (k for k in self.series if k.startswith("x/")), key=lambda k: int(k[2:]))  # x/2 before x/10
        return np.stack([self.series[n] for n in names], axis=1) if names else np.empty((0, 0))


def build(store, parent_id: str, folder: Path, reused: Sequence[str] = ()) -> bool:
    """Write, log and print the report of a sweep; True when every job's run FINISHED.

    `reused` are FINISHED runs of earlier sweeps that stand in for jobs skipped by skip_done.
    """
    records = [*(store.record(run_id) for run_id in reused), *store.children(parent_id)]
    if any(record.tags.get("kind") == "batch" for record in records):
        from runner import batch_report

        return batch_report.build(store, parent_id, folder, records)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [Job(record, read_series(store.download(record.run_id, "trajectory.csv", Path(tmp))))
                for record in records]
    varied = varied_keys([job.record.params for job in jobs])
    rows = [_row(job, jobs, varied) for job in jobs]
    rows.sort(key=lambda r: (r["loss"], r["optimizer"], _float(r["lr"]), r["backend"]))
    columns = SETTINGS + varied + RESULTS

    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / "runs.csv"
    with table_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns + ["status", "run_id", "error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    figures = _figures(jobs, rows, out)
    parity = _parity_by_backend(rows)
    failed = [r for r in rows if r["status"] != "FINISHED"]

    store.log_artifacts(parent_id, files=[], folders={"report": out})
    store.log_metrics(parent_id, {"jobs": len(rows), "jobs_failed": len(failed),
                                  **{f"parity/{b}": v for b, v in parity.items() if math.isfinite(v)}})
    store.set_tags(parent_id, {"jobs": len(rows), "jobs_failed": len(failed)})

    log.info("Sweep report: %d runs (%d reused), %d failed; table %s, figures %s", len(rows),
             len(reused), len(failed), table_path, ", ".join(str(f) for f in figures))
    log.info("\n%s", format_table(rows, columns))
    if parity:
        log.info("Parity (largest relative difference from the other backends): %s",
                 ", ".join(f"{b} {v:.3g}" for b, v in parity.items()))
    for row in failed:
        log.error("Job failed: %s: %s", row["run_name"], row["error"] or row["status"])
    return not failed


def read_series(path: Optional[Path]) -> dict[str, np.ndarray]:
    """A run's trajectory.csv (`runner.app.write_csv`) as a series per column; none for no file."""
    if path is None:
        return {}
    with path.open() as file:
        reader = csv.reader(file)
        header = next(reader)
        values = np.array([[float(v) for v in row] for row in reader], dtype=np.float64)
    return {name: values[:, i] if len(values) else np.empty(0) for i, name in enumerate(header)}


def varied_keys(params: Sequence[dict[str, str]]) -> list[str]:
    """The params, beyond backend, optimizer, loss and lr, whose values differ between jobs
    (what a search or a grid over other keys changed), in name order.

    >>> varied_keys([{"lr": "0.1", "optimizer.momentum": "0.5", "epochs": "9"},
    ...              {"lr": "0.2", "optimizer.momentum": "0.9", "epochs": "9"}])
    ['optimizer.momentum']
    """
    keys = sorted({k for p in params for k in p} - set(SETTINGS))
    return [k for k in keys if len({p.get(k) for p in params}) > 1]


def _float(text: object) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _row(job: Job, jobs: list[Job], varied: Sequence[str] = ()) -> dict:
    r = job.record
    x = job.x
    final_x = x[-1].tolist() if len(x) else None
    return {
        "backend": r.params.get("backend", ""), "optimizer": r.params.get("optimizer", ""),
        "loss": r.params.get("loss", ""), "lr": _number(r.params.get("lr", "")),
        **{key: _number(r.params.get(key, "")) for key in varied},
        "final_x": "" if final_x is None else (final_x[0] if len(final_x) == 1 else final_x),
        "final_loss": r.metrics.get("final_loss", ""),
        "outcome": r.tags.get("outcome", "failed" if r.status == "FAILED" else r.status.lower()),
        "steps_to_tolerance": _int_or_blank(r.metrics.get("steps_to_tolerance")),
        "rate": r.metrics.get("rate", ""),
        "wall_time_s": r.metrics.get("wall_time_s", ""),
        "parity": _parity(job, jobs),
        "status": r.status, "run_id": r.run_id, "run_name": r.name,
        "error": r.tags.get("error", ""), "curvature": r.tags.get("loss_curvature"),
    }


def _int_or_blank(value: Optional[float]) -> object:
    return "" if value is None else int(value)


def _parity(job: Job, jobs: list[Job]) -> float:
    """The largest relative difference of x from another backend's job at the same settings."""
    worst = math.nan
    for other in jobs:
        if other is job or other.settings != job.settings or not len(other.x) or not len(job.x):
            continue
        if other.record.params.get("backend") == job.record.params.get("backend"):
            continue
        n = min(len(job.x), len(other.x))
        a, b = job.x[:n], other.x[:n]
        both = np.isfinite(a) & np.isfinite(b)
        if both.any():
            difference = float(np.max(np.abs(a - b)[both] / np.maximum(1.0, np.abs(b[both]))))
            worst = difference if math.isnan(worst) else max(worst, difference)
    return worst


def _parity_by_backend(rows: list[dict]) -> dict[str, float]:
    worst: dict[str, float] = {}
    for row in rows:
        if isinstance(row["parity"], float) and not math.isnan(row["parity"]):
            worst[row["backend"]] = max(worst.get(row["backend"], 0.0), row["parity"])
    return dict(sorted(worst.items()))


def _figures(jobs: list[Job], rows: list[dict], out: Path) -> list[Path]:
    series = [(j.record.params.get("backend", "?"),
               f"{j.record.params.get('optimizer', '')} lr={j.record.params.get('lr', '')}",
               j.series["loss"]) for j in jobs if "loss" in j.series]
    paths = [out / "trajectories.png", out / "final_loss_vs_lr.png"]
    plots.trajectories_figure(series).savefig(paths[0])
    points = [(f"{r['backend']} {r['optimizer']}", float(r["lr"]), float(r["final_loss"]),
               r["outcome"] == DIVERGED) for r in rows if r["final_loss"] != "" and r["lr"] != ""]
    curvatures = {r["curvature"] for r in rows}
    bound = 2.0 / float(curvatures.pop()) if len(curvatures) == 1 and None not in curvatures else None
    plots.final_loss_figure(points, bound).savefig(paths[1])
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    import io
    import sys

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

    from runner import batch_report, tracking

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
    rows = [{key: _number(value) for key, value in row.items()} for row in raw]
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
        print(format_table([rows[i] for i in order], columns, {**HEADERS, **batch_report.HEADERS}))
    return 0


def _number(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        return text


def format_table(rows: list[dict], columns: Sequence[str] = COLUMNS, headers: Optional[dict] = None) -> str:
    """The rows as an aligned text table for the terminal, each column headed by `headers`' name
    for it (default HEADERS), or its own."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        if isinstance(value, str) and value.startswith("["):  # a vector read back from the CSV
            return "[" + ", ".join(f"{float(v):.4g}" for v in value.strip("[]").split(",")) + "]"
        if isinstance(value, list):
            return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
        return str(value)

    headers = [(HEADERS if headers is None else headers).get(c, c) for c in columns]
    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
