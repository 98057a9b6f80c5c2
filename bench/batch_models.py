"""Batches of models: a thousand models as one program, against a run each and a hand-written vmap.

    python bench/batch_models.py                      # every figure, on the installed backends
    python bench/batch_models.py --backends numpy,torch --epochs 100

Three measurements, each ratio from one run of this script (the machine is shared):

1. The whole command, `python -m runner model=logistic data=digits 'lr=range(0.01,1.01,0.01)'
   'seed=range(0,10)' epochs=100 hydra.sweeper.batch=true` (1,000 models: one batch), against
   one run of one model, `python -m runner model=logistic data=digits epochs=100`, on the same
   backend, both from a fresh process on a store already migrated. Targets: the batch at most
   20x the single run, so per model at least 50x cheaper.
2. The batch's descent (the engine and the loop, as the job runs it) against the loop a user
   writes with `torch.func.vmap` (or `jax.vmap` under `jax.jit`): the same 1,000 models, the
   same per-epoch records (the loss, the first 10 weights and the norms of the weights and the
   gradient, the training and validation loss, the validation accuracy). Target: at most 1.5x.
3. The peak memory (the job's process, its largest resident set) of a batch of 1,000 networks
   64-32-10 on digits, full batch, 10 epochs. Target: under 2 GB.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from runner import problem, schema  # noqa: E402
from runner.descent.loop import descend  # noqa: E402

LRS, SEEDS = "range(0.01,1.01,0.01)", "range(0,10)"
MODEL = ("model=logistic", "data=digits", "model.l2=0.001", "dtype=float32")
FRAMEWORK = {"numpy": "numpy", "tf": "tensorflow", "torch": "torch", "jax": "jax"}


def command(*overrides: str, cwd: Path) -> float:
    """Seconds `python -m runner OVERRIDES` takes in `cwd`, from a fresh process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "runner", *overrides], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - started


def peak_memory(*overrides: str, cwd: Path) -> int:
    """The largest resident set, in bytes, of `python -m runner OVERRIDES` (a wrapper process per
    measurement, so that RUSAGE_CHILDREN holds only this one)."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "runner", *overrides], cwd=cwd,
                         check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return int(out.stdout.split()[-1]) * 1024  # KiB on Linux


def batch_problem(backend: str, epochs: int):
    """The problem the batch's job builds: 1,000 models of lr x seed."""
    schema.register()
    with initialize_config_dir(config_dir=str(schema.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            *MODEL, f"backend={backend}", f"epochs={epochs}", "lr=0.01", "seed=0",
            f'batch.sweep=["lr={LRS}","seed={SEEDS}"]'])
    prob, loop, engine, grid = problem.from_config(cfg)
    return prob, loop, engine, grid


def runner_descent(backend: str, epochs: int) -> float:
    prob, loop, engine, _ = batch_problem(backend, epochs)
    descend(prob, engine, loop)  # compiles (TF, JAX) and warms up
    started = time.perf_counter()
    descend(prob, engine, loop)
    return time.perf_counter() - started


