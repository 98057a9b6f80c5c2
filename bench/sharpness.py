"""What a measurement of the sharpness costs, against the epoch it is measured beside.

    python bench/sharpness.py                 # the edge-of-stability network, every installed backend
    python bench/sharpness.py --iterations 20 --repeats 5

For each backend, on experiment=edge_of_stability's network (a tanh layer of 64 on diabetes,
full batch, float64, one point): the time of an epoch (the gradient, the update and the row's
records) and of one measurement (`stepper.sharpness(iterations)`: that many Hessian-vector
products and power-iteration steps), and so the cost of one Hessian-vector product in epochs.
Each figure is the fastest of a few repeats, after a warm-up that compiles what TF and JAX
compile; the ratios are the ones to read (the machine is shared).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hydra import compose, initialize_config_dir  # noqa: E402

from models import fastest  # noqa: E402  (bench/models.py: the fastest of a few repeats, after a warm-up)
from runner import problem, schema  # noqa: E402

NETWORK = ["model=mlp", "data=diabetes", "model.hidden=[64]", "model.l2=0", "lr=0.1", "dtype=float64"]
FRAMEWORKS = {"numpy": "numpy", "torch": "torch", "jax": "jax", "tf": "tensorflow"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=50, help="epochs timed together, for the cost of one")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    schema.register()
    print(f"diabetes, tanh [64], full batch, float64; ms, fastest of {args.repeats}")
    print(f"{'backend':8} {'epoch':>8} {'measurement':>12} {'one HVP':>8} {'HVP / epoch':>12}")
    for backend, module in FRAMEWORKS.items():
        if importlib.util.find_spec(module) is None:
            continue
        with initialize_config_dir(config_dir=str(schema.CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*NETWORK, f"backend={backend}"])
        prob, _, engine, _ = problem.from_config(cfg)
        stepper = engine.start(prob)
        best = fastest({"epochs": lambda: stepper(args.epochs),
                        "measurement": lambda: stepper.sharpness(args.iterations)}, args.repeats)
        epoch, measurement = best["epochs"] / args.epochs, best["measurement"]
        product = measurement / args.iterations
        print(f"{backend:8} {epoch * 1e3:8.3f} {measurement * 1e3:12.2f} {product * 1e3:8.3f} {product / epoch:12.2f}")


if __name__ == "__main__":
    main()
