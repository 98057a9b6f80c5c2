"""The test suite's time here against another commit's, both measured in one run, one after the
other, on this machine.

    python bench/suite.py --base a870948              # make test's pytest, at a870948 then at HEAD
    python bench/suite.py --base HEAD~3 --fast        # make test-fast's
    python bench/suite.py --base a870948 --head main --repeats 2

Each commit runs from a copy of its files (`git archive`, so uncommitted changes are left out)
with this checkout's environment (.venv's Python; .venv-ray linked in for the Ray tests), the
commits taking turns when repeated. Printed for each run: wall and CPU seconds (the pytest
process and every process it waited for: workers, jobs, services) and its tests' counts; then
the ratio of the fastest runs, here / base. The machine is shared and its load moves: run
nothing else meanwhile, and read the ratio rather than the seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The Makefile's `test` and `test-fast` targets, without their environment set-up.
SUITES = {"make test": ["-n", "auto", "--dist", "loadgroup"], "make test-fast": ["-m", "not slow and not parity", "-n", "auto"]}


def copy_of(commit: str, folder: Path) -> Path:
    """The files of `commit` in `folder` (made here), with this checkout's Ray environment."""
    folder.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    if (REPO / ".venv-ray").is_dir():
        (folder / ".venv-ray").symlink_to(REPO / ".venv-ray")
    return folder


def counts(summary: str) -> dict[str, int]:
    """pytest's last line -> {"passed": 760, "failed": 0, "skipped": 13, "error": 0}."""
    found = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    return {word: found.get(word, 0) for word in ("passed", "failed", "skipped", "error")}


def run_suite(folder: Path, arguments: list[str]) -> tuple[float, float, dict[str, int], str]:
    """pytest in `folder`: wall seconds, CPU seconds of it and its waited-for descendants, counts,
    and its last line."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    # PYTHONPATH: every process the tests start (jobs, workers, a notebook's kernel) imports the
    # copy's runner, not the one this checkout's editable install points at
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *arguments],
                            cwd=folder, env={**os.environ, "PYTHONPATH": str(folder)}, capture_output=True, text=True)
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = result.stdout.strip().splitlines()
    last = lines[-1] if lines else result.stderr.strip()[-300:]
    return wall, cpu, counts(last), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with (a hash, tag or branch)")
    parser.add_argument("--head", default="HEAD", help="the commit measured against it (default HEAD)")
    parser.add_argument("--fast", action="store_true", help="make test-fast's tests instead of make test's")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each commit, taking turns")
    args = parser.parse_args()
    suite = "make test-fast" if args.fast else "make test"
    commits = {"base": args.base, "here": args.head}
    for commit in commits.values():
        subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
    print(f"{suite}: pytest {' '.join(SUITES[suite])}, {sys.executable}")
    print(f"{'':6} {'commit':>12} {'wall s':>8} {'CPU s':>8} {'passed':>7} {'skipped':>8} {'failed':>7}")
    fastest: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="runner-suite-") as scratch:
        folders = {side: copy_of(commit, Path(scratch) / side) for side, commit in commits.items()}
        for _ in range(args.repeats):
            for side, folder in folders.items():
                wall, cpu, tests, last = run_suite(folder, SUITES[suite])
                fastest[side] = min(fastest.get(side, wall), wall)
                failed = tests["failed"] + tests["error"]
                print(f"{side:6} {commits[side]:>12} {wall:8.1f} {cpu:8.1f} {tests['passed']:7d} {tests['skipped']:8d} "
                      f"{failed:7d}", flush=True)
                if failed or not tests["passed"]:
                    print(f"       {last}")
    print(f"here / base, the fastest of each: {fastest['here'] / fastest['base']:.2f}")


if __name__ == "__main__":
    main()
