"""The search preset as a user runs it: Optuna through the runner's sweeper, each trial an
MLflow child run, the best trial on the parent run."""

from __future__ import annotations

import pytest
from conftest import run_cli, runs_of
from mlflow import MlflowClient

import runner
from runner import reproduce

pytestmark = pytest.mark.slow

DEEP_WELL = -3.513905  # the tilted well's global minimum; the shallow one is -1.070


def search(tmp_path, store_uri, *args):
    result = run_cli("experiment=search_lr", *args, cwd=tmp_path, store_uri=store_uri)
    return result, runs_of(store_uri, "search_lr"), runs_of(store_uri, "search_lr", sweeps=True)


def test_the_search_preset_finds_the_deep_well_and_records_every_trial(tmp_path, store_uri, capsys):
    result, trials, parents = search(tmp_path, store_uri, "hydra.sweeper.search.n_trials=12")
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert len(trials) == 12 and all(t.info.status == "FINISHED" for t in trials)
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    for t in trials:  # every sampled value inside the preset's space
        assert 0.001 <= float(t.data.params["lr"]) <= 0.1
        assert 0.0 <= float(t.data.params["optimizer.momentum"]) <= 0.95
        assert t.data.params["loss"] == "tilted_well" and t.data.params["optimizer"] == "momentum"

    finals = [t.data.metrics["final_loss"] for t in trials]
    best = parent.data.metrics["best_final_loss"]
    assert best == min(finals) and best == pytest.approx(DEEP_WELL, abs=1e-4)
    assert any(f == pytest.approx(-1.0702, abs=1e-3) for f in finals)  # some trials stay in the shallow well
    (winner,) = [t for t in trials if t.data.metrics["final_loss"] == best][:1]
    assert float(parent.data.params["best.lr"]) == float(winner.data.params["lr"])
    assert float(parent.data.params["best.optimizer.momentum"]) == float(winner.data.params["optimizer.momentum"])

    # The whole search reproduced: every trial re-run from its stored config, and compared.
    assert reproduce.main([parent.info.run_id, "--tracking-uri", store_uri]) == 0
    out = capsys.readouterr().out
    assert "12 runs through basic (as it ran)" in out and out.rstrip().endswith("12 of 12 runs identical")

    output = result.stdout + result.stderr
    assert "Search: best of 12 trials is #" in output
    assert "optimizer.momentum" in output.split("Sweep report:")[1]  # the searched key is a column
    artifacts = {a.path for a in MlflowClient(store_uri).list_artifacts(parent.info.run_id, "search")}
    assert artifacts == {"search/trials.csv"}


def test_the_same_seed_gives_the_same_trials(here, store_uri, migrated_store, monkeypatch):
    """(In this process, through the Python API, which runs the command line's sweeper.)"""
    import shutil

    other = here / "other"
    other.mkdir()
    shutil.copy(migrated_store, other / "mlflow.db")
    runner.sweep("experiment=search_lr", "hydra.sweeper.search.n_trials=5")
    first = runs_of(store_uri, "search_lr")
    monkeypatch.chdir(other)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other / 'mlflow.db'}")
    runner.sweep("experiment=search_lr", "hydra.sweeper.search.n_trials=5")
    second = runs_of(f"sqlite:///{other / 'mlflow.db'}", "search_lr")
    chosen = [[(t.data.params["lr"], t.data.params["optimizer.momentum"]) for t in runs] for runs in (first, second)]
    assert chosen[0] == chosen[1] and len(set(chosen[0])) == 5


