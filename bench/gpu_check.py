"""GPU check: torch and jax on `cuda` give the CPU's trajectory, for every optimizer and loss;
then the dimension sweep on the GPU, by the engines alone and then through `python -m runner`
with MLflow on a SQLite file in the sweep's folder; then a batch of 10^6 learning rates on the
GPU, by the engines (against NumPy on the CPU) and through `python -m runner`.

Run by bench/gpu.sh on a machine with a GPU, torch and jax, and the wheels of
bench/gpu_wheels.sh on its path. Prints markdown tables and exits 1 on any mismatch.
    python3 bench/gpu_check.py FOLDER [--device cpu]   # cpu: a dry run of the script itself
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omegaconf import OmegaConf  # noqa: E402

from runner import engines, schema  # noqa: E402
from runner.descent.loop import Loop, descend  # noqa: E402
from runner.descent.optimizers import Optimizer  # noqa: E402
from runner.engines import Problem, single  # noqa: E402
from runner.problems import losses  # noqa: E402
from runner.records import tracking  # noqa: E402
from runner.schema import LossConfig  # noqa: E402

DEFAULTS = schema.defaults()  # conf/config.yaml's: the settings a run takes unless told
SETTINGS = (DEFAULTS.stop.diverge_above, DEFAULTS.seed)  # of a Problem, after its dtype and device

REPO = Path(__file__).resolve().parent.parent
OPTIMIZERS = [Optimizer("sgd", 0.01), Optimizer("momentum", 0.01, momentum=0.9),
              Optimizer("nesterov", 0.01, momentum=0.9), Optimizer("adam", 0.05, beta1=0.9, beta2=0.999, eps=1e-8)]
STARTS = {"square": 5.0, "double_well": 2.5, "rosenbrock": [-1.5, 2.0]}
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
SWEEP_DIMS = (10**4, 10**6, 10**8)
SWEEP_EPOCHS = 200


def load_loss(name):
    return losses.from_config(OmegaConf.merge(OmegaConf.structured(LossConfig),
                                              OmegaConf.load(REPO / "conf" / "loss" / f"{name}.yaml")))


def main(folder: Path, device: str = "cuda") -> int:
    worst_ok = True
    print("| backend | device used | dtype | runs | largest relative difference from the CPU | per step on GPU (µs) | within tolerance |")
    print("|---|---|---|---|---|---|---|")
    for backend in ("torch", "jax"):
        engine = engines.load(backend)
        gpu = engine.resolve_device(device)
        assert device == "cpu" or engine.resolve_device("auto") == gpu, "device=auto must take the GPU"
        for dtype in ("float32", "float64"):
            worst, used, count, step_us = 0.0, set(), 0, []
            for loss_name, start in STARTS.items():
                loss = load_loss(loss_name)
                x0 = np.broadcast_to(np.array(start, float), (loss.dim,) if loss.dim else ()).copy()
                for o in OPTIMIZERS:
                    if loss.dim:
                        o = Optimizer(o.name, **{**o.hyperparameters(), "lr": o.lr / 20})
                    loop = Loop(300, DEFAULTS.stop.tolerance)
                    cpu = descend(single(loss, x0, o, dtype, engine.resolve_device("cpu"), *SETTINGS), engine,
                                  loop).trajectory(0)
                    started = time.perf_counter()
                    on_gpu = descend(single(loss, x0, o, dtype, gpu, *SETTINGS), engine, loop).trajectory(0)
                    step_us.append((time.perf_counter() - started) / 301 * 1e6)
                    used.add(on_gpu.device)
                    scale = np.maximum(1.0, np.abs(cpu.x.astype(np.float64)))
                    worst = max(worst, float(np.max(np.abs(on_gpu.x - cpu.x) / scale)))
                    count += 1
            ok = worst <= TOLERANCE[dtype]
            worst_ok &= ok
            print(f"| {backend} | {', '.join(sorted(used))} | {dtype} | {count} | {worst:.3g} | "
                  f"{np.median(step_us):.3g} | {'yes' if ok else 'NO'} |")
    print()
    dimension_sweep(device)
    print()
    recorded_ok = mlflow_sweep(folder, device, SWEEP_DIMS if device == "cuda" else (10**4,))
    print()
    batch_ok = batch_of_a_million(device)
    return 0 if worst_ok and recorded_ok and batch_ok else 1


MILLION = 10**6


def batch_of_a_million(device: str) -> bool:
    """10^6 learning rates of y = x^2, 200 epochs, float32, on the device: seconds, ns per
    point-step, and each point's final x and rate against NumPy on the CPU; then the same
    through `python -m runner ... hydra.sweeper.batch=true`, read back from its store."""
    lr = np.linspace(1e-6, 1.0, MILLION)
    square = load_loss("square")

    def batch(backend, on):
        engine = engines.load(backend)
        problem = Problem(square, np.full(MILLION, 5.0), Optimizer("sgd", lr), "float32", engine.resolve_device(on),
                          *SETTINGS)
        started = time.perf_counter()
        result = descend(problem, engine, Loop(SWEEP_EPOCHS, DEFAULTS.stop.tolerance, keep_bytes=16 * 2**20))
        return result, time.perf_counter() - started

    reference, cpu_seconds = batch("numpy", "cpu")
    print(f"| 10^6 points, y = x², {SWEEP_EPOCHS} epochs, float32 | device | s (incl. compile) | ns per point-step "
          "| largest difference of final x from NumPy (relative to max(1, |x|)) | of the rate | outcomes as NumPy's |")
    print("|---|---|---|---|---|---|---|")
    print(f"| numpy | cpu | {cpu_seconds:.2f} | {cpu_seconds / MILLION / (SWEEP_EPOCHS + 1) * 1e9:.3g} | – | – | – |")
    ok = True
    for backend in ("torch", "jax"):
        result, seconds = batch(backend, device)
        a, b = result.summary.final_x.astype(np.float64), reference.summary.final_x.astype(np.float64)
        both = np.isfinite(a) & np.isfinite(b)
        x_difference = float(np.max(np.abs(a - b)[both] / np.maximum(1.0, np.abs(b[both]))))
        rates = np.isfinite(result.summary.rate) & np.isfinite(reference.summary.rate)
        rate_difference = float(np.max(np.abs(result.summary.rate - reference.summary.rate)[rates]
                                       / np.maximum(1e-30, reference.summary.rate[rates])))
        same_outcomes = bool(np.mean(result.summary.outcome == reference.summary.outcome) > 0.999)
        ok &= x_difference <= 1e-4 and same_outcomes
        print(f"| {backend} | {result.device} | {seconds:.2f} | {seconds / MILLION / (SWEEP_EPOCHS + 1) * 1e9:.3g} | "
              f"{x_difference:.3g} | {rate_difference:.3g} | {'yes' if same_outcomes else 'NO'} |", flush=True)
    return ok and million_through_the_runner(device)


def million_through_the_runner(device: str) -> bool:
    """`python -m runner backend=torch,jax device=DEVICE lr=<10^6 values> hydra.sweeper.batch=true`
    into a SQLite store in a temporary folder (its points.csv, ~150 MB a batch, stays there)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        command = [sys.executable, "-m", "runner", "backend=torch,jax", f"device={device}", f"epochs={SWEEP_EPOCHS}",
                   "lr=range(0.000001,1.0000005,0.000001)", "hydra.sweeper.batch=true",
                   f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=gpu_batch", f"hydra.sweep.dir={tmp}/sweep"]
        print("\n$ python -m runner " + " ".join(command[3:-1]), flush=True)
        started = time.perf_counter()
        exit_code = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL).returncode
        elapsed = time.perf_counter() - started
        store = tracking.open_experiment(uri, "gpu_batch")
        runs = store.children(store.sweeps()[0].run_id)
        print(f"exit {exit_code}, {len(runs)} batch runs in {elapsed:.1f} s")
        print("| backend | device | status | points | converged | diverged | descent s |")
        print("|---|---|---|---|---|---|---|")
        ok = exit_code == 0 and len(runs) == 2
        for run in runs:
            ok &= run.status == "FINISHED" and run.metrics.get("points") == MILLION
            print(f"| {run.params['backend']} | {run.tags['device']} | {run.status} | {run.metrics.get('points'):.0f} | "
                  f"{run.metrics.get('converged'):.0f} | {run.metrics.get('diverged'):.0f} | "
                  f"{run.metrics['wall_time_s']:.3g} |")
    return ok


