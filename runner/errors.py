"""The runner's error for input that is well formed but not allowed, and the other ways a job ends.

It lives apart from Hydra and MLflow so that engines, losses and update rules can raise it
without importing either; the Hydra entry points print it as one line (`runner.schema.reported`).
"""

from __future__ import annotations

from typing import Optional

# How a run ends, in MLflow's words (`mlflow.entities.RunStatus`), spelt once, here, for the
# modules that do not import MLflow: a job that raised is FAILED, one stopped or lost KILLED.
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"


class ConfigError(ValueError):
    """A config value that is well typed but not allowed: one line naming the key, the value and
    what is allowed. `point` is the index of the offending point of a batch, when one is to blame.

    >>> str(ConfigError("lr=-0.1 is not allowed: lr must be a finite number > 0", point=3))
    'lr=-0.1 is not allowed: lr must be a finite number > 0'
    """

    def __init__(self, message: str, point: Optional[int] = None) -> None:
        super().__init__(message)
        self.point = point


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so that every open MLflow run ends KILLED, not RUNNING."""


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: raise `Terminated` wherever the program is."""
    raise Terminated


class JobLost(RuntimeError):
    """A job of a sweep that ended without a result, not by raising: its process died, or its
    cluster ended it. Its run ends KILLED with this as its `error`; `run_tags` are tags that
    identify the job where it ran (a SLURM job's ids)."""

    def run_tags(self) -> dict[str, str]:
        return {}


def one_line(error: BaseException) -> str:
    """An error as a run's `error` tag and the sweep's summary say it: the message alone for a
    lost job (it says what happened), else the exception's type and the message's first line.

    >>> one_line(ValueError("bad\\nmore")), one_line(JobLost("SLURM job 4_2 ended CANCELLED"))
    ('ValueError: bad', 'SLURM job 4_2 ended CANCELLED')
    """
    first = (str(error).strip().splitlines() or [""])[0]
    return first if isinstance(error, JobLost) else f"{type(error).__name__}: {first}"