def test_trials_in_parallel_workers(tmp_path, store_uri):
    result, trials, (parent,) = search(tmp_path, store_uri, "hydra/launcher=joblib",
                                       "hydra.sweeper.search.n_trials=4", "hydra.sweeper.search.n_jobs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    assert parent.info.status == "FINISHED" and "best_final_loss" in parent.data.metrics


@pytest.mark.parametrize("args, message", [
    (["hydra.sweeper.search.sampler=grid"], "hydra.sweeper.search.sampler=grid: allowed values are tpe, random"),
    (["hydra.sweeper.search.n_trials=0"], "hydra.sweeper.search.n_trials=0: must be an integer >= 1"),
    (["lr=interval(0.5, 0.1)"], "lr: interval(0.5, 0.1) is empty"),
    (["lr=tag(log, interval(0, 0.1))"], "lr: `low > 0` must hold for `log=True`"),  # Optuna's own check
    (["optimizer.momentum=interval(0.9, 1.0)"], "optimizer.momentum=1.0"),  # trials below 1 pass; the end does not
    (["lrr=interval(0, 1)"], "Key 'lrr' not in 'RunnerConfig'"),
], ids=["sampler", "n_trials", "empty-interval", "log-from-zero", "out-of-range", "unknown-key"])
def test_a_bad_search_setting_is_one_line_and_records_nothing(tmp_path, store_uri, monkeypatch, args, message):
    """The first as typed, in a process of its own; the others in this process through the Python
    API, which refuses bad input with the command line's message."""
    import runner

    if args == ["hydra.sweeper.search.sampler=grid"]:
        result, trials, parents = search(tmp_path, store_uri, *args)
        assert result.returncode == 1
        assert message in result.stderr and "Traceback" not in result.stderr
    else:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
        with pytest.raises(runner.ConfigError) as refused:
            runner.sweep("experiment=search_lr", *args)
        assert message in str(refused.value)
        trials, parents = runs_of(store_uri, "search_lr"), runs_of(store_uri, "search_lr", sweeps=True)
    assert trials == [] and parents == []


def test_a_search_typed_on_the_command_line_and_an_interval_without_one(here, store_uri):
    """The overrides as a user types them, here through the Python API, which parses them as the
    command line does (the search preset's test runs one as typed, in a process of its own)."""
    searched = runner.sweep("loss=double_well", "x_start=2.5", "epochs=50", "lr=tag(log, interval(0.001, 0.2))",
                            "hydra.sweeper.search.n_trials=4")
    assert searched.status == "FINISHED"
    trials = runs_of(store_uri)
    assert len(trials) == 4 and all(0.001 <= float(t.data.params["lr"]) <= 0.2 for t in trials)
    with pytest.raises(runner.ConfigError) as swept:
        runner.sweep("lr=interval(0.001, 0.2)")
    assert "lr=interval(0.001, 0.2): an interval is searched, not swept: add hydra.sweeper.search.n_trials=N" in str(swept.value)
    with pytest.raises(runner.ConfigError) as empty:
        runner.sweep("hydra.sweeper.search.n_trials=3")
    assert "hydra.sweeper.search.n_trials is set but nothing is searched" in str(empty.value)
    assert len(runs_of(store_uri)) == 4 and len(runs_of(store_uri, sweeps=True)) == 1


def test_an_interrupted_search_goes_on_with_skip_done(here, store_uri):
    """With the same seed Optuna asks for the same trials; those already recorded are told their
    recorded loss instead of running again. (In this process, through the Python API.)"""
    runner.sweep("experiment=search_lr", "hydra.sweeper.search.n_trials=4")
    first = runs_of(store_uri, "search_lr")
    again = runner.sweep("experiment=search_lr", "hydra.sweeper.search.n_trials=6", "skip_done=true")
    trials, parents = runs_of(store_uri, "search_lr"), runs_of(store_uri, "search_lr", sweeps=True)
    assert again.status == "FINISHED" and len(trials) == 6  # 4 from the first search, 2 new
    assert [t.info.run_id for t in trials[:4]] == [t.info.run_id for t in first]
    newest = parents[-1]
    assert [t.data.tags["mlflow.parentRunId"] for t in trials[4:]] == [newest.info.run_id] * 2
    assert len(again.table) == 6 and sorted(again.table["run_id"]) == sorted(t.info.run_id for t in trials)
    assert newest.data.metrics["best_final_loss"] == min(t.data.metrics["final_loss"] for t in trials)
