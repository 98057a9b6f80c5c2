#!/usr/bin/env bash
# Fetches, on a machine that reaches PyPI, the wheels bench/gpu.sh installs on a GPU machine
# that has Python, torch, jax, optax, numpy and matplotlib but none of the runner's other
# dependencies and no network: Hydra and OmegaConf, and MLflow's tracking client
# (mlflow-skinny, ~22 MB with its dependencies; the full `mlflow` adds pandas, pyarrow and
# scikit-learn, ~150 MB) with SQLAlchemy and Alembic for its SQLite store.
#   bash bench/gpu_wheels.sh [PYTHON_VERSION]    # default 3.12 (the GPU image's); writes .whl/
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=${1:-3.12}
rm -rf .whl && mkdir .whl
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) is published only as a source
# archive; it is pure Python, so a wheel built here installs anywhere.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
python3 -m pip download -q --only-binary=:all: --python-version "$python_version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --find-links .whl -d .whl \
  hydra-core==1.3.8 omegaconf==2.3.1 mlflow-skinny==3.17.2 sqlalchemy alembic
du -sh .whl
