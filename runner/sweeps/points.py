"""The points of a batched sweep: which keys a batch may vary, and each point's values.

With `hydra.sweeper.batch=true` the runner's sweeper runs the sweep's values of these keys as
one job per group of the other keys (`split`): they change numbers, not the program, so one
descent over a leading point axis computes them all. The job gets the batched keys' sweeps as
`batch.sweep` (e.g. `["lr=range(0.001,1.2,0.001)", "optimizer.momentum=0.5,0.9"]`), and
`Points` turns that back into the values of every point, in the order Hydra's grid would run
them (the first key slowest).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from hydra.core.override_parser.overrides_parser import OverridesParser

from runner.descent.loop import PIECE_BYTES
from runner.descent.optimizers import HYPERPARAMETERS
from runner.descent.schedules import PARAMETERS as SCHEDULE_PARAMETERS
from runner.errors import ConfigError

# Keys whose values a batch may vary, beside any constant of the loss (`loss.params.NAME`).
# `seed` draws a model's initial weights and each epoch's mini-batch order, per point; for a
# closed-form loss it changes nothing (the descent draws nothing).
BATCHABLE = (*(h.key for h in HYPERPARAMETERS.values()), *(p.key for p in SCHEDULE_PARAMETERS.values()), "seed",
             "x_start", "model.l2")
LOSS_CONSTANT = "loss.params."
# Those a batch of models may vary: the rules' hyperparameters, the seed and the weight decay.
MODEL_BATCHABLE = tuple(key for key in BATCHABLE if key != "x_start")


def batchable(key: str) -> bool:
    """
    >>> batchable("lr"), batchable("loss.params.a"), batchable("epochs")
    (True, True, False)
    """
    return key in BATCHABLE or (key.startswith(LOSS_CONSTANT) and key.count(".") == 2)


ALLOWED = f"{', '.join(BATCHABLE)} and {LOSS_CONSTANT}NAME"


@dataclass(frozen=True)
class Points:
    """The points of a batch: the grid of the batched keys' values."""

    sweeps: tuple[str, ...]  # as given, e.g. "lr=range(0.001,1.2,0.001)"
    keys: tuple[str, ...]
    axes: tuple[np.ndarray, ...]  # each key's values in sweep order; x_start: (values, coordinates)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(axis) for axis in self.axes)

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @functools.cached_property
    def _index(self) -> tuple[np.ndarray, ...]:
        return np.unravel_index(np.arange(self.count), self.shape)

    def values(self, key: str) -> np.ndarray:
        """The key's value at every point: (points,), or (points, coordinates) for x_start."""
        j = self.keys.index(key)
        return self.axes[j][self._index[j]]

    def all_values(self) -> dict[str, np.ndarray]:
        return {key: self.values(key) for key in self.keys}

    def overrides(self, point: int) -> list[str]:
        """`key=value` for each batched key at `point`, as the command line would set it alone.

        >>> parse(["lr=0.1,0.2", "x_start=[1,2],[3,4]"]).overrides(3)
        ['lr=0.2', 'x_start=[3.0,4.0]']
        """
        index = np.unravel_index(point, self.shape)
        return [f"{key}={_text(axis[i])}" for key, axis, i in zip(self.keys, self.axes, index)]

    def command_lines(self, prefix: str, rows: Any) -> list[str]:
        """For the points `rows` (a slice or indices): `prefix` and the point's overrides, the
        command-line overrides that rerun it alone.

        >>> parse(["lr=0.1,0.2"]).command_lines("backend=tf", slice(None))
        ['backend=tf lr=0.1', 'backend=tf lr=0.2']
        """
        columns = [[f"{key}={_text(v)}" for v in self.values(key)[rows]] for key in self.keys]
        return [" ".join(filter(None, (prefix, *parts))) for parts in zip(*columns)]

    def name(self) -> str:
        """The batched keys and the grid's size, e.g. 'lr×momentum [200×200]'.

        >>> parse(["lr=0.1,0.2,0.3", "optimizer.momentum=0,0.9"]).name()
        'lr×momentum [3×2]'
        """
        return f"{'×'.join(k.rsplit('.', 1)[-1] for k in self.keys)} [{'×'.join(map(str, self.shape))}]"


def _text(value: Any) -> str:
    if isinstance(value, np.integer):
        return str(int(value))
    if np.ndim(value):
        return "[" + ",".join(repr(float(v)) for v in value) + "]"
    return repr(float(value))


