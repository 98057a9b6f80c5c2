"""docs/runner.ipynb, executed top to bottom in a real Jupyter kernel as a reader runs it: every
cell without error, and its figures in the notebook once it is saved."""

from __future__ import annotations

import shutil

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = REPO / "docs" / "runner.ipynb"


def test_the_notebook_runs_in_a_kernel_and_keeps_its_figures(tmp_path, migrated_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the notebook's store: mlflow.db beside it
    shutil.copy(migrated_store, tmp_path / "mlflow.db")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(notebook, tmp_path / "runner.ipynb")

    saved = nbformat.read(tmp_path / "runner.ipynb", as_version=4)
    code = [cell for cell in saved.cells if cell.cell_type == "code"]
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    figures = [cell.source.splitlines()[-1] for cell in code
               if any("image/png" in o.get("data", {}) for o in cell.outputs)]
    assert figures == ['article["tf"].figure', 'Image(filename=lr_sweep.report_file("final_loss_vs_lr.png"))',
                       'Image(filename=batch.artifact_file("rate_map.png"))', 'network["torch"].figure',
                       'Image(filename=networks.report_file("validation.png"))']
    # The runs it made are where a reader finds them: beside the notebook.
    assert (tmp_path / "outputs" / "multirun").is_dir() and (tmp_path / "mlflow.db").stat().st_size > 0
