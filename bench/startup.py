"""A runner process's own cost: `python -m runner epochs=3` (0.003 s of descent; the rest is
starting, importing, composing, recording and exiting) with the garbage collector as
`runner.process` sets it, against Python's defaults, the two taking turns in one run.

    python bench/startup.py                  # 8 of each, in a temporary folder with its own store
    python bench/startup.py --repeats 4 -- backend=torch epochs=3

Printed: each variant's median wall and CPU seconds, then the ratio runner / defaults. The
machine is shared and its load moves: run nothing else meanwhile, and read the ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The same entry point either way; "defaults" makes runner.process.own do nothing first.
VARIANTS = {
    "runner": "import runpy, sys; sys.argv[0] = 'runner'; runpy.run_module('runner', run_name='__main__')",
    "defaults": "import runpy, sys; import runner.process as p; p.own = lambda: None; sys.argv[0] = 'runner'; "
                "runpy.run_module('runner', run_name='__main__')",
}


def timed(code: str, overrides: list[str], folder: Path) -> tuple[float, float]:
    """Wall and CPU seconds (the process and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *overrides], cwd=folder, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def compare(variants: dict[str, str], overrides: list[str], repeats: int) -> None:
    """Each variant's code run with `overrides` `repeats` times, taking turns, in a temporary folder
    with its own store; prints each one's median wall and CPU seconds, and the first against the
    second as ratios."""
    folder = Path(tempfile.mkdtemp(prefix="bench"))
    first, second = variants
    try:
        timed(variants[first], ["epochs=1"], folder)  # the store's migrations, once, uncounted
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, code in variants.items():
                times[name].append(timed(code, overrides, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    median = {name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
              for name, runs in times.items()}
    print(f"python -m runner {' '.join(overrides)}, {repeats} runs each (median)")
    for name, (wall, cpu) in median.items():
        print(f"  {name:13}  wall {wall:.2f} s  CPU {cpu:.2f} s")
    (wall, cpu), (base_wall, base_cpu) = median[first], median[second]
    print(f"  {first} / {second}: wall {wall / base_wall:.2f}, CPU {cpu / base_cpu:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("overrides", nargs="*", default=["epochs=3"])
    args = parser.parse_args()
    compare(VARIANTS, args.overrides, args.repeats)


if __name__ == "__main__":
    main()