def dimension_sweep(device: str = "cuda") -> None:
    """Microseconds per step and effective GB/s on the GPU for dim = 10^4 .. 10^8 (float32),
    against one read and one write of x by a device-to-device copy (torch), as bench/run.py does
    on the CPU: per step = (t(2E) - t(E)) / E, so compiling and allocating cancel out."""
    import torch

    square = load_loss("square")
    dims = [10**k for k in range(4, 9)]
    print("| dim | floor: torch copy on the GPU, µs (GB/s) | torch µs/step (GB/s) | jax µs/step (GB/s) |")
    print("|---|---|---|---|")
    dims = dims if device == "cuda" else dims[:2]
    for dim in dims:
        a = torch.full((dim,), 5.0, device=device)
        b = torch.empty_like(a)
        b.copy_(a)
        synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        synchronize()
        started = time.perf_counter()
        for _ in range(20):
            b.copy_(a)
        synchronize()
        floor = (time.perf_counter() - started) / 20 * 1e6
        del a, b
        cells = []
        for backend in ("torch", "jax"):
            engine = engines.load(backend)
            epochs = 1000  # E steps must outweigh the noise of moving x to the GPU (400 MB at 10^8)

            def run(n):  # best of three: one slow start must not make t(2E) - t(E) negative
                problem = single(square, np.full(dim, 5.0), Optimizer("sgd", 1e-4), "float32",
                                 engine.resolve_device(device), *SETTINGS)
                times = []
                for _ in range(3):
                    started = time.perf_counter()
                    descend(problem, engine, Loop(n, DEFAULTS.stop.tolerance))
                    times.append(time.perf_counter() - started)
                return min(times)

            us = (run(2 * epochs) - run(epochs)) / epochs * 1e6
            cells.append(f"{us:.4g} ({2 * 4 * dim / us / 1e3:.3g})" if us > 0 else "n/a: t(2E) <= t(E)")
        print(f"| 10^{len(str(dim)) - 1} | {floor:.4g} ({2 * 4 * dim / floor / 1e3:.3g}) | " + " | ".join(cells) + " |",
              flush=True)


