"""Models on data, per epoch: the runner against the loop a user writes by hand, ratios in one run.

    python bench/models.py            # logistic regression and the network on digits, full batch

Each loop records what the runner records each epoch (the training loss, the validation loss and
accuracy) and steps plain SGD. NumPy's hand loop is the same arithmetic written out; PyTorch's
is `nn.Linear`/`nn.Sequential`, `CrossEntropyLoss` and `torch.optim.SGD`. Each figure is the
fastest of a few repeats, the two loops taking turns; the ratio runner / hand is the one to read
(the machine is shared).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hydra import compose, initialize_config_dir  # noqa: E402

from runner import problem, schema  # noqa: E402
from runner.descent.loop import descend  # noqa: E402

LR, L2 = 0.1, 1e-4
MODELS = {"logistic": ("model=logistic", f"model.l2={L2}"), "mlp": ("model=mlp", f"model.l2={L2}", "model.hidden=[32]")}


def built(model: str, backend: str, epochs: int):
    schema.register()
    with initialize_config_dir(config_dir=str(schema.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*MODELS[model], "data=digits", f"backend={backend}",
                                                       f"lr={LR}", f"epochs={epochs}", "dtype=float32"])
    prob, loop, engine, _ = problem.from_config(cfg)
    return prob, engine, loop


def runner_loop(model: str, backend: str, epochs: int):
    prob, engine, loop = built(model, backend, epochs)
    return lambda: descend(prob, engine, loop)


def numpy_loop(model: str, epochs: int):
    """The arithmetic a user writes: forward, softmax, backward, step; the loss and the
    validation loss and accuracy each epoch."""
    data = built(model, "numpy", epochs)[0].loss.data
    x, xv = data.x_train.astype(np.float32), data.x_val.astype(np.float32)
    y, yv = np.eye(10, dtype=np.float32)[data.y_train], data.y_val
    n = len(x)
    rng = np.random.default_rng(0)

    def softmax_loss(z, target):
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return p, float(-np.mean(np.sum(target * np.log(p + 1e-30), axis=1)))

    def run():
        if model == "logistic":
            w = np.zeros((x.shape[1], 10), np.float32)
            for _ in range(epochs + 1):
                p, loss = softmax_loss(x @ w, y)
                pv, val_loss = softmax_loss(xv @ w, np.eye(10, dtype=np.float32)[yv])
                accuracy = np.mean(pv.argmax(axis=1) == yv)
                w -= LR * (x.T @ (p - y) / n + L2 * w)
        else:
            w1 = rng.uniform(-0.2, 0.2, (x.shape[1], 32)).astype(np.float32)
            b1, b2 = np.zeros(32, np.float32), np.zeros(10, np.float32)
            w2 = rng.uniform(-0.4, 0.4, (32, 10)).astype(np.float32)
            for _ in range(epochs + 1):
                h = np.tanh(x @ w1 + b1)
                p, loss = softmax_loss(h @ w2 + b2, y)
                pv, val_loss = softmax_loss(np.tanh(xv @ w1 + b1) @ w2 + b2, np.eye(10, dtype=np.float32)[yv])
                accuracy = np.mean(pv.argmax(axis=1) == yv)
                delta = (p - y) / n
                dh = (delta @ w2.T) * (1 - h * h)
                w2 -= LR * (h.T @ delta + L2 * w2)
                b2 -= LR * delta.sum(axis=0)
                w1 -= LR * (x.T @ dh + L2 * w1)
                b1 -= LR * dh.sum(axis=0)
        return loss, val_loss, accuracy

    return run


def torch_loop(model: str, epochs: int):
    """nn.Linear / nn.Sequential, CrossEntropyLoss, torch.optim.SGD, and the validation loss and
    accuracy each epoch under no_grad."""
    import torch

    data = built(model, "numpy", epochs)[0].loss.data
    x, xv = torch.tensor(data.x_train, dtype=torch.float32), torch.tensor(data.x_val, dtype=torch.float32)
    y, yv = torch.tensor(data.y_train), torch.tensor(data.y_val)

    def run():
        torch.manual_seed(0)
        if model == "logistic":
            net = torch.nn.Linear(x.shape[1], 10, bias=False)
            torch.nn.init.zeros_(net.weight)
        else:
            net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
        criterion = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(net.parameters(), lr=LR, weight_decay=L2)
        for _ in range(epochs + 1):
            optimizer.zero_grad()
            loss = criterion(net(x), y)
            loss.backward()
            with torch.no_grad():
                scores = net(xv)
                val_loss = criterion(scores, yv)
                accuracy = (scores.argmax(dim=1) == yv).float().mean()
                losses = (loss.item(), val_loss.item(), accuracy.item())
            optimizer.step()
        return losses

    return run


def fastest(functions: dict, repeats: int) -> dict:
    """The fastest of `repeats` calls of each function, taking turns: on a shared machine, a slow
    spell then slows every loop alike instead of whichever ran during it."""
    for function in functions.values():
        function()  # warm: imports, compilation, allocations
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"digits (1,438 training rows, 359 validation), full batch, float32, {args.epochs} epochs; "
          f"µs per epoch, fastest of {args.repeats}")
    print(f"{'model':10} {'framework':9} {'runner':>9} {'by hand':>9} {'ratio':>6}")
    hand_loops = {"numpy": numpy_loop, "torch": torch_loop}
    for model in MODELS:
        for backend, hand in hand_loops.items():
            best = fastest({"runner": runner_loop(model, backend, args.epochs), "hand": hand(model, args.epochs)},
                           args.repeats)
            ours, theirs = (best[name] / (args.epochs + 1) * 1e6 for name in ("runner", "hand"))
            print(f"{model:10} {backend:9} {ours:9.0f} {theirs:9.0f} {ours / theirs:6.2f}")


if __name__ == "__main__":
    main()
