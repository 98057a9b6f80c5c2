"""The runner's benchmark: every figure a ratio measured in this one run, printed as markdown.

    python bench/run.py            # about 10 minutes on 2 cores
    python bench/run.py --quick    # fewer repeats, for a smoke test

1. Per-step cost on y = x^2 (20 000 epochs after a warm-up), each framework in a process of
   its own: the article's code (the variable re-created every step) against the runner's engine,
   and for PyTorch a bare loop that keeps one `requires_grad` tensor alive.
2. Start-up: `python -m runner backend=numpy` against a floor script that imports hydra,
   mlflow, numpy and matplotlib, creates one MLflow run, logs the same metrics in one batch,
   saves the same figure and ends the run.
3. Sweep size: a 30-job numpy lr sweep in one process against the floor doing 30 runs.
4. Epoch count: one numpy run at 10^3, 10^4 and 10^5 epochs.
5. Dimension: microseconds per step and effective GB/s (one read and one write of x a step)
   for dim = 10^4 .. 10^7 per engine, against a plain NumPy copy of x measured in this run.
6. Batched sweeps: a 10,000-point lr sweep of y = x^2 (200 epochs) per backend as one batch,
   whole command, against one single run of the same backend; the same per point against a
   per-job grid (100 jobs, extrapolated); each engine's nanoseconds per point-step at 10,000
   points; the 40,000-point `experiment=momentum_map` on numpy; the peak memory of a
   10^6-point batch.

Timings are wall-clock medians; these machines are shared, so compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 20_000
LR = 1e-4  # x stays a normal float for 20 000 steps: no subnormal slow-down in any framework


# --- per-step costs, one framework per process ---------------------------------------------------

def article_gd(dfunc, epochs):
    """The article's GD(x_start, df, epochs, lr): it keeps x only."""
    import numpy as np

    xs = np.zeros(epochs + 1)
    x = 5.0
    xs[0] = x
    for i in range(epochs):
        x += -dfunc(x) * LR
        xs[i + 1] = x
    return xs


def article_numpy(epochs):
    return article_gd(lambda x: 2 * x, epochs)


def article_tf(epochs):
    import tensorflow as tf

    def dfunc(x_value):  # a new Variable and tape every step, as the article writes it
        x = tf.Variable(x_value, dtype=tf.float32)
        with tf.GradientTape() as g:
            y = x**2
        return g.gradient(y, x).numpy()

    return article_gd(dfunc, epochs)


def article_torch(epochs):
    import torch

    def dfunc(x_value):  # a new tensor every step, as the article writes it
        x = torch.tensor(float(x_value), requires_grad=True)
        y = x**2
        y.backward()
        return x.grad

    return article_gd(dfunc, epochs)


def bare_torch(epochs):
    import torch

    x = torch.tensor(5.0, requires_grad=True)
    xs = torch.empty(epochs + 1)
    for i in range(epochs + 1):
        y = x**2
        y.backward()
        with torch.no_grad():
            xs[i] = x
            x -= LR * x.grad
        x.grad = None
    return xs


def engine_runner(backend):
    from runner import engines

    descend_square = square_descent(engines.load(backend))

    def run(epochs):
        return descend_square([5.0], epochs, LR)
    return run


def square_descent(engine):
    """`descend_square(x_start, epochs, lr)`: the runner's descent of y = x^2 by SGD in float32 on
    the CPU, its other settings as conf/config.yaml sets them; x_start has a row per point (lr a
    number, or one per point). The loss and the defaults are read here, once, outside the timings."""
    import numpy as np

    from runner import engines, schema
    from runner.descent.loop import Loop, descend
    from runner.descent.optimizers import Optimizer
    from runner.problems.expressions import parse_expression
    from runner.problems.losses import Loss

    square = Loss("square", parse_expression("loss.value", "x**2"), (parse_expression("loss.grad", "2*x"),),
                  minimiser=(parse_expression("loss.minimiser", "0"),))
    defaults = schema.defaults()
    device = engine.resolve_device("cpu")

    def descend_square(x_start, epochs, lr):
        problem = engines.Problem(square, np.asarray(x_start, dtype=np.float64), Optimizer("sgd", lr), "float32",
                                  device, defaults.stop.diverge_above, defaults.seed)
        return descend(problem, engine, Loop(epochs, defaults.stop.tolerance))
    return descend_square


ARTICLE = {"numpy": article_numpy, "tf": article_tf, "torch": article_torch}


