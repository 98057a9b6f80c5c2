"""MLflow, and only here: where runs are stored, and what each run records.

The store is, in order: the config key `mlflow.tracking_uri`, else `$MLFLOW_TRACKING_URI`, else
`sqlite:///mlflow.db` in the folder the runner was launched from, with artifacts beside it in
`mlartifacts/`. Everything goes through an explicit `MlflowClient`, never MLflow's global
active run, so a run one job left open can never leak into the next job of the same process.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional
from urllib.parse import urlparse

import numpy as np

# The report downloads each job's CSV: MLflow's per-download progress bar would only be noise.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Against a server, MLflow prints two "View run/experiment at" lines per run; the runner already
# says where each run is, once.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from runner.descent.loop import Trajectory  # noqa: E402
from runner.descent.sharpness import NAME as SHARPNESS  # noqa: E402
from runner.errors import FAILED, FINISHED, KILLED, RUNNING, ConfigError  # noqa: E402
from runner.job import NUMBER_TAG  # noqa: E402
from runner.problems.datasets import Dataset  # noqa: E402
from runner.records import chatter  # noqa: E402

chatter.quiet_loggers("mlflow.store.db.utils")  # "Creating initial MLflow database tables...", on a new store

log = logging.getLogger("runner")

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
PARAMS_PER_BATCH = 100


def tracking_uri(configured: Optional[str], launch_dir: Path) -> str:
    """The store's URI, from the config key, the environment, or the default SQLite file.

    >>> tracking_uri(None, Path("/tmp/x")) if "MLFLOW_TRACKING_URI" not in os.environ else ""
    'sqlite:////tmp/x/mlflow.db'
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{launch_dir / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative SQLite path means the launch folder, whatever folder a job runs in.
        uri = f"sqlite:///{(launch_dir / uri[len('sqlite:///'):]).resolve()}"
    return uri


@dataclass(frozen=True)
class RunRecord:
    """What a run recorded, as plain data."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]

    @property
    def value(self) -> float:
        """What a sweeper minimises: the final loss; of a batch, the best final loss (NaN: none)."""
        return float(self.metrics.get("final_loss", self.metrics.get("best_final_loss", float("nan"))))


def _record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name, run.info.status, dict(run.data.params),
                     dict(run.data.tags), dict(run.data.metrics))


@dataclass(frozen=True)
class Store:
    """An MLflow tracking store and the experiment that runs go into."""

    uri: str
    experiment_name: str
    experiment_id: str
    client: MlflowClient

    @contextmanager
    def run(self, name: str, tags: Mapping[str, str]) -> Iterator[str]:
        """Create a run and always end it: FINISHED, FAILED (error attached) or KILLED."""
        run_id = self.create(name, tags)
        try:
            yield run_id
        except (KeyboardInterrupt, SystemExit):
            self.end(run_id, KILLED)
            raise
        except Exception as error:
            self.attach_error(run_id, error)
            self.end(run_id, FAILED)
            raise
        self.end(run_id, FINISHED)

    def create(self, name: str, tags: Mapping[str, str]) -> str:
        tags = {key: str(value) for key, value in tags.items()}  # a server accepts only strings
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def end(self, run_id: str, status: str) -> None:
        """End a run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, RunStatus.to_string(getattr(RunStatus, status)))

    def attach_error(self, run_id: str, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        self.client.set_tag(run_id, "error", message[:5000])
        text = "".join(traceback.format_exception(error))
        self.client.log_text(run_id, text, "error.txt")

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start : start + PARAMS_PER_BATCH])

    def log_dataset(self, run_id: str, data: Dataset) -> None:
        """A model's dataset as the run's inputs (`mlflow.log_input`): its training and its
        validation part, each with its own digest, shape and split as its context, so that the
        UI's dataset column and lineage show what the model was trained and validated on."""
        import mlflow.data
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        source = CodeDatasetSource({"loader": data.source, "prepared_digest": data.digest})
        inputs = []
        for context, features, targets in (("training", data.x_train, data.y_train),
                                           ("validation", data.x_val, data.y_val)):
            digest = hashlib.sha256(features.tobytes() + targets.tobytes()).hexdigest()[:16]
            part = mlflow.data.from_numpy(features, source=source, targets=targets, name=data.name, digest=digest)
            inputs.append(DatasetInput(part._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
        self.client.log_inputs(run_id, datasets=inputs)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_outputs(self, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str],
                    trajectory: Optional[Trajectory] = None, max_steps: Optional[int] = None,
                    series: Optional[Mapping[str, np.ndarray]] = None) -> None:
        """A job's outputs: every series of `trajectory.columns()` at the steps `logged_steps`
        picks, each of `series` at steps 0, 1, 2, ..., then the single values `metrics` (at step
        0) and the `tags`. In as few `log_batch` calls as MLflow takes, 1,000 values a call (its
        SQL store takes about 0.2 ms a value even so; each call is one transaction): one for most
        runs. The summary and the tags go in the last, so that a run tagged with its outcome has
        its whole record."""
        now = int(time.time() * 1000)
        values = [] if trajectory is None else [
            Metric(name, value, now, step)
            for name, (steps, logged) in logged_series(trajectory, max_steps).items()
            for step, value in zip(steps.tolist(), logged.tolist())
        ]
        values += [Metric(name, float(v), now, step) for name, history in (series or {}).items()
                   for step, v in enumerate(history.tolist())]
        values += [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        run_tags = [RunTag(key, str(value)) for key, value in tags.items()]
        last = max(0, len(values) - (METRICS_PER_BATCH - len(run_tags)))
        for start in range(0, last, METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=values[start : min(start + METRICS_PER_BATCH, last)])
        if values[last:] or run_tags:
            self.client.log_batch(run_id, metrics=values[last:], tags=run_tags)

    def log_metrics(self, run_id: str, values: Mapping[str, float]) -> None:
        """Single values (a summary), at step 0."""
        self.log_outputs(run_id, values, {})

    def log_table(self, run_id: str, columns: Mapping[str, list], artifact_file: str) -> None:
        """A table as the MLflow UI shows one (`mlflow.log_table`). It needs pandas, which MLflow's
        client alone (mlflow-skinny) lacks: there the table is left out, and said so."""
        try:
            self.client.log_table(run_id, data=dict(columns), artifact_file=artifact_file)
        except ImportError as error:
            log.warning("MLflow cannot log %s here (%s); the same table is in points.csv", artifact_file, error)

    def log_artifacts(self, run_id: str, files: list[Path], folders: Mapping[str, Path]) -> None:
        """Upload `files` to the run's root and each folder under its name in `folders`."""
        for path in files:
            if path.exists():
                self.client.log_artifact(run_id, str(path))
        for name, folder in folders.items():
            if folder.is_dir():
                self.client.log_artifacts(run_id, str(folder), artifact_path=name)

    def children(self, parent_id: str) -> list[RunRecord]:
        """The runs of a sweep: those tagged with `parent_id` as their parent, oldest first."""
        return self._search(f"tags.mlflow.parentRunId = '{parent_id}'")

    def record(self, run_id: str) -> RunRecord:
        return _record(self.client.get_run(run_id))

    def sweeps(self) -> list[RunRecord]:
        """The sweeps' parent runs of this experiment, newest first."""
        return self._search("tags.kind = 'sweep'")[::-1]

    def finished_run(self, config_hash: str) -> Optional[str]:
        """A FINISHED run of this experiment whose config has this hash, if there is one."""
        found = self._search(f"tags.config_hash = '{config_hash}' and attributes.status = '{FINISHED}'")
        return found[0].run_id if found else None

    def kill_running_children(self, parent_id: str) -> None:
        """End as KILLED the sweep's runs still RUNNING: jobs of worker processes stopped with it."""
        for record in self._search(f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = '{RUNNING}'"):
            self.end(record.run_id, KILLED)

    def end_lost(self, record: RunRecord, error: str) -> None:
        """The run of a job that was lost (its process died, its cluster ended it): `error` (why)
        where it has no error of its own, and ended KILLED if still RUNNING."""
        if "error" not in record.tags:
            self.client.set_tag(record.run_id, "error", error)
        if record.status == RUNNING:
            self.end(record.run_id, KILLED)

    def stop_job(self, parent_id: str, number: int, error: str) -> Optional[float]:
        """For job `number` of a sweep, stopped before it returned: its value (final loss; of a
        batch, the best) when its newest run FINISHED, else None, that run (if any) `end_lost`."""
        found = self._search(f"tags.mlflow.parentRunId = '{parent_id}' and tags.{NUMBER_TAG} = '{number}'")
        if not found:
            return None
        if found[-1].status == FINISHED:
            return found[-1].value
        self.end_lost(found[-1], error)
        return None

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def _search(self, filter_string: str) -> list[RunRecord]:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       order_by=["attributes.start_time ASC"], max_results=50000)
        return [_record(run) for run in runs]

    def metric_series(self, run_id: str, name: str) -> np.ndarray:
        """A metric's values by step (float64), as logged."""
        history = sorted(self.client.get_metric_history(run_id, name), key=lambda m: m.step)
        return np.array([m.value for m in history], dtype=np.float64)

    def artifact_paths(self, run_id: str) -> list[str]:
        """The run's artifacts: files and folders at the top level."""
        return [artifact.path for artifact in self.client.list_artifacts(run_id)]

    def download(self, run_id: str, artifact: str, folder: Path) -> Optional[Path]:
        """A run's artifact as a local file, or None when the run has no such artifact."""
        try:
            return Path(self.client.download_artifacts(run_id, artifact, str(folder)))
        except (MlflowException, OSError):
            return None

    def describe(self, run_id: str) -> str:
        """Where a run is, for the terminal: a UI link for a server, the store otherwise."""
        if urlparse(self.uri).scheme in ("http", "https"):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"
        return (f"run {run_id} in experiment '{self.experiment_name}' (id {self.experiment_id}) "
                f"of {self.uri}")


def logged_steps(rows: int, max_steps: Optional[int]) -> np.ndarray:
    """Every step when there are at most `max_steps`, else `max_steps` evenly spaced steps that
    include the first and the last.

    >>> logged_steps(5, None).tolist(), logged_steps(5, 10).tolist(), logged_steps(101, 5).tolist()
    ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 25, 50, 75, 100])
    """
    if max_steps is None or rows <= max_steps:
        return np.arange(rows)
    return np.unique(np.linspace(0, rows - 1, max_steps).round().astype(int))


def logged_series(trajectory: Trajectory, max_steps: Optional[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each series of `trajectory.columns()` as a run logs it: (steps, float64 values) at the
    steps `logged_steps` picks; the sharpness, measured every few epochs, at the epochs it was
    measured (as many of them as `logged_steps` picks)."""
    rows, logged = len(trajectory.x), {}
    for name, series in trajectory.columns().items():
        if name == SHARPNESS:
            measured = np.flatnonzero(~np.isnan(series))
            steps = measured[logged_steps(len(measured), max_steps)]
        else:
            steps = logged_steps(rows, max_steps)
        logged[name] = (steps, series[steps].astype(np.float64))
    return logged


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """For an http(s) store, make sure a server answers, within `timeout_s`; raise ConfigError if not.

    MLflow's client retries an unreachable server for about four minutes; this answers at once.
    Any HTTP answer counts, an authentication error included: only no answer is an error.
    """
    if urlparse(uri).scheme not in ("http", "https"):
        return
    import urllib.error
    import urllib.request

    probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        urllib.request.urlopen(probe, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(
            f"mlflow.tracking_uri={uri}: no MLflow tracking server answers there ({reason}); "
            f"start one, or unset MLFLOW_TRACKING_URI to use the local SQLite store"
        )


@functools.lru_cache(maxsize=None)
def connect(uri: str, experiment_name: str) -> Store:
    """Open the store (creating or upgrading a SQLite file) and find or create the experiment.

    Cached per process: opening a store imports MLflow's SQL store and may run its migrations,
    seconds that a sweep's later jobs need not pay again.
    """
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(
                experiment_name, artifact_location=_artifact_location(uri)
            )
        except MlflowException as error:  # another process created it first
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    elif experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"mlflow.experiment_name={experiment_name} names a deleted experiment in {uri}: "
            f"restore it (mlflow experiments restore) or choose another name"
        )
    else:
        experiment_id = experiment.experiment_id
    return Store(uri=uri, experiment_name=experiment_name, experiment_id=experiment_id, client=client)


def open_experiment(uri: str, experiment_name: str) -> Store:
    """An existing experiment of the store, for reading; a ConfigError if there is none."""
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise ConfigError(f"experiment {experiment_name!r} is not in {uri} (experiments there: {names})")
    return Store(uri=uri, experiment_name=experiment_name, experiment_id=experiment.experiment_id, client=client)


def open_run(uri: str, run_id: str) -> Store:
    """The store holding `run_id`, set to that run's experiment."""
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
    except MlflowException as error:
        raise ConfigError(f"run {run_id} is not in {uri}: {error.message}")
    return Store(uri=uri, experiment_name=experiment.name, experiment_id=experiment.experiment_id, client=client)


def _artifact_location(uri: str) -> Optional[str]:
    """For a SQLite store, artifacts go beside the database file (a server decides its own)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    return (database.parent / ARTIFACTS_DIR).as_uri()