def parse(sweeps: Sequence[str]) -> Points:
    """The points of `batch.sweep`, each value checked to be a number (a list of numbers for
    x_start); a ConfigError names the key and the value otherwise."""
    parser = OverridesParser.create()
    keys, axes = [], []
    for text in sweeps:
        try:
            override = parser.parse_override(text)
        except Exception as error:  # Hydra's own message for a malformed sweep
            raise ConfigError(f"batch.sweep: {text!r} is not a key=sweep override ({error})") from None
        key = override.get_key_element()
        if not batchable(key):
            raise ConfigError(f"batch.sweep: {key} cannot be batched; allowed: {ALLOWED}")
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        keys.append(key)
        axes.append(_numbers(key, values))
    return Points(tuple(sweeps), tuple(keys), tuple(axes))


def _numbers(key: str, values: list) -> np.ndarray:
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if key == "seed":
        for v in values:
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ConfigError(f"seed={v} is not allowed in a batch: a seed is an integer >= 0")
        return np.array(values, dtype=np.int64)
    for v in values:
        if not (number(v) or key == "x_start" and isinstance(v, list) and v and all(map(number, v))):
            what = "a number or a list of numbers" if key == "x_start" else "a number"
            raise ConfigError(f"{key}={v} is not allowed in a batch: {key} must be {what}")
    if key == "x_start":
        lengths = {len(v) if isinstance(v, list) else 1 for v in values}
        if len(lengths) > 1:
            raise ConfigError(f"x_start={','.join(map(str, values))} is not allowed in a batch: every "
                              f"x_start of a batch must have the same number of coordinates")
        return np.array([v if isinstance(v, list) else [v] for v in values], dtype=np.float64)
    return np.array(values, dtype=np.float64)


def split(overrides: Sequence[Any], setting: Any) -> tuple[list[Any], list[Any]]:
    """The sweep's overrides split into those that make groups (jobs) and those batched within a
    group. `setting` is `hydra.sweeper.batch`: true batches every sweep of a batchable key whose
    values are numbers; a list batches exactly those keys (each must be batchable).

    >>> given = OverridesParser.create().parse_overrides(["lr=0.1,0.2", "backend=numpy,tf", "lr=0.3,0.4"])
    >>> [[o.input_line for o in part] for part in split(given, True)]
    [['backend=numpy,tf'], ['lr=0.3,0.4']]
    """
    if setting is True:
        wanted = None
    else:
        wanted = [str(key) for key in setting]
        for key in wanted:
            if not batchable(key):
                raise ConfigError(f"hydra.sweeper.batch={list(wanted)}: {key} cannot be batched "
                                  f"(it changes the program); allowed: {ALLOWED}")
    grouped, batched = [], []
    # A key given twice (a preset's hydra.sweeper.params, then the command line) takes its last
    # value in its first place, as Hydra's own sweeper does.
    last = {override.get_key_element(): override for override in overrides}
    for override in (last[k] for k in dict.fromkeys(o.get_key_element() for o in overrides)):
        key = override.get_key_element()
        chosen = (wanted is None and override.is_sweep_override() and batchable(key)) or (
            wanted is not None and key in wanted)
        if chosen:
            values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
            _numbers(key, values)
            batched.append(override)
        else:
            grouped.append(override)
    return grouped, batched


def sweep_text(override: Any) -> str:
    """`key=sweep` as typed (or as a preset's params give it)."""
    return override.input_line if override.input_line else f"{override.get_key_element()}={override.value()}"


def job_overrides(batched: Sequence[Any]) -> list[str]:
    """What a group's job adds to its overrides: each batched key at its first value (so that
    the composed config holds a value of each) and `batch.sweep` with the sweeps.

    >>> from hydra.core.override_parser.overrides_parser import OverridesParser
    >>> job_overrides(OverridesParser.create().parse_overrides(["lr=range(0.1,1,0.1)"]))
    ['lr=0.1', 'batch.sweep=["lr=range(0.1,1,0.1)"]']
    """
    firsts = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator())) if o.is_sweep_override() else o.get_value_element_as_str()}"
              for o in batched]
    quoted = ",".join('"' + sweep_text(o).replace("\\", "\\\\").replace('"', '\\"') + '"' for o in batched)
    return [*firsts, f"batch.sweep=[{quoted}]"]


def memory_needed(points: int, coordinates: int, itemsize: int, keep_bytes: Optional[int]) -> int:
    """Bytes a batch holds at its peak, about: per coordinate of every point x, the gradient, the
    rule's state and the temporaries of a step (10 arrays), per point its start and summary (12
    numbers, its x_start and final x, float64), three pieces of rows in flight, and the
    trajectories kept."""
    per_point = 10 * coordinates * itemsize + (12 + 2 * coordinates) * 8
    return points * per_point + 3 * PIECE_BYTES + (keep_bytes or 0)


def memory_available() -> Optional[int]:
    """The memory this machine has available now (Linux: MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
