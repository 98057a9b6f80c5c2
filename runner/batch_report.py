"""The report of a batched sweep, built from what its batch runs recorded (`runner.report.build`
hands a sweep whose children are batches here).

One row per batch (backend, optimizer, loss, its grid, outcome counts, best final loss, fastest
rate, the largest stable lr against theory, how far measured rates stray from the spectral
radius, wall time, parity across backends), every batch's points in one `report/points.csv`,
and a figure of every batch against its batched key (with one key batched) beside copies of the
batches' rate maps (with two). Logged to the sweep's parent run under `report/`.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from runner import plots
from runner.batch import read_points
from runner.outcomes import CONVERGED, DIVERGED, NOT_CONVERGED

log = logging.getLogger("runner")

COLUMNS = ["backend", "optimizer", "loss", "batched", "points", CONVERGED, NOT_CONVERGED, DIVERGED, "best_final_loss",
           "fastest_rate", "largest_stable_lr", "largest_stable_lr_theory", "rate_vs_theory", "wall_time_s", "parity"]
HEADERS = {"best_final_loss": "best final loss", "fastest_rate": "fastest rate", "largest_stable_lr": "stable lr",
           "largest_stable_lr_theory": "theory", "rate_vs_theory": "rate vs theory", "wall_time_s": "wall s"}


def build(store, parent_id: str, folder: Path, records: Sequence[Any]) -> bool:
    """Write, log and print the report of a batched sweep; True when every batch FINISHED."""
    from runner.report import format_table

    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        batches = [_Batch(record, store, Path(tmp)) for record in records]
        rows = [_row(batch, batches) for batch in batches]
        figures = _figures(batches, out)
    rows.sort(key=lambda r: (r["loss"], r["optimizer"], r["batched"], r["backend"]))
    with (out / "runs.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS + ["status", "run_id", "error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    _write_points(out / "points.csv", batches)
    failed = [r for r in rows if r["status"] != "FINISHED"]
    parity = {r["backend"]: r["parity"] for r in rows if isinstance(r["parity"], float) and math.isfinite(r["parity"])}

    store.log_artifacts(parent_id, files=[], folders={"report": out})
    store.log_metrics(parent_id, {"jobs": len(rows), "jobs_failed": len(failed),
                                  "points": sum(int(r["points"] or 0) for r in rows),
                                  **{f"parity/{b}": v for b, v in parity.items()}})
    store.set_tags(parent_id, {"jobs": len(rows), "jobs_failed": len(failed)})
    log.info("Sweep report: %d batch runs (%d points), %d failed; tables %s and %s, figures %s", len(rows),
             sum(int(r["points"] or 0) for r in rows), len(failed), out / "runs.csv", out / "points.csv",
             ", ".join(str(f) for f in figures) or "none")
    log.info("\n%s", format_table(rows, COLUMNS, HEADERS))
    if parity:
        log.info("Parity (largest relative difference of x from the other backends, every kept point): %s",
                 ", ".join(f"{b} {v:.3g}" for b, v in sorted(parity.items())))
    for row in failed:
        log.error("Job failed: %s: %s", row["run_name"], row["error"])
    return not failed


class _Batch:
    """A batch run with its points and kept trajectories, read back from the store."""

    def __init__(self, record: Any, store: Any, tmp: Path) -> None:
        self.record = record
        folder = tmp / record.run_id
        folder.mkdir()
        path = store.download(record.run_id, "points.csv", folder)
        self.points = read_points(path) if path else {}
        found = store.download(record.run_id, "trajectories.npz", folder)
        self.trajectories = dict(np.load(found)) if found else {}
        figures = store.client.list_artifacts(record.run_id)
        self.figures = {f.path: store.download(record.run_id, f.path, folder) for f in figures
                        if f.path.endswith(".png")}

    @property
    def settings(self) -> tuple:
        """Everything but the backend: batches with equal settings must agree."""
        return tuple(sorted((k, v) for k, v in self.record.params.items() if k != "backend"))

    @property
    def batched(self) -> list[str]:
        return [k[: -len(".count")] for k in self.record.params if k.endswith(".count")]

    def column(self, name: str) -> np.ndarray:
        return np.array([float(v) if v else math.nan for v in self.points.get(name, [])])


def _row(batch: _Batch, batches: list[_Batch]) -> dict:
    r = batch.record
    m = r.metrics
    return {
        "backend": r.params.get("backend", ""), "optimizer": r.params.get("optimizer", ""),
        "loss": r.params.get("loss", ""), "batched": r.name.split(" ", 1)[-1] if " " in r.name else "",
        "points": _int(m.get("points")), **{k: _int(m.get(k)) for k in (CONVERGED, NOT_CONVERGED, DIVERGED)},
        **{k: m.get(k, "") for k in ("best_final_loss", "fastest_rate", "largest_stable_lr", "largest_stable_lr_theory",
                                     "wall_time_s")},
        **({"largest_stable_lr": f"{int(m['stability/within_one_step'])} of {int(m['stability/settings'])} "
                                 f"settings within one lr step"} if "stability/settings" in m else {}),
        "rate_vs_theory": _rate_vs_theory(batch), "parity": _parity(batch, batches),
        "status": r.status, "run_id": r.run_id, "run_name": r.name, "error": r.tags.get("error", ""),
    }


def _int(value: Optional[float]) -> object:
    return "" if value is None else int(value)


def _rate_vs_theory(batch: _Batch) -> object:
    """The largest relative difference between a point's measured rate and the spectral radius of
    its iteration matrix, over the points where both are known and the radius is in (0, 1)."""
    rate, radius = batch.column("rate"), batch.column("spectral_radius")
    if not len(radius):
        return ""
    both = np.isfinite(rate) & np.isfinite(radius) & (radius > 0) & (radius < 1)
    return float(np.max(np.abs(rate[both] - radius[both]) / radius[both])) if both.any() else ""


def _parity(batch: _Batch, batches: list[_Batch]) -> float:
    """The largest difference of x, relative to max(1, |x|), from another backend's batch of the
    same settings, over every kept point and row both ran."""
    worst = math.nan
    for other in batches:
        if other is batch or other.settings != batch.settings or "x" not in other.trajectories or "x" not in batch.trajectories:
            continue
        if other.record.params.get("backend") == batch.record.params.get("backend"):
            continue
        a, b = batch.trajectories["x"].astype(np.float64), other.trajectories["x"].astype(np.float64)
        if a.shape != b.shape:
            continue
        both = np.isfinite(a) & np.isfinite(b)
        if both.any():
            difference = float(np.max(np.abs(a - b)[both] / np.maximum(1.0, np.abs(b[both]))))
            worst = difference if math.isnan(worst) else max(worst, difference)
    return worst


def _write_points(path: Path, batches: list[_Batch]) -> None:
    """Every batch's points.csv in one table, each row headed by its batch's backend, optimizer,
    loss and run id."""
    names = list(dict.fromkeys(n for b in batches for n in b.points))
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["backend", "optimizer", "loss", "run_id", *names])
        for b in batches:
            head = [b.record.params.get(k, "") for k in ("backend", "optimizer", "loss")] + [b.record.run_id]
            count = len(next(iter(b.points.values()), []))
            for i in range(count):
                writer.writerow(head + [b.points[n][i] if n in b.points else "" for n in names])


def _figures(batches: list[_Batch], out: Path) -> list[Path]:
    """With one batched key in every batch: every batch against it in one figure (theory from the
    first batch, whose settings the others share but for the backend); with one batch, its own
    figure. Each batch's rate map, copied, where it has one."""
    paths = []
    keys = {tuple(k for k in b.batched if k != "x_start") for b in batches if b.points}
    if len(keys) == 1 and len(next(iter(keys))) == 1:
        (key,) = next(iter(keys))
        name = f"batch_{key.rsplit('.', 1)[-1]}.png"
        paths.append(out / name)
        if len(batches) == 1 and name in batches[0].figures:
            paths[-1].write_bytes(batches[0].figures[name].read_bytes())
        else:
            series = [(f"{b.record.params.get('backend')} {b.record.params.get('optimizer')}", b.column(key),
                       b.column("final_loss"), b.column("rate"), np.array(b.points["outcome"]) == DIVERGED)
                      for b in batches if b.points]
            first = next(b for b in batches if b.points)
            theory = (first.column(key), first.column("spectral_radius")) if "spectral_radius" in first.points else None
            bound = first.record.metrics.get("largest_stable_lr_theory") if key == "lr" else None
            plots.batch_figure(key, series, theory, bound).savefig(paths[-1])
    for b in batches:
        if "rate_map.png" in b.figures:
            target = out / f"rate_map_{b.record.params.get('backend')}_{b.record.params.get('optimizer')}.png"
            target.write_bytes(b.figures["rate_map.png"].read_bytes())
            paths.append(target)
    return paths