def torch_vmap(epochs: int) -> float:
    """The loop a PyTorch user writes for 1,000 logistic regressions at once."""
    import torch
    from torch.func import grad_and_value, vmap

    prob = batch_problem("torch", epochs)[0]
    data, model = prob.loss.data, prob.loss
    x, y = torch.tensor(data.x_train, dtype=torch.float32), torch.tensor(data.y_train)
    xv, yv = torch.tensor(data.x_val, dtype=torch.float32), torch.tensor(data.y_val)
    penalty = torch.tensor(model.l2 * model.penalised, dtype=torch.float32)
    lr = torch.tensor(prob.optimizer.lr, dtype=torch.float32)[:, None]
    shape = (data.features, model.outputs)

    def loss(w):
        return torch.nn.functional.cross_entropy(x @ w.view(shape), y) + 0.5 * (penalty * w * w).sum()

    def measures(w, value):
        scores = xv @ w.view(shape)
        return (value - 0.5 * (penalty * w * w).sum(), torch.nn.functional.cross_entropy(scores, yv),
                (scores.argmax(-1) == yv).float().mean())

    step, measure = vmap(grad_and_value(loss)), vmap(measures)

    def run():
        w = torch.zeros(prob.points, model.size)
        rows = torch.empty(epochs + 1, prob.points, 10 + 1 + 10 + 2 + 3)
        for k in range(epochs + 1):
            g, value = step(w)
            rows[k] = torch.cat([w[:, :10], value[:, None], g[:, :10], w.norm(dim=1)[:, None], g.norm(dim=1)[:, None],
                                 torch.stack(measure(w, value), dim=1)], dim=1)
            w = w - lr * g
        return rows.numpy()

    run()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def jax_vmap(epochs: int) -> float:
    """The loop a JAX user writes: vmap over the models, scan over the epochs, under jit."""
    import jax
    import jax.numpy as jnp

    prob = batch_problem("jax", epochs)[0]
    data, model = prob.loss.data, prob.loss
    x, y1 = jnp.asarray(data.x_train, jnp.float32), jax.nn.one_hot(data.y_train, model.outputs)
    xv, yv = jnp.asarray(data.x_val, jnp.float32), jnp.asarray(data.y_val)
    yv1 = jax.nn.one_hot(data.y_val, model.outputs)
    penalty = jnp.asarray(model.l2 * model.penalised, jnp.float32)
    lr = jnp.asarray(prob.optimizer.lr, jnp.float32)[:, None]
    shape = (data.features, model.outputs)

    def loss(w):
        return -jnp.mean(jnp.sum(y1 * jax.nn.log_softmax(x @ w.reshape(shape)), -1)) + 0.5 * jnp.sum(penalty * w * w)

    def measures(w, value):
        scores = xv @ w.reshape(shape)
        return jnp.stack([value - 0.5 * jnp.sum(penalty * w * w),
                          -jnp.mean(jnp.sum(yv1 * jax.nn.log_softmax(scores), -1)),
                          jnp.mean(jnp.argmax(scores, -1) == yv)])

    step, measure = jax.vmap(jax.value_and_grad(loss)), jax.vmap(measures)

    def epoch(w, _):
        value, g = step(w)
        row = jnp.concatenate([w[:, :10], value[:, None], g[:, :10], jnp.linalg.norm(w, axis=1)[:, None],
                               jnp.linalg.norm(g, axis=1)[:, None], measure(w, value)], axis=1)
        return w - lr * g, row

    run = jax.jit(lambda w: jax.lax.scan(epoch, w, None, length=epochs + 1)[1])
    w0 = jnp.zeros((prob.points, model.size), jnp.float32)
    np.asarray(run(w0))
    started = time.perf_counter()
    np.asarray(run(w0))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    installed = [b for b, f in FRAMEWORK.items() if importlib.util.find_spec(f)]
    parser.add_argument("--backends", default=",".join(installed))
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    backends = args.backends.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp)
        command("epochs=1", cwd=here)  # the store's migrations, once, before anything is timed
        store = here / "mlflow.db"
        print(f"1. the command for 1,000 models (lr x seed, logistic on digits, {args.epochs} epochs) against one run")
        print(f"{'backend':8} {'one run s':>10} {'batch s':>9} {'batch/run':>10} {'per model cheaper':>18}")
        for backend in backends:
            one = command(*MODEL, f"backend={backend}", f"epochs={args.epochs}", "lr=0.5", cwd=here)
            many = command(*MODEL, f"backend={backend}", f"epochs={args.epochs}", f"lr={LRS}", f"seed={SEEDS}",
                           "hydra.sweeper.batch=true", cwd=here)
            print(f"{backend:8} {one:10.2f} {many:9.2f} {many / one:9.1f}x {1000 * one / many:17.0f}x")

        print(f"\n2. the batch's descent against a hand-written vmap loop (1,000 models, {args.epochs} epochs, "
              "the same records)")
        hand = {"torch": torch_vmap, "jax": jax_vmap}
        for backend in backends:
            mine = runner_descent(backend, args.epochs)
            if backend in hand:
                theirs = hand[backend](args.epochs)
                print(f"{backend:8} runner {mine:7.3f} s   vmap by hand {theirs:7.3f} s   ratio {mine / theirs:5.2f}")
            else:
                print(f"{backend:8} runner {mine:7.3f} s   (no vmap to compare)")

        print("\n3. peak memory of 1,000 networks 64-32-10 on digits (full batch, 10 epochs), the job's process")
        for backend in backends:
            peak = peak_memory("model=mlp", "model.hidden=[32]", "data=digits", f"backend={backend}", "epochs=10",
                               f"lr={LRS}", f"seed={SEEDS}", "hydra.sweeper.batch=true", cwd=here)
            print(f"{backend:8} {peak / 2**30:5.2f} GB")
        store.unlink(missing_ok=True)
        shutil.rmtree(here / "outputs", ignore_errors=True)


if __name__ == "__main__":
    main()
