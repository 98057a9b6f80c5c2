"""A progress bar for long runs, on a terminal or in Jupyter only.

The descent loop reports the rows done (`runner.descent.loop.Loop.progress`); the bar draws on
stderr when that is a terminal, waits half a second before it first draws (a short run shows nothing), redraws
at most ten times a second and erases itself when the run ends, before the run's own lines.
In a Jupyter kernel (`runner.run(...)` in a notebook) the bar is tqdm's notebook widget, with the
same delay, gone when the run ends. Piped or redirected output gets nothing extra.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

WIDTH = 24


class Bar:
    """`bar(done)` after each piece of work; `bar.close()` at the end."""

    def __init__(self, label: str, total: int, stream: TextIO, delay_s: float = 0.5, every_s: float = 0.1):
        self.label, self.total, self.stream = label, total, stream
        self.delay_s, self.every_s = delay_s, every_s
        self.started = self.drawn_at = time.perf_counter()
        self.drawn = False
        self.first: Optional[tuple[float, int]] = None

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if self.first is None:  # the rate counts from the first report: it leaves out start-up
            self.first = (now, done)
        if now - self.started < self.delay_s or (self.drawn and now - self.drawn_at < self.every_s):
            return
        rate = (done - self.first[1]) / (now - self.first[0]) if now > self.first[0] else 0.0
        self.stream.write("\r" + line(self.label, done, self.total, rate) + "\033[K")
        self.stream.flush()
        self.drawn, self.drawn_at = True, now

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def line(label: str, done: int, total: int, rate: float) -> str:
    """One line of the bar.

    >>> line("[numpy sgd lr=0.3]", 250_000, 1_000_000, 125_000.0)
    '[numpy sgd lr=0.3] ######------------------  25%  250000/1000000 epochs  125000 epochs/s  6 s left'
    """
    filled = int(WIDTH * done / total)
    left = f"  {(total - done) / rate:.0f} s left" if rate else ""
    return (f"{label} {'#' * filled}{'-' * (WIDTH - filled)} {100 * done // total:3d}%  "
            f"{done}/{total} epochs  {rate:.0f} epochs/s{left}")


class NotebookBar:
    """The same bar in Jupyter, drawn by tqdm (optuna's dependency, so always installed)."""

    def __init__(self, label: str, total: int, delay_s: float = 0.5):
        try:  # the widget needs ipywidgets; without it, tqdm's text bar (which Jupyter shows too)
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm
        except ImportError:
            from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label, unit="epoch", delay=delay_s, leave=False, mininterval=0.1)

    def __call__(self, done: int) -> None:
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def in_jupyter() -> bool:
    """Whether this process is a Jupyter kernel."""
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def for_display(label: str, total: int, stream: Optional[TextIO] = None) -> Optional[Bar | NotebookBar]:
    """A bar when `stream` (stderr by default) is a terminal or this is a Jupyter kernel, else None."""
    stream = stream or sys.stderr
    if stream.isatty():
        return Bar(label, total, stream)
    return NotebookBar(label, total) if in_jupyter() else None
