"""A sweep is a parent MLflow run, one child run per job, and a report at the end.

`SweepCallback.on_multirun_start` runs once, in the launching process, before any job: it
opens the store (so a new SQLite file is created and migrated once, not by parallel workers at
the same time), creates the parent run, and writes its id into the sweep folder, where every job
finds it whatever process or machine the launcher runs it in (`parent_run_id`).

Hydra skips `on_multirun_end` when a job failed, and parallel launchers hand no job results
back, so the report is not built there: `finish` is called by the entry point after Hydra has
returned or raised, and builds it from what the jobs recorded in MLflow (`runner.report`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("runner")

PARENT_FILE = "mlflow_parent_run.json"


@dataclass
class Sweep:
    store: Any  # runner.tracking.Store
    run_id: str
    folder: Path


_started: list[Sweep] = []  # the sweeps this process launched, for `finish`


class SweepCallback(Callback):
    """Creates a sweep's parent run before its jobs start."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from runner import tracking

        folder = Path(config.hydra.sweep.dir)
        folder.mkdir(parents=True, exist_ok=True)
        uri = tracking.tracking_uri(config.mlflow.tracking_uri, Path.cwd())
        store = tracking.connect(uri, config.mlflow.experiment_name)
        overrides = " ".join(config.hydra.overrides.task)
        run_id = store.create(f"sweep-{folder.name}", tags={"sweep_dir": str(folder.resolve()),
                                                           "sweep_overrides": overrides, "kind": "sweep"})
        (folder / PARENT_FILE).write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}))
        _started.append(Sweep(store, run_id, folder))
        log.info("Sweep: parent MLflow %s", store.describe(run_id))


def parent_run_id(hydra_cfg: Any) -> Optional[str]:
    """The parent run of the sweep this job belongs to; None for a single run."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    path = Path(hydra_cfg.sweep.dir) / PARENT_FILE
    return json.loads(path.read_text())["run_id"] if path.exists() else None


def finish(interrupted: bool = False) -> bool:
    """Report on and end every sweep this process started; False if any of its jobs failed."""
    from runner import report

    all_ok = True
    while _started:
        sweep = _started.pop()
        ok = False
        try:
            ok = report.build(sweep.store, sweep.run_id, sweep.folder)
        finally:
            status = "KILLED" if interrupted else ("FINISHED" if ok else "FAILED")
            sweep.store.end(sweep.run_id, status)
        all_ok = all_ok and ok
    return all_ok
