"""The runner from Python: the runs, sweeps and batches of `python -m runner`, for notebooks.

    >>> import runner
    >>> result = runner.run("backend=numpy", "lr=0.1", "epochs=5")  # doctest: +SKIP
    >>> result.outcome, result.summary["final_loss"], result.trajectory.x[:3]  # doctest: +SKIP
    ('not_converged', 2.68435..., array([5. , 4. , 3.2]))
    >>> result.figure  # doctest: +SKIP
    <the article's figure: Jupyter shows it>
    >>> grid = runner.sweep("backend=numpy,torch", "lr=0.1,0.3")  # doctest: +SKIP
    >>> grid.table[["backend", "lr", "final_loss", "outcome"]]  # doctest: +SKIP
    >>> dense = runner.sweep("experiment=momentum_map", batch=True)  # doctest: +SKIP
    >>> runner.load(result.run_id), runner.load_sweep(grid.parent_run_id)  # doctest: +SKIP

(The examples run in docs/runner.ipynb, which the tests execute in a Jupyter kernel.)

Each call goes through Hydra exactly as the command line does: the same `conf/`, overrides,
checks, job code and MLflow records, so `runner.run("backend=tf", "lr=0.1")` and `python -m
runner backend=tf lr=0.1` record runs with the same params, tags, metrics and artifacts. Bad
input raises `ConfigError` with the line the command line prints, and records nothing.

A call leaves the calling process as it found it: the working directory (never changed), the
logging configuration (Hydra's handlers are there only during the call, so the run's lines show
in the cell and its `runner.log` is written), Hydra's global state, and no MLflow active run
(the runner never uses one). Outputs land under `outputs/` of the current folder; the store is
the one the command line uses from there (`mlflow.tracking_uri=...` or `$MLFLOW_TRACKING_URI`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from hydra.types import RunMode

from runner.errors import FINISHED, ConfigError

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure
    from omegaconf import DictConfig

    from runner.descent.loop import Trajectory


class SweepFailed(RuntimeError):
    """Some jobs of a sweep failed (the others ran and are recorded); `result` is the sweep."""

    def __init__(self, message: str, result: "Sweep") -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Run:
    """A recorded run (or batch), as read back from its MLflow store."""

    run_id: str
    tracking_uri: str
    name: str
    status: str  # FINISHED, FAILED, KILLED or RUNNING
    params: dict[str, str]
    tags: dict[str, str]
    summary: dict[str, float]  # the run's single-valued metrics: final_loss, rate, wall_time_s, ...
    config: Optional["DictConfig"]  # the job's composed config, as stored with the run
    trajectory: Optional["Trajectory"] = None  # every epoch: .x, .loss, .grad (NumPy arrays); None for a batch
    points: Optional["pandas.DataFrame"] = None  # a batch's points (points.csv); None for a single run
    artifacts: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """converged, not_converged or diverged (a batch: its outcome counts are in `summary`)."""
        return self.tags.get("outcome", self.status.lower())

    @property
    def figure(self) -> "Figure":
        """The article's figure for a scalar parameter (the loss curve and the path taken), the
        path of each coordinate for a vector, a model's training curves; a batch: its figure as
        the run recorded it."""
        from runner.problems import losses
        from runner.problems.expressions import NUMPY_OPS
        from runner.records import plots

        _figures_inline()
        if self.trajectory is None:
            raise ValueError(f"run {self.run_id} is a batch: its figures are artifacts ({', '.join(self.artifacts)})")
        if self.trajectory.measured:
            return plots.training_figure(self.trajectory)
        if self.trajectory.x.ndim == 1:
            return plots.article_figure(losses.from_config(self.config.loss).objective(NUMPY_OPS, ()), self.trajectory)
        return plots.path_figure(self.trajectory)

    def artifact_file(self, path: str) -> Path:
        """One of the run's artifacts (`artifacts`) as a local file: a figure, points.csv, ..."""
        return _downloaded(self.tracking_uri, self.run_id, path)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in
                       {"run": f"{self.name} ({self.run_id})", "status": self.status, "outcome": self.outcome,
                        **{k: f"{v:.6g}" for k, v in sorted(self.summary.items())}}.items())
        return f"<table>{rows}</table>"


