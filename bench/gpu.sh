#!/usr/bin/env bash
# The GPU check, unattended, on a machine with a GPU, torch, jax and optax but none of the
# runner's other dependencies and no network. First, where PyPI is reachable:
#   bash bench/gpu_wheels.sh     # .whl/: Hydra, OmegaConf, MLflow's client (~22 MB)
# then on the GPU machine, with .whl/ beside the code:
#   bash bench/gpu.sh            # prints markdown tables; exit 1 on any mismatch
# The runs of its MLflow sweep go to a SQLite file in the sweep's folder, under $OUT if set,
# else under outputs/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/runner-site .whl/*.whl
  export PYTHONPATH=/tmp/runner-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, jax; print('torch', torch.__version__, torch.cuda.get_device_name(0)); print('jax', jax.__version__, jax.devices())"
python3 bench/gpu_check.py "${OUT:-outputs}/gpu-$(date +%Y-%m-%d_%H-%M-%S)"
