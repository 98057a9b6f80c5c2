"""Config composition as Hydra does it, the schema's errors, and sweep detection."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import BACKENDS, composed
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException

from runner.__main__ import hydra_argv
from runner.app import CONF_DIR, flat_params
from runner.schema import ConfigError, check_ranges


def test_defaults_are_the_article():
    cfg = composed()
    assert (cfg.backend.name, cfg.loss.name, cfg.x_start, cfg.epochs, cfg.lr) == ("numpy", "square", 5.0, 15, 0.3)
    assert (cfg.device.value, cfg.dtype.value) == ("cpu", "float32")
    assert cfg.mlflow.experiment_name == "runner" and cfg.mlflow.tracking_uri is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_composes(backend):
    assert composed(f"backend={backend}").backend.name == backend


def test_overrides_are_typed():
    cfg = composed("lr=1", "epochs=3", "x_start=-2", "device=auto", "dtype=float64")
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert (cfg.epochs, cfg.x_start, cfg.device.value, cfg.dtype.value) == (3, -2.0, "auto", "float64")


@pytest.mark.parametrize("override, message", [
    ("lr=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("epochs=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
    ("lrr=0.1", "Could not override 'lrr'"),
    ("backend=mxnet", "Could not find 'backend/mxnet'"),
    ("loss=nope", "Could not find 'loss/nope'"),
    ("device=gpu", "Invalid value 'gpu', expected one of [cpu, cuda, auto]"),
    ("dtype=float16", "Invalid value 'float16', expected one of [float32, float64]"),
])
def test_schema_errors_fail_at_composition(override, message):
    with pytest.raises(ConfigCompositionException) as error:
        composed(override)
    assert message in f"{error.value} {error.value.__cause__}"


def test_a_misspelt_key_in_a_loss_file_fails(tmp_path):
    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "typo.yaml").write_text("name: typo\nvalue: x**2\ngrad: 2*x\nminimizer: 0\n")
    with pytest.raises(ConfigCompositionException) as error:
        composed("loss=typo", f"hydra.searchpath=[file://{tmp_path}]")
    assert "Key 'minimizer' not in 'LossConfig'" in f"{error.value} {error.value.__cause__}"


def test_bad_choice_lists_the_options():
    with pytest.raises(ConfigCompositionException) as error:
        composed("backend=mxnet")
    assert "Available options in 'backend'" in str(error.value)
    assert all(backend in str(error.value) for backend in BACKENDS)


@pytest.mark.parametrize("override, message", [
    ("epochs=-1", "epochs=-1 is not allowed: epochs must be an integer >= 0"),
    ("lr=0", "lr=0.0 is not allowed: lr must be a finite number > 0"),
    ("lr=-0.1", "lr=-0.1 is not allowed: lr must be a finite number > 0"),
    ("lr=inf", "lr=inf is not allowed"),
    ("x_start=nan", "x_start=nan is not allowed: x_start must be a finite number"),
    ("x_start=-inf", "x_start=-inf is not allowed"),
])
def test_ranges_are_checked_after_composition(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_ranges(composed(override))


def test_ranges_accept_the_edges():
    check_ranges(composed("epochs=0", "lr=1e-9", "x_start=0"))


def test_params_are_the_flat_resolved_config():
    params = flat_params(composed("backend=tf", "lr=0.1"))
    assert params["backend"] == "tf" and params["loss"] == "square"
    assert params["lr"] == 0.1 and params["epochs"] == 15 and params["x_start"] == 5.0
    assert params["device"] == "cpu" and params["dtype"] == "float32"
    assert params["loss.value"] == "x**2" and params["loss.grad"] == "2*x"
    assert not any(key.startswith("mlflow") for key in params)


@pytest.mark.parametrize("argv, multirun", [
    (["backend=tf", "lr=0.1,0.3"], True),
    (["backend=numpy,tf,torch"], True),
    (["lr=range(0.1,0.5,0.1)"], True),
    (["lr=choice(0.1,0.3)"], True),
    (["backend=glob(*)"], True),
    (["lr=interval(0,1)"], True),
    (["backend=tf", "lr=0.3"], False),
    (["loss.value='x**2 + 1'"], False),
    (["loss.value='max(x, 1)'"], False),   # a quoted comma is a value, not a sweep
    ([], False),
])
def test_sweep_syntax_becomes_a_multirun(argv, multirun):
    assert hydra_argv(argv) == (["--multirun", *argv] if multirun else argv)


@pytest.mark.parametrize("argv", [
    ["-m", "lr=0.1,0.3"], ["--multirun", "lr=0.1,0.3"], ["--cfg", "job", "lr=0.1,0.3"],
    ["--help"], ["--info", "defaults"], ["--run", "lr=0.1,0.3"], ["lr=0.1,"],
])
def test_explicit_modes_and_bad_syntax_are_left_to_hydra(argv):
    assert hydra_argv(argv) == argv


# Every preset of conf/experiment/, and how many jobs (or batch points) it makes.
PRESETS = {"article": 3, "lr_sweep": 3 * 15, "optimizers": 3 * 4, "lr_dense": 3 * 1199, "momentum_map": 2 * 200 * 200,
           "search_lr": 30, "classify": 2 * 2 * 4 * 3 * 5, "regression": 4 * 120, "edge_of_stability": 4,
           "lr_range_test": 1, "reddi": 2}


def sweep_values(text: str) -> list:
    """A sweeper param's values as Hydra parses them: a choice's or a range's every value, an
    interval's two ends (a search samples between them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    override = OverridesParser.create().parse_override(f"key={text}")
    if override.is_interval_sweep():
        interval = override.value()
        assert isinstance(interval, IntervalSweep)
        return [interval.start, interval.end]
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]