def mlflow_sweep(folder: Path, device: str = "cuda", dims: tuple[int, ...] = SWEEP_DIMS) -> bool:
    """The runner itself on the GPU: a torch and jax sweep over `dim` logged to a SQLite store
    in the sweep's folder, then read back. True when every run FINISHED on `device` with every
    step of its metrics."""
    folder = folder.resolve()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    command = [sys.executable, "-m", "runner", "--multirun", "backend=torch,jax", f"device={device}",
               "dim=" + ",".join(map(str, dims)), f"epochs={SWEEP_EPOCHS}", "lr=0.1",
               f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=gpu", f"hydra.sweep.dir={folder}"]
    print("$ python -m runner " + " ".join(command[4:]), flush=True)
    started = time.perf_counter()
    exit_code = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL).returncode
    elapsed = time.perf_counter() - started
    store = tracking.open_experiment(uri, "gpu")
    runs = store.children(store.sweeps()[0].run_id)
    print(f"exit {exit_code}, {len(runs)} runs in {elapsed:.1f} s; store {uri}")
    print()
    print("| backend | dim | device | status | outcome | steps of x_norm in MLflow | descent s (incl. compile) |")
    print("|---|---|---|---|---|---|---|")
    ok = exit_code == 0 and len(runs) == 2 * len(dims)
    for run in sorted(runs, key=lambda r: (r.params["backend"], int(r.params["dim"]))):
        steps = len(store.metric_series(run.run_id, "x_norm"))
        ok &= (run.status == "FINISHED" and run.tags["device"].startswith(device)
               and steps == SWEEP_EPOCHS + 1)
        print(f"| {run.params['backend']} | 10^{len(run.params['dim']) - 1} | {run.tags['device']} | "
              f"{run.status} | {run.tags.get('outcome')} | {steps} | {run.metrics['wall_time_s']:.3g} |")
    return ok


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[3] if sys.argv[2:3] == ["--device"] else "cuda"))
