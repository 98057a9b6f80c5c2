# make run   - set up .venv on first use, then run the article's experiment on all three backends
# make test  - set up .venv on first use, then run the tests
# make ui    - browse the default store (./mlflow.db) at http://127.0.0.1:5000
# make test-fast - the tests that start no process and no service, less the frameworks' parity matrices (under a minute), while developing
# make notebook - run docs/runner.ipynb top to bottom in a Jupyter kernel and save it with its outputs
# make ray-env - .venv-ray: the Ray launcher (hydra/launcher=ray) in an environment of its own
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-fast notebook ui clean ray-env

run: $(VENV)/.installed
	$(BIN)/python -m runner experiment=article

# Two or more workers (one per core); the SLURM and Ray tests each keep to one worker (loadgroup).
test: $(VENV)/.installed
	$(BIN)/python -m pytest -n auto --dist loadgroup

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not slow and not parity" -n auto

# Executed in a temporary folder (its runs are not kept), saved back with every output.
notebook: $(VENV)/.installed
	$(BIN)/python -c 'import nbformat, tempfile; from nbclient import NotebookClient; \
	    nb = nbformat.read("docs/runner.ipynb", 4); nb.metadata.pop("widgets", None); \
	    NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=False, resources={"metadata": {"path": tempfile.mkdtemp()}}).execute(); \
	    nbformat.write(nb, "docs/runner.ipynb")'

# MLflow 3's job runner (two more processes, and seconds more to stop) serves nothing the runner records.
ui: $(VENV)/.installed
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,jax]'
	touch $@

# Ray's launcher pins cloudpickle < 3, which joblib (hydra/launcher=joblib) refuses: it gets an
# environment of its own, layered over .venv (a .pth file) so that it adds only Ray (~330 MB).
ray-env: $(VENV)/.installed
	python3 -m venv .venv-ray
	$(BIN)/python -c 'import site; print(site.getsitepackages()[0])' > "$$(.venv-ray/bin/python -c 'import site; print(site.getsitepackages()[0])')/runner-venv.pth"
	.venv-ray/bin/python -m pip install --quiet "hydra-ray-launcher>=1.2.2,<1.3" "ray[default]>=2.40,<3"
	.venv-ray/bin/python -c "import ray, hydra_plugins.hydra_ray_launcher, cloudpickle; assert cloudpickle.__version__ < '3'"

clean:
	rm -rf $(VENV) .venv-ray *.egg-info .pytest_cache