def sweep_jobs(overrides: list[str], hydra_overrides: list[str] = ()):
    """The master config of `python -m runner --multirun OVERRIDES` and its jobs' overrides, as
    the runner's sweeper expands them (a batched preset: one job per batch)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from runner.sweeps import sweep

    loader = GlobalHydra.instance().config_loader()
    master = loader.load_configuration("config", [*hydra_overrides, *overrides], RunMode.MULTIRUN)
    assert master.hydra.sweep.dir  # resolved (its ${now:}) before any job, as the sweeper does
    params = [f"{key}={value}" for key, value in (master.hydra.sweeper.params or {}).items()]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *overrides])
    if master.hydra.sweeper.search.n_trials:  # a search: its trials come from Optuna, one by one
        jobs = []
    elif master.hydra.sweeper.batch:
        jobs, _ = sweep.batch_jobs(parsed, master.hydra.sweeper.batch, BasicSweeper.split_arguments, None)
    else:
        jobs = [job for chunk in BasicSweeper.split_arguments(parsed, None) for job in chunk]
    return loader, master, jobs


def test_the_presets_are_these():
    found = sorted(path.stem for path in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
    assert found == sorted(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_composes_and_its_corner_jobs_are_valid(preset, monkeypatch):
    """Each preset composes, makes as many jobs (or points) as its comment says, and its first
    and last value of every swept key, in every combination, is a job the runner accepts: checked
    as the sweeper checks its jobs before running any (`runner.sweeps.sweep.check_jobs`)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # check_jobs probes a server's: none here
    import itertools

    from runner.problem import from_config
    from runner.sweeps import sweep as sweeping

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader, sweep, _ = sweep_jobs([f"experiment={preset}"])
        params = {key: sweep_values(str(text)) for key, text in (sweep.hydra.sweeper.params or {}).items()}
        search = sweep.hydra.sweeper.get("search") or {}
        count = search.get("n_trials") or math.prod(len(values) for values in params.values())
        assert count == PRESETS[preset]
        corners = [[*(f"{k}={v}" for k, v in zip(params, corner)), f"experiment={preset}"]
                   for corner in itertools.product(*([values[0], values[-1]] for values in params.values()))]
        for job in sweeping.check_jobs(loader, sweep, corners):
            problem, _, engine, grid = from_config(job)
            assert grid is None and problem.points == 1


