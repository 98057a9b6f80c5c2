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

from startup import compare  # bench/ is the script's folder, first on its path

# The same entry point either way; "whole" makes compose.jobs hand every job to Hydra's loader.
# A joblib worker unpickles the job's config, composed in the sweep's process either way.
VARIANTS = {
    "once a family": "import runpy, sys; sys.argv[0] = 'runner'; runpy.run_module('runner', run_name='__main__')",
    "whole": "import runpy, sys; from runner.sweeps import compose; "
             "compose.jobs = lambda loader, master, jobs: (loader.load_sweep_config(master, list(j)) for j in jobs); "
             "sys.argv[0] = 'runner'; runpy.run_module('runner', run_name='__main__')",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("overrides", nargs="*", default=["backend=numpy", "lr=range(0.01,0.31,0.01)"])
    args = parser.parse_args()
    compare(VARIANTS, args.overrides, args.repeats)


if __name__ == "__main__":
    main()
