"""A sweep's jobs composed once a family (`runner/sweeps/compose.py`) against each composed whole
by Hydra, the same command both ways, taking turns in one run.

    python bench/sweep.py                                   # 4 of each: a 30-job numpy lr sweep
    python bench/sweep.py --repeats 2 -- hydra/launcher=joblib 'lr=range(0.01,0.41,0.01)'

Printed: each variant's median wall and CPU seconds (the command and its worker processes), then
the ratio once a family / whole. The machine is shared and its load moves: run nothing else
meanwhile, and read the ratio.
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

# The same entry point either way; "whole" makes compose.jobs hand every job to Hydra's loader.
# A joblib worker unpickles the job's config, composed in the sweep's process either way.
VARIANTS = {
    "once a family": "import runpy, sys; sys.argv[0] = 'runner'; runpy.run_module('runner', run_name='__main__')",
    "whole": "import runpy, sys; from runner.sweeps import compose; "
             "compose.jobs = lambda loader, master, jobs: (loader.load_sweep_config(master, list(j)) for j in jobs); "
             "sys.argv[0] = 'runner'; runpy.run_module('runner', run_name='__main__')",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("overrides", nargs="*", default=["backend=numpy", "lr=range(0.01,0.31,0.01)"])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sweep"))
    try:
        timed(VARIANTS["once a family"], ["epochs=1"], folder)  # the store's migrations, once, uncounted
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
        for _ in range(args.repeats):
            for name, code in VARIANTS.items():
                times[name].append(timed(code, args.overrides, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    median = {name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
              for name, runs in times.items()}
    print(f"python -m runner {' '.join(args.overrides)}, {args.repeats} runs each (median)")
    for name, (wall, cpu) in median.items():
        print(f"  {name:13}  wall {wall:.2f} s  CPU {cpu:.2f} s")
    (wall, cpu), (base_wall, base_cpu) = median["once a family"], median["whole"]
    print(f"  once a family / whole: wall {wall / base_wall:.2f}, CPU {cpu / base_cpu:.2f}")


if __name__ == "__main__":
    main()
