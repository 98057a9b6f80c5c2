#!/usr/bin/env bash
# The GPU check, unattended, on a machine with a GPU, torch, jax and optax but none of the
# runner's other dependencies: pure-Python wheels of hydra-core, omegaconf and antlr4 are
# brought in .whl/ (see README, "GPU"), installed into a temporary folder, and used from there.
#   bash bench/gpu.sh            # prints a markdown table; exit 1 on any mismatch
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/runner-site .whl/*.whl
  export PYTHONPATH=/tmp/runner-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, jax; print('torch', torch.__version__, torch.cuda.get_device_name(0)); print('jax', jax.__version__, jax.devices())"
python3 bench/gpu_check.py