# Sweeps whose jobs share a family in every way `runner.sweeps.compose` tells apart: a preset's
# grid (backend × lr), a group and values, lists, nested keys, strings, a number then a list,
# override_dirname's excluded keys; each with how many of its jobs Hydra composes whole (the
# presets' other grids sweep config groups only: every job is a family of its own).
FAMILIES = {
    "lr_sweep preset": (["experiment=lr_sweep"], [], 3),
    "groups and values": (["backend=numpy,torch", "lr=0.1,0.2,0.3", "epochs=5"], [], 2),
    "lists": (["loss=ill_conditioned", "optimizer=nesterov", "x_start=[1,1],[-2,0.5]", "optimizer.momentum=0,0.9"], [], 1),
    "nested and strings": (["loss=quadratic", "loss.params.a=0.5,2", "mlflow.experiment_name=a,b"], [], 1),
    "a number then a list": (["x_start=2.5,[1,1]", "dtype=float32,float64"], [], 1),
    "excluded keys": (["lr=0.1,0.2", "seed=0,1"], ["hydra.job.config.override_dirname.exclude_keys=[seed]"], 1),
}


@pytest.mark.parametrize("sweep", sorted(FAMILIES))
def test_a_sweeps_jobs_composed_once_a_family_are_hydras_own(sweep):
    """`runner.sweeps.compose` against Hydra composing each job whole: the same config, key for key
    in the same order, the same flags, Hydra's fields included; one whole composition a family."""
    from omegaconf import OmegaConf

    from runner.sweeps import compose as composing

    overrides, hydra_overrides, families = FAMILIES[sweep]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader, master, jobs = sweep_jobs(overrides, hydra_overrides)
        composed_whole = []

        class Counting:
            def load_sweep_config(self, master_config, job):
                composed_whole.append(job)
                return loader.load_sweep_config(master_config, job)

        fast = list(composing.jobs(Counting(), master, jobs))
        assert len(fast) == len(jobs) and len(composed_whole) == families < len(jobs)
        derived = [i for i, job in enumerate(jobs) if job not in composed_whole]
        for i in derived[:: max(1, len(derived) // 4)] + derived[-1:]:  # each a whole composition: 0.1 s
            job, cfg = jobs[i], fast[i]
            whole = loader.load_sweep_config(master, list(job))
            assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(whole), job
            assert OmegaConf.to_container(cfg) == OmegaConf.to_container(whole), job
            assert (OmegaConf.is_struct(cfg), OmegaConf.is_readonly(cfg.hydra)) == (True, False)
            assert cfg.hydra.sweep.dir == master.hydra.sweep.dir  # the sweep's one folder


def test_a_bad_value_in_a_later_job_gets_hydras_own_message():
    from runner.sweeps import compose as composing

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader, master, _ = sweep_jobs(["lr=0.1"])
        fast = composing.jobs(loader, master, [["lr=0.1"], ["lr=abc"]])
        assert next(fast).lr == 0.1
        with pytest.raises(ConfigCompositionException, match="Error merging override lr=abc") as raised:
            next(fast)
        assert "could not be converted to Float" in str(raised.value.__cause__)


def test_conf_config_yaml_is_the_one_place_of_the_defaults():
    """The schema types the settings and sets none of them; conf/config.yaml sets them all, and a
    config recorded before a key existed (re-run months later) is completed from it."""
    from omegaconf import OmegaConf

    from runner.schema import RunnerConfig, defaults

    unset = OmegaConf.missing_keys(OmegaConf.structured(RunnerConfig))
    assert {"epochs", "lr", "x_start", "stop.tolerance", "batch.trajectory_mb", "mlflow.experiment_name"} <= unset
    recorded = OmegaConf.to_container(composed("lr=0.1"))
    del recorded["batch"], recorded["stop"]["diverge_above"]
    completed = OmegaConf.merge(defaults(), recorded)
    assert completed == composed("lr=0.1") and completed.lr == 0.1 and completed.batch.trajectory_mb == 64


# Computed on the configs as they were recorded before the layout moved and new rules came
# (commit d992323): skip_done finds earlier runs by this hash, so a change to the config's keys,
# defaults or hashing that moves it makes every recorded run look new.
RECORDED_HASHES = {
    (): "c60ccfb3f011df207b49",
    ("backend=torch", "lr=0.1", "optimizer=adam"): "98627cab573bde96779c",
    ("loss=rosenbrock", "x_start=[-1.5,2]", "optimizer=momentum", "dtype=float64"): "7d5e3062b726e74cab2f",
}


@pytest.mark.parametrize("overrides", sorted(RECORDED_HASHES), ids=lambda o: " ".join(o) or "defaults")
def test_a_config_keeps_the_hash_its_runs_were_recorded_under(overrides):
    from runner.records.provenance import config_hash

    assert config_hash(composed(*overrides)) == RECORDED_HASHES[overrides]
