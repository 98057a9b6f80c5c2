"""The PyTorch engine: the gradient by autograd, on one leaf tensor kept on its device."""

from __future__ import annotations

import torch

from runner.engines import Trajectory, no_gpu
from runner.losses import Loss

FRAMEWORK = "torch"
VERSION = torch.__version__
OPS = {"sin": torch.sin, "cos": torch.cos, "tanh": torch.tanh, "exp": torch.exp,
       "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs}


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda:0"
    if requested == "auto":
        return "cpu"
    raise no_gpu("torch", requested, "sees no CUDA GPU (torch.cuda.is_available() is False)")


def descend(loss: Loss, x_start: float, epochs: int, lr: float, dtype: str, device: str) -> Trajectory:
    """Gradient descent on one `requires_grad` tensor, updated in place under `no_grad`.

    The rows are written into tensors on the same device and copied to the host once at the
    end, so a GPU run does not synchronise at every step.
    """
    value = loss.value.bind(OPS)
    dt = getattr(torch, dtype)
    x = torch.tensor(x_start, dtype=dt, device=device, requires_grad=True)
    xs, losses, grads = (torch.empty(epochs + 1, dtype=dt, device=device) for _ in range(3))
    for k in range(epochs + 1):
        y = value(x)
        (grad,) = torch.autograd.grad(y, x)
        with torch.no_grad():
            xs[k], losses[k], grads[k] = x, y, grad
            x -= lr * grad  # the update after the last row is computed and discarded
    return Trajectory(xs.cpu().numpy(), losses.cpu().numpy(), grads.cpu().numpy(), device=str(x.device))