def per_step(function, epochs, repeats):
    function(min(epochs, 200))  # warm-up: imports, tracing, compilation
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(epochs)
        times.append(time.perf_counter() - started)
    return statistics.median(times) / epochs * 1e6


DIMS = (10_000, 100_000, 1_000_000, 10_000_000)


def dim_step(backend, dim, repeats):
    """Microseconds per step at `dim` coordinates: (t(2E) - t(E)) / E cancels the fixed costs
    of a run (tracing, compiling, allocating)."""
    import numpy as np

    from runner import engines

    descend_square = square_descent(engines.load(backend))
    epochs = int(max(10, min(2000, 2e8 // dim)))

    def run(n):
        started = time.perf_counter()
        descend_square(np.full((1, dim), 5.0), n, LR)
        return time.perf_counter() - started

    run(epochs)  # warm-up
    # A difference at or below zero is noise (compiling varies more than the steps cost): n/a.
    difference = statistics.median(run(2 * epochs) - run(epochs) for _ in range(repeats))
    return difference / epochs * 1e6 if difference > 0 else float("nan")


def copy_floor(dim, repeats=5):
    """Microseconds for one read and one write of `dim` float32 values by a plain NumPy copy."""
    import numpy as np

    a, b = np.full(dim, 5.0, np.float32), np.empty(dim, np.float32)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for _ in range(10):
            np.copyto(b, a)
        times.append((time.perf_counter() - started) / 10)
    return min(times[1:]) * 1e6


BATCH_POINTS = 10_000
BATCH_EPOCHS = 200


def point_step(backend, repeats, epochs=1000):
    """Nanoseconds per point-step of a batch of BATCH_POINTS learning rates on y = x^2, float32,
    the engine and runner.descent.loop's tally together: (t(2E) - t(E)) / E / points, so tracing and
    compiling cancel out; E = 1000, for a difference well above the machine's noise."""
    import numpy as np

    from runner import engines

    descend_square = square_descent(engines.load(backend))
    lr = np.linspace(1e-4, 1.0, BATCH_POINTS)

    def run(epochs):
        started = time.perf_counter()
        descend_square(np.full(BATCH_POINTS, 5.0), epochs, lr)
        return time.perf_counter() - started

    run(epochs)  # warm-up
    differences = [max(1e-9, run(2 * epochs) - run(epochs)) for _ in range(repeats)]
    return statistics.median(differences) / epochs / BATCH_POINTS * 1e9


def measure_engine(backend, repeats):
    """Runs in a process of its own: microseconds per step of each variant."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = {"engine": per_step(engine_runner(backend), EPOCHS, repeats),
              "dims": {str(dim): dim_step(backend, dim, repeats) for dim in DIMS},
              "point_step_ns": point_step(backend, repeats)}
    if backend in ARTICLE:
        # The article's TensorFlow code takes over a millisecond a step: 2 000 steps suffice.
        result["article"] = per_step(ARTICLE[backend], EPOCHS if backend != "tf" else 2_000, repeats)
    if backend == "torch":
        result["bare"] = per_step(bare_torch, EPOCHS, repeats)
    return result


# --- whole commands -----------------------------------------------------------------------------

FLOOR = r"""
import sys, time
import hydra, mlflow, numpy as np
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("floor") or None
experiment_id = experiment.experiment_id if experiment else client.create_experiment("floor")
for job in range(int(sys.argv[2])):
    run = client.create_run(experiment_id).info.run_id
    x = 5.0 * 0.4 ** np.arange(16)
    now = int(time.time() * 1000)
    client.log_batch(run, metrics=[Metric(name, float(v), now, k) for name, series in
                                   (("x", x), ("loss", x**2), ("grad", 2 * x)) for k, v in enumerate(series)])
    figure = Figure(); axes = figure.subplots()
    curve = np.linspace(-6, 6, 400); axes.plot(curve, curve**2); axes.plot(x, x**2, "ro-")
    figure.savefig(f"floor{job}.png")
    client.log_artifact(run, f"floor{job}.png")
    client.set_terminated(run)
"""


def timed(command, cwd, env, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_commands(repeats):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
        (folder / "floor.py").write_text(FLOOR)
        # Create and migrate the store once, so that no timing below includes that.
        subprocess.run([sys.executable, "floor.py", uri, "1"], cwd=folder, env=env, check=True, capture_output=True)
        runner = [sys.executable, "-m", "runner"]
        out = {
            "startup_runner": timed([*runner, "backend=numpy"], folder, env, repeats),
            "startup_floor": timed([sys.executable, "floor.py", uri, "1"], folder, env, repeats),
            "sweep_runner": timed([*runner, "backend=numpy", "lr=range(0.01,0.31,0.01)"], folder, env, max(1, repeats // 2)),
            "sweep_floor": timed([sys.executable, "floor.py", uri, "30"], folder, env, max(1, repeats // 2)),
        }
        for epochs in (1_000, 10_000, 100_000):
            out[f"epochs_{epochs}"] = timed([*runner, "backend=numpy", f"epochs={epochs}", "lr=0.0001"],
                                            folder, env, repeats)
    return out


PEAK_MEMORY = r"""
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def measure_batches(backends, repeats):
    """Whole commands of the batched sweeps, each against its comparison, in one store."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
        runner = [sys.executable, "-m", "runner", f"epochs={BATCH_EPOCHS}"]
        subprocess.run([*runner, "epochs=1"], cwd=folder, env=env, check=True, capture_output=True)  # the store
        lrs = f"lr=range(0.0001,{1 + 0.5e-4},0.0001)"  # 10,000 learning rates
        out = {"backends": {}}
        for backend in backends:
            out["backends"][backend] = {
                "single": timed([*runner, f"backend={backend}"], folder, env, repeats),
                "batch": timed([*runner, f"backend={backend}", lrs, "hydra.sweeper.batch=true"], folder, env, repeats)}
        out["grid_100"] = timed([*runner, "backend=numpy", "lr=range(0.01,1.005,0.01)"], folder, env, 1)
        out["map"] = timed([sys.executable, "-m", "runner", "experiment=momentum_map",
                            "hydra.sweeper.params.backend=numpy", f"mlflow.tracking_uri={uri}"], folder, env, repeats)
        million = [*runner, "backend=numpy", "lr=range(0.000001,1.0000005,0.000001)", "hydra.sweeper.batch=true"]
        started = time.perf_counter()
        peak = subprocess.run([sys.executable, "-c", PEAK_MEMORY, *million], cwd=folder, env=env, check=True,
                              capture_output=True, text=True).stdout
        out["million"] = {"seconds": time.perf_counter() - started, "peak_bytes": int(peak.split()[-1])}
    return out


def batch_table(engines_result, batches):
    numpy_ns = engines_result.get("numpy", {}).get("point_step_ns")
    lines = [f"| {BATCH_POINTS:,}-point lr sweep, y = x², {BATCH_EPOCHS} epochs | one single run (s) | "
             "one batch of all points (s) | batch / single run | target ≤ 2 | ns per point-step (engine) | "
             "target |", "|---|---|---|---|---|---|---|"]
    for backend, r in batches["backends"].items():
        ratio = r["batch"] / r["single"]
        ns = engines_result.get(backend, {}).get("point_step_ns")
        if backend == "numpy":
            target = f"≤ 40: {'met' if ns is not None and ns <= 40 else 'MISSED'}"
        else:
            target = f"≤ numpy: {'met' if ns is not None and numpy_ns is not None and ns <= numpy_ns else 'MISSED'}"
        lines.append(f"| {backend} | {r['single']:.2f} | {r['batch']:.2f} | {ratio:.2f} | "
                     f"{'met' if ratio <= 2 else 'MISSED'} | {'–' if ns is None else f'{ns:.3g}'} | {target} |")
    per_job = batches["grid_100"] / 100
    per_point = batches["backends"]["numpy"]["batch"] / BATCH_POINTS
    million = batches["million"]
    lines += ["", "| batched sweeps | measured | target |", "|---|---|---|",
              f"| numpy, per point: per-job grid (100 jobs, {per_job:.3f} s a job) against the batch "
              f"({per_point * 1e6:.0f} µs a point) | {per_job / per_point:.0f}× faster | ≥ 500×: "
              f"{'met' if per_job / per_point >= 500 else 'MISSED'} |",
              f"| `experiment=momentum_map` on numpy (40,000 points, 500 epochs), whole command | {batches['map']:.1f} s | "
              f"< 30 s: {'met' if batches['map'] < 30 else 'MISSED'} |",
              f"| 10^6 points of y = x², 200 epochs, numpy, whole command: peak memory | "
              f"{million['peak_bytes'] / 2**30:.2f} GB in {million['seconds']:.0f} s | ≤ 4 GB: "
              f"{'met' if million['peak_bytes'] <= 4 * 2**30 else 'MISSED'} |"]
    return "\n".join(lines)


def dim_table(engines_result):
    floors = {dim: copy_floor(dim) for dim in DIMS}
    names = sorted(engines_result)
    lines = ["| dim | floor: NumPy copy, µs (GB/s) | " + " | ".join(f"{n} µs/step (GB/s)" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for dim in DIMS:
        gb = lambda us: 2 * 4 * dim / us / 1e3  # one read + one write of float32 x, per microsecond
        us = {n: engines_result[n]["dims"][str(dim)] for n in names}
        cells = [f"{us[n]:.4g} ({gb(us[n]):.3g})" if us[n] == us[n] else "n/a: t(2E) ≤ t(E) in this run" for n in names]
        lines.append(f"| 10^{len(str(dim)) - 1} | {floors[dim]:.4g} ({gb(floors[dim]):.3g}) | " + " | ".join(cells) + " |")
    top = DIMS[-1]
    verdicts = []
    for n in ("tf", "jax"):
        if n in engines_result:
            ratio = floors[top] / engines_result[n]["dims"][str(top)]
            verdicts.append(f"{n} reaches {ratio:.2f} of the floor's bandwidth at 10^7 "
                            f"(target ≥ 0.5: {'met' if ratio >= 0.5 else 'MISSED'})")
    return "\n".join(lines + ["", "; ".join(verdicts) + "."])


def table(engines_result, commands, quick):
    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}; {'quick run' if quick else 'full run'}.", ""]
    lines += ["| per step, y = x², float32, 20 000 epochs | article's code (µs) | runner (µs) | speed-up | target |",
              "|---|---|---|---|---|"]
    targets = {"numpy": ("runner ≤ 1.5× article", lambda a, e: e <= 1.5 * a),
               "tf": ("≥ 30× faster", lambda a, e: a / e >= 30),
               "torch": ("faster than article, ≤ bare loop", None)}
    for backend, r in engines_result.items():
        article = r.get("article")
        if article is None:
            lines.append(f"| {backend} | – | {r['engine']:.3g} | – | reported |")
            continue
        target, check = targets[backend]
        if backend == "torch":
            met = r["engine"] < article and r["engine"] <= r["bare"]
            target = f"{target} (bare loop {r['bare']:.3g} µs)"
        else:
            met = check(article, r["engine"])
        lines.append(f"| {backend} | {article:.3g} | {r['engine']:.3g} | {article / r['engine']:.3g}× | "
                     f"{target}: {'met' if met else 'MISSED'} |")
    c = commands
    lines += ["", "| whole command | runner (s) | floor (s) | ratio | target |", "|---|---|---|---|---|",
              f"| one `backend=numpy` run | {c['startup_runner']:.2f} | {c['startup_floor']:.2f} | "
              f"{c['startup_runner'] / c['startup_floor']:.2f} | ≤ 1.3: {'met' if c['startup_runner'] <= 1.3 * c['startup_floor'] else 'MISSED'} |",
              f"| 30-job numpy lr sweep, per job | {c['sweep_runner'] / 30:.3f} | {c['sweep_floor'] / 30:.3f} | "
              f"{c['sweep_runner'] / c['sweep_floor']:.2f} | ≤ 1.25: {'met' if c['sweep_runner'] <= 1.25 * c['sweep_floor'] else 'MISSED'} |"]
    t3, t4, t5 = c["epochs_1000"], c["epochs_10000"], c["epochs_100000"]
    lines += ["", "| epochs | 10³ | 10⁴ | 10⁵ | growth 10⁴→10⁵ |", "|---|---|---|---|---|",
              f"| one numpy run (s) | {t3:.2f} | {t4:.2f} | {t5:.2f} | {t5 / t4:.2f}× for 10× the epochs: "
              f"{'no faster than linear' if t5 / t4 <= 10 and t4 / t3 <= 10 else 'FASTER THAN LINEAR'} |"]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # internal: measure one framework
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    if args.engine:
        print(json.dumps(measure_engine(args.engine, repeats)))
        return
    backends = sorted(p.stem for p in (REPO / "conf" / "backend").glob("*.yaml"))
    engines_result = {}
    for backend in backends:
        done = subprocess.run([sys.executable, __file__, "--engine", backend, *(["--quick"] if args.quick else [])],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode == 0:
            engines_result[backend] = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            print(f"{backend}: not measured ({done.stderr.strip().splitlines()[-1]})", file=sys.stderr)
    print(table(engines_result, measure_commands(repeats), args.quick))
    print()
    print(dim_table(engines_result))
    print()
    print(batch_table(engines_result, measure_batches(list(engines_result), repeats)))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