@dataclass
class Sweep:
    """A recorded sweep: its parent run, its report table and its runs' ids."""

    parent_run_id: str
    tracking_uri: str
    status: str
    table: "pandas.DataFrame"  # the report: one row per run (a batched sweep: per batch)
    run_ids: list[str]
    folder: Optional[Path] = None  # the sweep's output folder, where this process ran it

    @property
    def failed(self) -> "pandas.DataFrame":
        return self.table[self.table["status"] != FINISHED]

    def runs(self) -> list[Run]:
        """Every run of the sweep, read back (`load`)."""
        return [load(run_id, self.tracking_uri) for run_id in self.run_ids]

    def report_file(self, name: str) -> Path:
        """A file of the sweep's report (runs.csv, final_loss_vs_lr.png, trajectories.png, ...):
        from the sweep's folder where it ran here, else from its parent run's artifacts."""
        if self.folder is not None and (self.folder / "report" / name).exists():
            return self.folder / "report" / name
        return _downloaded(self.tracking_uri, self.parent_run_id, f"report/{name}")

    def _repr_html_(self) -> str:
        return f"<p>sweep {self.parent_run_id}: {self.status}</p>{self.table.to_html(index=False)}"


def run(*overrides: str) -> Run:
    """One run, as `python -m runner OVERRIDES` records it; the run read back from the store.

    Overrides are strings, as typed on the command line ("backend=tf", "lr=0.1"); a sweep
    (`lr=0.1,0.3`) is `sweep(...)`'s."""
    if any(o.is_sweep_override() for o in _parsed(overrides)):
        raise ConfigError(f"{' '.join(overrides)}: a sweep: use runner.sweep(...) (runner.run runs one setting)")
    recorded: list[Any] = []

    def task(cfg: "DictConfig") -> float:
        from runner import app

        recorded.append(app.record(cfg))
        return recorded[-1].value

    with _hydra() as hydra:
        mode = hydra.get_mode(config_name="config", overrides=list(overrides))
        if mode == RunMode.MULTIRUN:  # a preset that sweeps
            raise ConfigError(f"{' '.join(overrides)}: a sweep (hydra.mode=MULTIRUN): use runner.sweep(...) "
                              "(runner.run runs one setting)")
        # As Hydra's command line: the mode is said in an override when the config leaves it open.
        arguments = [*overrides, *([] if mode else ["hydra.mode=RUN"])]
        job = hydra.run(config_name="config", task_function=task, overrides=arguments)
        job.return_value  # noqa: B018 - raises the job's exception, as the command line would
    from runner.records import tracking

    cfg = job.cfg
    return load(recorded[0].run_id, tracking.tracking_uri(cfg.mlflow.tracking_uri, Path.cwd()))


def sweep(*overrides: str, batch: bool | list[str] = False) -> Sweep:
    """A sweep, as `python -m runner OVERRIDES` runs it (`hydra.sweeper.batch=...` with `batch`):
    every job checked first, a parent run, the jobs through the configured launcher, the report.
    Raises `SweepFailed` (with the sweep as `.result`) when a job failed."""
    from runner import app, job
    from runner.sweeps.sweep import JobsFailed

    folder = Path("outputs", "multirun", *datetime.datetime.now().strftime("%Y-%m-%d %H-%M-%S-%f").split())
    arguments = [*overrides, f"hydra.sweep.dir={folder}"]
    if batch:
        arguments.append(f"hydra.sweeper.batch={'true' if batch is True else '[' + ','.join(batch) + ']'}")
    failure: Optional[BaseException] = None
    with _hydra() as hydra:
        if hydra.get_mode(config_name="config", overrides=arguments) != RunMode.MULTIRUN:
            arguments.append("hydra.mode=MULTIRUN")  # as `python -m runner --multirun` (runner.__main__ adds it)
        try:
            # app.main given a config runs it as the command line's jobs run (Hydra passes it through)
            hydra.multirun(config_name="config", task_function=app.main, overrides=arguments)
        except JobsFailed as error:
            failure = error
    parent = folder / job.PARENT_FILE
    if not parent.exists():
        raise ConfigError(f"{' '.join(overrides)}: the sweep did not start") from failure
    started = json.loads(parent.read_text())
    result = load_sweep(started["run_id"], started["tracking_uri"])
    result.folder = folder.resolve()
    if failure is not None:
        raise SweepFailed(str(failure), result)
    return result


