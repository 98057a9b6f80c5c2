"""Tables, written and read back: a run's trajectory.csv, a batch's points.csv, a sweep's
report/runs.csv, and the aligned text the terminal shows of any of them.

Every number is written in full (`repr`), so a table reads back as the same floats; blank cells
are "none" (no step within tolerance, no divergence, no rate, a failed run's result).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

CHUNK_ROWS = 50_000  # a table is written this many rows at a time: a million rows of text take GBs
# Integer columns in which -1 means none, written blank.
BLANK_BELOW_ZERO = ("steps_to_tolerance", "diverged_at", "pruned_at", "trajectory")

# How the terminal heads a column, where its name is not already short and plain.
HEADERS = {"final_x": "final x", "final_loss": "final loss", "steps_to_tolerance": "steps", "wall_time_s": "wall s",
           "final_grad_norm": "final |grad|", "epochs_run": "epochs", "diverged_at": "diverged at",
           "pruned_at": "pruned at",
           "spectral_radius": "spectral radius", "trajectory": "kept as", "best_final_loss": "best final loss",
           "fastest_rate": "fastest rate", "largest_stable_lr": "stable lr", "largest_stable_lr_theory": "theory",
           "rate_vs_theory": "rate vs theory"}


def minimised(params: Mapping[str, str]) -> str:
    """What a run minimised, as a report's loss column says it: its loss, or a model on its data.

    >>> minimised({"loss": "square"}), minimised({"model": "logistic", "data": "digits"})
    ('square', 'logistic on digits')
    """
    if "model" in params and "data" in params:
        return f"{params['model']} on {params['data']}"
    return params.get("loss", "")


def write_series(path: Path, columns: Mapping[str, np.ndarray]) -> Path:
    """Series of equal length as CSV, one row per step: `step`, then a column per series."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", *columns])
        for step, row in enumerate(zip(*(series.tolist() for series in columns.values()))):
            writer.writerow([step, *row])
    return path


def read_series(path: Optional[Path]) -> dict[str, np.ndarray]:
    """`write_series`' file back as a float64 series per column; none for no file."""
    if path is None:
        return {}
    with path.open() as file:
        reader = csv.reader(file)
        header = next(reader)
        values = np.array([[float(v) for v in row] for row in reader], dtype=np.float64)
    return {name: values[:, i] if len(values) else np.empty(0) for i, name in enumerate(header)}


def write_table(path: Path, table: Mapping[str, Any]) -> Path:
    """A column per name, a row per entry, as CSV (`text_column` says how each cell is written).
    A column may be anything that can be sliced into a list or array of its rows."""
    names = list(table)
    count = len(next(iter(table.values())))
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(names)
        for start in range(0, count, CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            writer.writerows(zip(*(text_column(name, table[name][rows]) for name in names)))
    return path


def read_table(path: Path) -> dict[str, list[str]]:
    """`write_table`'s file back as text columns."""
    with path.open(newline="") as file:
        reader = csv.reader(file)
        names = next(reader)
        rows = list(reader)
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def text_column(name: str, values: Any) -> list[str]:
    """A column's cells: floats in full (NaN blank), -1 blank where it means none, a vector as [a, b].

    >>> text_column("rate", np.array([0.4, np.nan])), text_column("diverged_at", np.array([-1, 3]))
    (['0.4', ''], ['', '3'])
    """
    if isinstance(values, list) or (isinstance(values, np.ndarray) and values.dtype.kind in "US"):
        return [str(v) for v in values]
    values = np.asarray(values)
    if values.ndim == 2:
        return ["[" + ", ".join(repr(float(v)) for v in row) + "]" for row in values]
    if values.dtype.kind in "iu":
        blank = name in BLANK_BELOW_ZERO
        return ["" if blank and v < 0 else str(v) for v in values.tolist()]
    return ["" if math.isnan(v) else repr(v) for v in values.astype(np.float64).tolist()]


def json_column(values: Any) -> list:
    """A column as JSON values (NaN and infinities as null), as MLflow's log_table takes it."""
    if isinstance(values, list) or (isinstance(values, np.ndarray) and values.dtype.kind in "US"):
        return [str(v) for v in values]
    values = np.asarray(values)
    if values.ndim == 2:
        return [[float(v) for v in row] for row in values]
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values.tolist()]


def number(text: str) -> object:
    """A cell read back: a float where it is one, else the text.

    >>> number("0.3"), number("sgd")
    (0.3, 'sgd')
    """
    try:
        return float(text)
    except ValueError:
        return text


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: Optional[Mapping] = None) -> str:
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

    names = [(HEADERS if headers is None else headers).get(c, c) for c in columns]
    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(names)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(names, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
