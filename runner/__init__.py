"""runner: gradient-descent experiments configured by Hydra, computed by NumPy, TensorFlow,
PyTorch or JAX, and tracked in MLflow. Run it with `python -m runner`, or from Python:

    import runner
    result = runner.run("backend=tf", "lr=0.1")          # one run: trajectory, outcome, figure
    grid = runner.sweep("backend=numpy,tf", "lr=0.1,0.3")  # a sweep: its report as a DataFrame
    runner.load(result.run_id), runner.load_sweep(grid.parent_run_id)

(see `runner.api`). The API is imported on first use, so `python -m runner` does not pay for it.
"""

from runner.errors import ConfigError

__all__ = ["ConfigError", "Run", "Sweep", "SweepFailed", "load", "load_sweep", "run", "sweep"]


def __getattr__(name: str):
    if name in __all__:
        from runner import api

        return getattr(api, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
