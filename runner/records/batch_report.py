"""The report of a batched sweep, built from what its batch runs recorded; it ends as a grid's
report does (`runner.report.finish`).

One row per batch (backend, optimizer, loss, its grid, outcome counts, best final loss, fastest
rate, the largest stable lr against theory, how far measured rates stray from the spectral
radius, wall time, parity across backends, the best setting's mean ± std over seeds), every
batch's points in one `report/points.csv`, a figure of every batch against its batched key
(with one key batched) beside copies of the batches' rate maps (with two), and with a seed axis
every batch's mean ± std over seeds in `report/seeds.csv` and `report/seeds.png` (a band per
batch), also a table in MLflow's UI. Logged to the sweep's parent run under `report/`.
"""

from __future__ import annotations

import csv
import math
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from runner import report
from runner.descent.outcomes import CONVERGED, DIVERGED, NOT_CONVERGED, OUTCOMES, PRUNED, higher_is_better
from runner.records import plots, seeds, tables

COLUMNS = ["backend", "optimizer", "loss", "batched", "points", CONVERGED, NOT_CONVERGED, DIVERGED, "best_final_loss",
           "fastest_rate", "largest_stable_lr", "largest_stable_lr_theory", "rate_vs_theory", "wall_time_s", "parity"]
OVER_SEEDS = "over_seeds"  # a column only in a report whose batches have a seed axis
RUNGS = "rungs"  # with PRUNED, columns only in a report of pruned batches: each rung's epoch, points ranked and kept


def report_batches(store, parent_id: str, folder: Path, records: Sequence[Any], reused: int = 0) -> bool:
    """Write, log and print the report of a batched sweep; True when every batch FINISHED."""
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        batches = [_Batch(record, store, Path(tmp)) for record in records]
        rows = [_row(batch, batches) for batch in batches]
        figures = _figures(batches, out)
    rows.sort(key=lambda r: (r["loss"], r["optimizer"], r["batched"], r["backend"]))
    _write_points(out / "points.csv", batches)
    points = sum(int(r["points"] or 0) for r in rows)
    columns, more_tables, metrics = COLUMNS, [out / "points.csv"], {"points": points}
    if any(b.rungs for b in batches):
        at = COLUMNS.index(DIVERGED) + 1
        columns = [*COLUMNS[:at], PRUNED, *COLUMNS[at:], RUNGS]
    if any(b.seeds for b in batches):
        columns = [*columns, OVER_SEEDS]
        more_tables.append(_write_points(out / "seeds.csv", batches, "seeds"))
        store.log_table(parent_id, {k: [tables.number(v) if v else None for v in column]
                                    for k, column in tables.read_table(more_tables[-1]).items()}, "report/seeds.json")
        figures += _seed_figure(batches, out) + _validation_figure(batches, out)
        metrics.update(_best_over_seeds(batches))
    return report.finish(store, parent_id, out, rows, columns, f"{len(rows)} batch runs ({points} points)", figures,
                         metrics=metrics, more_tables=more_tables)


class _Batch:
    """A batch run with its points and kept trajectories, read back from the store."""

    def __init__(self, record: Any, store: Any, tmp: Path) -> None:
        self.record = record
        folder = tmp / record.run_id
        folder.mkdir()
        path = store.download(record.run_id, "points.csv", folder)
        self.points = tables.read_table(path) if path else {}
        found = store.download(record.run_id, "trajectories.npz", folder)
        self.trajectories = dict(np.load(found)) if found else {}
        found = store.download(record.run_id, "seeds.csv", folder)
        self.seeds = tables.read_table(found) if found else {}  # mean ± std over seeds, a row per setting
        found = store.download(record.run_id, "rungs.csv", folder)
        self.rungs = tables.read_table(found) if found else {}  # a pruned batch's: a row per rung
        self.figures = {name: store.download(record.run_id, name, folder)
                        for name in store.artifact_paths(record.run_id) if name.endswith(".png")}

    @property
    def batched(self) -> list[str]:
        return [k[: -len(".count")] for k in self.record.params if k.endswith(".count")]

    def column(self, name: str, table: str = "points") -> np.ndarray:
        return np.array([float(v) if v else math.nan for v in getattr(self, table).get(name, [])])

    @property
    def label(self) -> str:
        params = self.record.params
        return f"{params.get('backend')} {params.get('optimizer')} {tables.minimised(params)}"

    def spread(self) -> dict[str, np.ndarray]:
        """seeds.csv as numbers (the keys' and statistics' columns), and the quantities averaged."""
        return {k: self.column(k, "seeds") for k in self.seeds}

    def quantities(self) -> list[str]:
        return [k[:-len(".mean")] for k in self.seeds if k.endswith(".mean")]