def load(run_id: str, tracking_uri: Optional[str] = None) -> Run:
    """A recorded run or batch, from the store at `tracking_uri` (default: as the command line
    finds it from here)."""
    from omegaconf import OmegaConf

    from runner.descent.loop import Trajectory
    from runner.records import tables, tracking

    uri = tracking.tracking_uri(tracking_uri, Path.cwd())
    store = tracking.open_run(uri, run_id)
    record = store.record(run_id)
    artifacts = store.artifact_paths(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        config_file = store.download(run_id, "hydra/config.yaml", Path(tmp))
        config = OmegaConf.load(config_file) if config_file else None
        trajectory = points = None
        if record.tags.get("kind") == "batch":
            import pandas

            points_file = store.download(run_id, "points.csv", Path(tmp))
            points = pandas.read_csv(points_file) if points_file else None
        elif csv_file := store.download(run_id, "trajectory.csv", Path(tmp)):
            trajectory = Trajectory.from_columns(tables.read_series(csv_file), record.tags.get("device", "cpu"))
    series = trajectory.columns() if trajectory is not None else {}
    summary = {k: v for k, v in record.metrics.items() if k not in series}
    return Run(run_id, uri, record.name, record.status, record.params, record.tags, summary, config, trajectory,
               points, artifacts)


def load_sweep(parent_run_id: str, tracking_uri: Optional[str] = None) -> Sweep:
    """A recorded sweep (grid, search or batched), from its parent run: its report table."""
    import pandas

    from runner.records import tracking

    uri = tracking.tracking_uri(tracking_uri, Path.cwd())
    store = tracking.open_run(uri, parent_run_id)
    parent = store.record(parent_run_id)
    if parent.tags.get("kind") != "sweep":
        raise ConfigError(f"run {parent_run_id} is not a sweep's parent run (kind={parent.tags.get('kind')})")
    with tempfile.TemporaryDirectory() as tmp:
        table_file = store.download(parent_run_id, "report/runs.csv", Path(tmp))
        table = pandas.read_csv(table_file) if table_file else pandas.DataFrame()
    children = [record.run_id for record in store.children(parent_run_id)]
    return Sweep(parent_run_id, uri, parent.status, table, children)


def _figures_inline() -> None:
    """In Jupyter, a Matplotlib figure that is a cell's value shows as a picture. IPython does
    that once pyplot has been imported; the runner's figures are made without pyplot (no global
    state), so it says so itself."""
    from runner.records.progress import in_jupyter

    if in_jupyter():
        import IPython
        from IPython.core.pylabtools import select_figure_formats

        select_figure_formats(IPython.get_ipython(), {"png"})


def _downloaded(uri: str, run_id: str, path: str) -> Path:
    """An artifact of a run, downloaded into a folder of its own that lives as long as the process."""
    from runner.records import tracking

    found = tracking.open_run(uri, run_id).download(run_id, path, Path(tempfile.mkdtemp(prefix="runner-")))
    if found is None:
        raise FileNotFoundError(f"run {run_id} has no artifact {path}")
    return found


def _parsed(overrides: tuple[str, ...]) -> list:
    """The overrides as Hydra parses them; none where Hydra cannot, which it then says itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        return []


@contextlib.contextmanager
def _hydra() -> Iterator[Any]:
    """Hydra, set up as `python -m runner` sets it up, and afterwards gone again: its global
    state cleared and the logging configuration as it was. Hydra's errors and the runner's
    refusals come out as one ConfigError, with the line the command line prints."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from runner import app, schema

    version.setbase("1.3")  # as app.main's @hydra.main: the job runs where it was started
    with _logging_kept():
        GlobalHydra.instance().clear()
        try:
            yield Hydra.create_main_hydra2(task_name="runner", config_search_path=create_config_search_path(app.CONF_DIR))
        except schema.Refused as error:
            raise ConfigError(str(error)) from None
        except (HydraException, OmegaConfBaseException) as error:
            # What Hydra's command line prints: the error, and an OmegaConf error behind it.
            cause = f"\n{error.__cause__}" if isinstance(error.__cause__, OmegaConfBaseException) else ""
            raise ConfigError(f"{error}{cause}".strip()) from None
        finally:
            GlobalHydra.instance().clear()


@contextlib.contextmanager
def _logging_kept() -> Iterator[None]:
    """The loggers that exist before the call (the root logger among them, which Hydra
    configures) get their handlers, levels and switches back on the way out; handlers added to
    them are closed (their log files complete). Loggers that libraries create meanwhile keep what
    the libraries set (SQLAlchemy quiets its own at import, say)."""
    manager = logging.root.manager
    loggers = [logging.root, *(lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    saved = {lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers}
    try:
        yield
    finally:
        for lg, (level, handlers, propagate, disabled) in saved.items():
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers[:] = handlers
            lg.level, lg.propagate, lg.disabled = level, propagate, disabled
