"""Mean ± std over a batch's seed axis: the spread a result has from one seed to the next.

With `seed` among a batch's keys (`'seed=range(0,10)' hydra.sweeper.batch=true`), the points of
each setting of the other keys differ only by their seed (a model's initial weights and its
mini-batch order). `aggregate` gives one row per setting: the other keys' values, the number of
seeds and of those that diverged, and for each summary quantity (the final loss; a model's final
and best training and validation loss and accuracy) its mean and its sample standard deviation
over the seeds. A batch writes it as `seeds.csv` (and `seeds.json` for MLflow's UI), logs the
best setting's as metrics (`seeds/...`), draws `seeds.png` (the mean with a band of ± one std
against the first other key); a sweep's report gathers every batch's into `report/seeds.csv` and
`report/seeds.png` on the parent run.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from runner.descent import outcomes
from runner.sweeps.points import Points

SEED = "seed"


def quantities(measure_names: Sequence[str]) -> list[str]:
    """What is averaged over seeds: the final loss, then each measure's final and best value.

    >>> quantities(["val_loss", "val_accuracy"])
    ['final_loss', 'final_val_loss', 'best_val_loss', 'final_val_accuracy', 'best_val_accuracy']
    """
    return ["final_loss", *outcomes.measure_columns(measure_names)]


def headline(names: Sequence[str]) -> str:
    """The quantity a setting is judged by: a classifier's final validation accuracy, else the
    final validation loss, else the final loss."""
    for name in ("final_val_accuracy", "final_val_loss"):
        if name in names:
            return name
    return "final_loss"


def aggregate(grid: Points, table: Mapping[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    """One row per setting of the other batched keys, in the grid's order: their values, `seeds`,
    `diverged` (how many of them diverged), and `NAME.mean`, `NAME.std` (ddof=1) for each name.
    In a pruned batch also `pruned`, how many a rung stopped: a setting with a pruned seed has
    no mean nor std (NaN), its seeds' values being of different epochs.

    >>> from runner.sweeps.points import parse
    >>> grid = parse(["lr=0.1,0.2", "seed=0,1,2"])
    >>> rows = aggregate(grid, {"final_loss": np.arange(6.0), "outcome": np.array(["converged"] * 6)}, ["final_loss"])
    >>> rows["lr"].tolist(), rows["final_loss.mean"].tolist(), rows["final_loss.std"].tolist()
    ([0.1, 0.2], [1.0, 4.0], [1.0, 1.0])
    """
    axis = grid.keys.index(SEED)
    index = np.moveaxis(np.arange(grid.count).reshape(grid.shape), axis, -1).reshape(-1, grid.shape[axis])
    rows: dict[str, np.ndarray] = {}
    for key in grid.keys:
        if key != SEED:
            values = grid.values(key)[index[:, 0]]
            rows[key] = values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values
    rows["seeds"] = np.full(len(index), grid.shape[axis])
    rows["diverged"] = (np.asarray(table["outcome"])[index] == outcomes.DIVERGED).sum(axis=1)
    pruned = np.asarray(table["outcome"])[index] == outcomes.PRUNED
    if "pruned_at" in table:
        rows["pruned"] = pruned.sum(axis=1)
    for name in names:
        values = np.where(pruned, np.nan, np.asarray(table[name], dtype=np.float64)[index])
        with np.errstate(invalid="ignore"):
            rows[f"{name}.mean"] = values.mean(axis=1)
            rows[f"{name}.std"] = values.std(axis=1, ddof=1)
    return rows


def best(rows: Mapping[str, np.ndarray], name: str) -> Optional[int]:
    """The setting whose mean `name` is best (highest accuracy, else lowest), or None when no mean is finite."""
    mean = rows[f"{name}.mean"]
    if not np.isfinite(mean).any():
        return None
    finite = np.where(np.isfinite(mean), mean, np.nan)
    return int(np.nanargmax(finite) if outcomes.higher_is_better(name) else np.nanargmin(finite))


def setting_keys(rows: Mapping[str, np.ndarray]) -> list[str]:
    """The other batched keys, as the rows hold them."""
    return list(rows)[:list(rows).index("seeds")]


def metrics(rows: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, float]:
    """The best setting by the headline quantity, as metrics: `seeds/count`, `seeds/settings`, its
    keys (`seeds/best.lr`, ...) and every quantity's mean and std there (`seeds/final_val_accuracy.mean`, ...)."""
    out = {"seeds/count": float(rows["seeds"][0]), "seeds/settings": float(len(rows["seeds"]))}
    at = best(rows, headline(names))
    if at is None:
        return out
    for key in setting_keys(rows):
        if np.ndim(rows[key][at]) == 0:
            out[f"seeds/best.{key}"] = float(rows[key][at])
    for name in names:
        for stat in ("mean", "std"):
            value = float(rows[f"{name}.{stat}"][at])
            if np.isfinite(value):
                out[f"seeds/{name}.{stat}"] = value
    return out


def describe(rows: Mapping[str, np.ndarray], names: Sequence[str]) -> str:
    """The best setting in words, e.g. 'final_val_accuracy 0.9532 ± 0.0041 over 10 seeds at lr=0.3'."""
    name, at = headline(names), best(rows, headline(names))
    seeds = int(rows["seeds"][0])
    if at is None:
        return f"{name}: no setting has a finite mean over {seeds} seeds"
    where = " ".join(f"{k.rsplit('.', 1)[-1]}={float(rows[k][at]):.6g}" for k in setting_keys(rows)
                     if np.ndim(rows[k][at]) == 0)
    return (f"{name} {rows[f'{name}.mean'][at]:.4g} ± {rows[f'{name}.std'][at]:.2g} over {seeds} seeds"
            + (f" at {where}" if where else ""))


def bands(rows: Mapping[str, np.ndarray], label: str, name: str) -> list[tuple]:
    """(label, the first other key's values, mean, std) of `name`, one line per setting of the
    keys after it (at most eight), for `plots.seed_bands_figure`; empty with no other key."""
    keys = [k for k in setting_keys(rows) if np.ndim(rows[k][0]) == 0]
    if not keys:
        return []
    first, rest = keys[0], keys[1:]
    groups: dict[tuple, list[int]] = {}
    for i in range(len(rows[first])):
        groups.setdefault(tuple(float(rows[k][i]) for k in rest), []).append(i)
    lines = []
    for values, members in list(groups.items())[:8]:
        members = np.array(members)
        suffix = " ".join(f"{k.rsplit('.', 1)[-1]}={v:.4g}" for k, v in zip(rest, values))
        lines.append((" ".join(filter(None, (label, suffix))), np.asarray(rows[first][members], np.float64),
                      rows[f"{name}.mean"][members], rows[f"{name}.std"][members]))
    return lines
