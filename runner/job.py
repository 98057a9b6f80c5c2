"""Where a job stands: alone, or one of a sweep's jobs, and then which one, under which parent run.

The sweeper writes `PARENT_FILE` into the sweep folder before it launches any job; every job
reads it there, in whatever process or machine the launcher runs it, and so finds its parent run
and how many jobs the sweep has. This module imports nothing of the runner's: the recording,
batch and sweep modules all ask it, and it asks none of them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

PARENT_FILE = "mlflow_parent_run.json"
NUMBER_TAG = "job_num"  # a sweep's job runs carry their Hydra job number: the sweeper finds them by it


def write_parent(folder: Path, tracking_uri: str, run_id: str, jobs: int) -> None:
    """Tell the sweep's jobs their parent run and how many jobs there are."""
    (folder / PARENT_FILE).write_text(json.dumps({"tracking_uri": tracking_uri, "run_id": run_id, "jobs": jobs}))


def _parent_file(hydra_cfg: Any) -> dict:
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return {}
    path = Path(hydra_cfg.sweep.dir) / PARENT_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def parent_run_id(hydra_cfg: Any) -> Optional[str]:
    """The parent run of the sweep this job belongs to; None for a single run."""
    return _parent_file(hydra_cfg).get("run_id")


def number(hydra_cfg: Any) -> Optional[int]:
    """This job's number in its sweep (Hydra's `hydra.job.num`); None for a single run."""
    return int(hydra_cfg.job.num) if hydra_cfg.mode == RunMode.MULTIRUN else None


def position(hydra_cfg: Any) -> str:
    """'job 3/30 ' for the third job of thirty in a sweep (in whatever process runs it); '' for
    a single run."""
    jobs = _parent_file(hydra_cfg).get("jobs")
    return f"job {hydra_cfg.job.num + 1}/{jobs} " if jobs else ""


def in_launcher_process(hydra_cfg: Any) -> bool:
    """True for a job of a sweep on a launcher other than the basic one (joblib, submitit, SLURM,
    Ray): it runs in a process of the launcher's, beside the sweep's other jobs, and shares their
    terminal, where progress bars would overwrite each other."""
    launcher = str(hydra_cfg.launcher.get("_target_", "")) if hydra_cfg.get("launcher") else ""
    return hydra_cfg.mode == RunMode.MULTIRUN and not launcher.endswith("BasicLauncher")


def job_return(overrides: Sequence[str], number: int, value: Any = None, error: Optional[BaseException] = None
               ) -> Any:
    """The JobReturn of a job whose own was lost: COMPLETED with `value` (its run had finished),
    or FAILED with `error` as what it raised (its process died, its cluster ended it)."""
    return JobReturn(overrides=list(overrides), hydra_cfg=OmegaConf.create({"hydra": {"job": {"num": number}}}),
                     status=JobStatus.FAILED if error is not None else JobStatus.COMPLETED,
                     _return_value=error if error is not None else value)


def task_config(cfg: Any) -> Any:
    """A job's composed config as its task function gets it: Hydra's own node removed (as
    Hydra's `run_job` does), so that it hashes and flattens as the job's does."""
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        task.pop("hydra", None)
    return task


def config_yaml(cfg: Any) -> str:
    """A job's config as its `.hydra/config.yaml` holds it."""
    return OmegaConf.to_yaml(task_config(cfg))