def _row(batch: _Batch, batches: list[_Batch]) -> dict:
    r = batch.record
    m = r.metrics
    return {
        "backend": r.params.get("backend", ""), "optimizer": r.params.get("optimizer", ""),
        "loss": tables.minimised(r.params), "batched": r.name.split(" ", 1)[-1] if " " in r.name else "",
        "points": _int(m.get("points")), **{k: _int(m.get(k)) for k in OUTCOMES},
        **{k: m.get(k, "") for k in ("best_final_loss", "fastest_rate", "largest_stable_lr", "largest_stable_lr_theory",
                                     "wall_time_s")},
        **({"largest_stable_lr": f"{int(m['stability/within_one_step'])} of {int(m['stability/settings'])} "
                                 f"settings within one lr step"} if "stability/settings" in m else {}),
        "rate_vs_theory": _rate_vs_theory(batch), "parity": report.parity(batch, batches, _kept_x),
        OVER_SEEDS: seeds.describe(batch.spread(), batch.quantities()) if batch.seeds else "",
        RUNGS: _rungs(batch),
        "status": r.status, "run_id": r.run_id, "run_name": r.name, "error": r.tags.get("error", ""),
    }


def _rungs(batch: _Batch) -> str:
    """A pruned batch's rungs: 'epoch: ranked->kept' each."""
    r = batch.rungs
    return ", ".join(f"{e}: {n}->{k}" for e, n, k in zip(r.get("epoch", []), r.get("running", []), r.get("kept", [])))


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


def _kept_x(batch: _Batch) -> Optional[np.ndarray]:
    """x of every kept point, rows first: (rows, kept points, ...)."""
    return batch.trajectories.get("x")


def _write_points(path: Path, batches: list[_Batch], table: str = "points") -> Path:
    """Every batch's points.csv (or seeds.csv) in one table, each row headed by its batch's
    backend, optimizer, loss and run id."""
    names = list(dict.fromkeys(n for b in batches for n in getattr(b, table)))
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["backend", "optimizer", "loss", "run_id", *names])
        for b in batches:
            head = [b.record.params.get("backend", ""), b.record.params.get("optimizer", ""),
                    tables.minimised(b.record.params), b.record.run_id]
            rows = getattr(b, table)
            for i in range(len(next(iter(rows.values()), []))):
                writer.writerow(head + [rows[n][i] if n in rows else "" for n in names])
    return path


def _seed_figure(batches: list[_Batch], out: Path) -> list[Path]:
    """Every batch's headline quantity, mean ± std over seeds, against the first other batched
    key they share: a band per batch (and per setting of any further key)."""
    spread = [(b, b.spread()) for b in batches if b.seeds]
    keys = {tuple(seeds.setting_keys(rows)[:1]) for _, rows in spread}
    names = {seeds.headline(b.quantities()) for b, _ in spread}
    if len(keys) != 1 or not next(iter(keys)) or len(names) != 1:
        return []
    name = names.pop()
    lines = [line for b, rows in spread for line in seeds.bands(rows, b.label, name)]
    path = out / "seeds.png"
    counts = {int(rows["seeds"][0]) for _, rows in spread}
    plots.seed_bands_figure(keys.pop()[0], [(name, lines)], counts.pop() if len(counts) == 1 else 0).savefig(path)
    return [path]


def _validation_figure(batches: list[_Batch], out: Path) -> list[Path]:
    """A batch of models over seeds: each setting's validation accuracy (or loss) per epoch, mean
    ± std over its seeds (from the kept trajectories), a panel per setting, a line per backend."""
    name = next((n for n in ("val_accuracy", "val_loss") if all(n in b.trajectories for b in batches if b.seeds)), None)
    spread = [b for b in batches if b.seeds and b.trajectories]
    if name is None or not spread:
        return []
    series, counts = [], set()
    for b in spread:
        kept = b.trajectories["points"]
        if len(kept) != len(b.points.get("point", [])):
            continue  # an evenly spaced subset of points: not every seed of a setting
        keys = [k for k in b.batched if k != seeds.SEED]
        settings: dict[tuple, list[int]] = {}
        for column, point in enumerate(kept):
            settings.setdefault(tuple(b.points[k][point] for k in keys), []).append(column)
        for values, columns in settings.items():
            curves = b.trajectories[name][:, columns].astype(np.float64)
            where = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, values))
            panel = f"{tables.minimised(b.record.params)}, {b.record.params.get('optimizer')}\n{where}"
            series.append((panel, b.record.params.get("backend", "?"), curves.mean(axis=1), curves.std(axis=1, ddof=1)))
            counts.add(len(columns))
    if not series:
        return []
    path = out / "validation.png"
    plots.validation_figure(series, name, counts.pop() if len(counts) == 1 else 0).savefig(path)
    return [path]


def _best_over_seeds(batches: list[_Batch]) -> dict[str, float]:
    """The parent's metrics: the best setting over every batch by the headline quantity's mean
    (`seeds/<name>.mean`, `.std`), and how many settings were averaged."""
    spread = [(b, b.spread()) for b in batches if b.seeds]
    names = {seeds.headline(b.quantities()) for b, _ in spread}
    out = {"seeds/settings": float(sum(len(rows["seeds"]) for _, rows in spread))}
    if len(names) != 1:
        return out
    name = names.pop()
    candidates = [(rows[f"{name}.mean"][at], rows[f"{name}.std"][at]) for _, rows in spread
                  if (at := seeds.best(rows, name)) is not None]
    if candidates:
        mean, std = (max if higher_is_better(name) else min)(candidates, key=lambda c: c[0])
        out.update({f"seeds/{name}.mean": float(mean), f"seeds/{name}.std": float(std)})
    return out


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
