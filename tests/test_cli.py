"""End to end: `python -m runner ...` in a subprocess, read back from MLflow as a user would."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import TEST_BACKENDS, TEST_ENGINES, run_cli, runs_of
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def metric_series(client, run_id, name):
    history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
    return [m.step for m in history], np.array([m.value for m in history])


def test_a_tf_lr_sweep_typed_as_is(tmp_path, store_uri):
    result = run_cli("backend=tf", "lr=0.1,0.3", cwd=tmp_path, store_uri=store_uri)
    assert result.returncode == 0, result.stderr

    runs = runs_of(store_uri)
    assert [r.data.params["lr"] for r in runs] == ["0.1", "0.3"]
    client = MlflowClient(store_uri)
    for run in runs:
        lr = float(run.data.params["lr"])
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"tf-sgd-square-lr{lr:g}"
        closed = 5.0 * (1 - 2 * lr) ** np.arange(16)
        for name, expected in (("x", closed), ("loss", closed**2), ("grad", 2 * closed)):
            steps, values = metric_series(client, run.info.run_id, name)
            assert steps == list(range(16))
            np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
        params = run.data.params
        assert {k: params[k] for k in ("backend", "loss", "epochs", "x_start", "device", "dtype")} == {
            "backend": "tf", "loss": "square", "epochs": "15", "x_start": "5.0", "device": "cpu",
            "dtype": "float32"}
        tags = run.data.tags
        assert tags["backend"] == "tf" and tags["framework"] == "tensorflow"
        assert tags["framework_version"].startswith("2.") and tags["device"] == "/CPU:0"

        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"gradient_descent.png", "trajectory.csv", "runner.log", "hydra"} <= artifacts
        hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, "hydra")}
        assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/hydra.yaml"} <= hydra_files
        local = client.download_artifacts(run.info.run_id, "trajectory.csv", str(tmp_path / run.info.run_id))
        rows = list(csv.DictReader(io.StringIO(open(local).read())))
        assert len(rows) == 16 and float(rows[1]["x"]) == pytest.approx(5.0 * (1 - 2 * lr))
        png = client.download_artifacts(run.info.run_id, "gradient_descent.png", str(tmp_path / run.info.run_id))
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # Artifacts of a SQLite store sit beside it, not in ./mlruns of wherever the runner ran.
    assert not (tmp_path / "mlruns").exists()

    # The terminal shows the article's line and where each run is.
    assert "[job 2/2 tf sgd lr=0.3] [5.   2.   0.8  0.32 0.13 0.05 0.02 0.01 0.   0. " in result.stdout + result.stderr
    assert f"MLflow: run {runs[1].info.run_id}" in result.stdout + result.stderr


LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[(HYDRA|INFO)\] ")
REPORT_LINE = re.compile(r"^(backend |-------  |(numpy|tf|torch|jax) +sgd )")


def test_three_backends_agree_and_say_only_their_own_lines(tmp_path):
    """`make run` on a fresh clone: no MLFLOW_TRACKING_URI, so a new store (mlflow.db, migrated by
    this command, and its artifacts beside it) in the launch folder, TensorFlow imported for the
    first time. Every line is the runner's or Hydra's: no TensorFlow, absl, oneDNN or MLflow
    start-up chatter."""
    result = run_cli("experiment=article", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()
    store_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if line and not LOG_LINE.match(line) and not REPORT_LINE.match(line)] == []
    runs = runs_of(store_uri)
    assert sorted(r.data.tags["backend"] for r in runs) == ["numpy", "tf", "torch"]
    assert all(r.info.status == "FINISHED" for r in runs)
    client = MlflowClient(store_uri)
    xs = [metric_series(client, r.info.run_id, "x")[1] for r in runs]
    for other in xs[1:]:
        np.testing.assert_allclose(other, xs[0], rtol=1e-6, atol=1e-7)
    output = result.stdout + result.stderr
    for job, backend in enumerate(("numpy", "tf", "torch"), start=1):
        assert f"[job {job}/3 {backend} sgd lr=0.3] [5.   2.   0.8  0.32 0.13 0.05 0.02 0.01 0. " in output


def test_a_numpy_run_imports_no_other_framework(tmp_path, store_uri):
    result = run_cli("epochs=3", cwd=tmp_path, store_uri=store_uri, python_flags=("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "numpy" in imported and "mlflow" in imported
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "torch", "jax", "keras")}


def test_show_config_runs_nothing(tmp_path, store_uri):
    result = run_cli("--cfg", "job", "backend=tf", cwd=tmp_path, store_uri=store_uri)
    assert result.returncode == 0, result.stderr
    assert "name: tf" in result.stdout and "lr: 0.3" in result.stdout
    assert runs_of(store_uri) == [] and not (tmp_path / "outputs").exists()


def run_in_terminal(*args: str, cwd, store_uri: str) -> str:
    """`python -m runner ARGS` with a pseudo-terminal as its stdin, stdout and stderr; all it wrote."""
    import pty

    controller, terminal = pty.openpty()
    env = {**os.environ, **TEST_ENGINES, "MLFLOW_TRACKING_URI": store_uri}
    process = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd, env=env,
                               stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=300) == 0, output.decode(errors="replace")[-3000:]
    return output.decode(errors="replace")


# About 2 s of descent, asleep (the progress bar is the loop's, whatever the engine), little to log
LONG = (TEST_BACKENDS, "backend=slow", "epochs=20000", "mlflow.max_logged_steps=100")


def test_a_long_run_on_a_terminal_shows_a_progress_bar_then_erases_it(tmp_path, store_uri):
    output = run_in_terminal(*LONG, "lr=0.0001", cwd=tmp_path, store_uri=store_uri)
    bar = output.split("[slow sgd lr=0.0001] ", 1)[1]
    assert "epochs/s" in bar and "/20001 epochs" in bar and "s left" in bar
    assert "\r\x1b[K" in output  # erased before the run's own lines
    last_bar = output.rindex("epochs/s")
    assert output.index("not_converged after 20000 epochs") > last_bar


def test_output_to_a_pipe_gets_no_progress_bar(tmp_path, store_uri):
    result = run_cli(*LONG, "lr=0.0001", cwd=tmp_path, store_uri=store_uri, env=TEST_ENGINES)
    assert result.returncode == 0, result.stderr
    assert "epochs/s" not in result.stdout + result.stderr and "\r" not in result.stdout + result.stderr


def test_quiet_by_default_debug_with_hydra_verbose(tmp_path, store_uri):
    quiet = run_cli("epochs=3", cwd=tmp_path, store_uri=store_uri)
    verbose = run_cli("epochs=3", "hydra.verbose=runner", cwd=tmp_path, store_uri=store_uri)
    assert quiet.returncode == verbose.returncode == 0
    assert "DEBUG" not in quiet.stdout + quiet.stderr
    assert len((quiet.stdout + quiet.stderr).strip().splitlines()) <= 4  # the article's line, outcome, where
    debug = [line for line in (verbose.stdout + verbose.stderr).splitlines() if "[DEBUG]" in line]
    assert any("engine runner.engines.numpy" in line for line in debug)
    assert any("descent: 4 rows" in line for line in debug)


def test_parallel_jobs_on_a_terminal_show_no_bar(tmp_path, store_uri):
    """joblib's workers write to the same terminal: bars would overwrite each other."""
    output = run_in_terminal(*LONG, "lr=0.0001,0.0002", "hydra/launcher=joblib", cwd=tmp_path,
                             store_uri=store_uri)
    assert "job 2/2 slow sgd lr=0.0002] [5. " in output
    assert "epochs/s" not in output


def test_only_the_chatter_is_held_back(capfd):
    """What native code writes to stderr while a framework is imported: its known start-up lines
    are held back, a real warning is not."""
    from runner.records import chatter

    with chatter.held_back(chatter.TENSORFLOW_IMPORT):
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see ...\n")
        os.write(2, b"W0000 cuda_dnn.cc:8] a real warning from a library\n")
    assert capfd.readouterr().err == "W0000 cuda_dnn.cc:8] a real warning from a library\n"
