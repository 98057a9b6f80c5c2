"""GPU check: torch and jax on `cuda` give the CPU's trajectory, for every optimizer and loss;
then the dimension sweep on the GPU, by the engines alone and then through `python -m runner`
with MLflow on a SQLite file in the sweep's folder.

Run by bench/gpu.sh on a machine with a GPU, torch and jax, and the wheels of
bench/gpu_wheels.sh on its path. Prints markdown tables and exits 1 on any mismatch.
    python3 bench/gpu_check.py FOLDER
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omegaconf import OmegaConf  # noqa: E402

from runner import engines, losses, tracking  # noqa: E402
from runner.engines import Problem  # noqa: E402
from runner.optimizers import Optimizer  # noqa: E402
from runner.schema import LossConfig  # noqa: E402

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


def main(folder: Path) -> int:
    worst_ok = True
    print("| backend | device used | dtype | runs | largest relative difference from the CPU | per step on GPU (µs) | within tolerance |")
    print("|---|---|---|---|---|---|---|")
    for backend in ("torch", "jax"):
        engine = engines.load(backend)
        gpu = engine.resolve_device("cuda")
        assert engine.resolve_device("auto") == gpu, "device=auto must take the GPU"
        for dtype in ("float32", "float64"):
            worst, used, count, step_us = 0.0, set(), 0, []
            for loss_name, start in STARTS.items():
                loss = load_loss(loss_name)
                x0 = np.broadcast_to(np.array(start, float), (loss.dim,) if loss.dim else ()).copy()
                for o in OPTIMIZERS:
                    if loss.dim:
                        o = Optimizer(o.name, o.lr / 20, o.momentum, o.beta1, o.beta2, o.eps)
                    cpu = engine.descend(Problem(loss, x0, 300, o, dtype, engine.resolve_device("cpu")))
                    started = time.perf_counter()
                    on_gpu = engine.descend(Problem(loss, x0, 300, o, dtype, gpu))
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
    dimension_sweep()
    print()
    recorded_ok = mlflow_sweep(folder)
    return 0 if worst_ok and recorded_ok else 1


def dimension_sweep() -> None:
    """Microseconds per step and effective GB/s on the GPU for dim = 10^4 .. 10^8 (float32),
    against one read and one write of x by a device-to-device copy (torch), as bench/run.py does
    on the CPU: per step = (t(2E) - t(E)) / E, so compiling and allocating cancel out."""
    import torch

    square = load_loss("square")
    dims = [10**k for k in range(4, 9)]
    print("| dim | floor: torch copy on the GPU, µs (GB/s) | torch µs/step (GB/s) | jax µs/step (GB/s) |")
    print("|---|---|---|---|")
    for dim in dims:
        a = torch.full((dim,), 5.0, device="cuda")
        b = torch.empty_like(a)
        b.copy_(a)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(20):
            b.copy_(a)
        torch.cuda.synchronize()
        floor = (time.perf_counter() - started) / 20 * 1e6
        del a, b
        cells = []
        for backend in ("torch", "jax"):
            engine = engines.load(backend)
            epochs = 1000  # E steps must outweigh the noise of moving x to the GPU (400 MB at 10^8)

            def run(n):  # best of three: one slow start must not make t(2E) - t(E) negative
                problem = Problem(square, np.full(dim, 5.0), n, Optimizer("sgd", 1e-4), "float32",
                                  engine.resolve_device("cuda"))
                times = []
                for _ in range(3):
                    started = time.perf_counter()
                    engine.descend(problem)
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
    sys.exit(main(Path(sys.argv[1])))
