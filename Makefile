# make run   - set up .venv on first use, then run the article's experiment on all three backends
# make test  - set up .venv on first use, then run the tests
# make ui    - browse the default store (./mlflow.db) at http://127.0.0.1:5000
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test ui clean

run: $(VENV)/.installed
	$(BIN)/python -m runner experiment=article

test: $(VENV)/.installed
	$(BIN)/python -m pytest

ui: $(VENV)/.installed
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,jax]'
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
