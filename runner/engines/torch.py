"""The PyTorch engine: autograd on one leaf tensor kept on its device, stepped by `torch.optim`."""

from __future__ import annotations

import torch

from runner.engines import Problem, Trajectory, chunks, first_diverged_row, no_gpu

FRAMEWORK = "torch"
VERSION = torch.__version__
OPS = {"sin": torch.sin, "cos": torch.cos, "tanh": torch.tanh, "exp": torch.exp,
       "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs, "sum": torch.sum}
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda:0"
    if requested == "auto":
        return "cpu"
    raise no_gpu("torch", requested, "sees no CUDA GPU (torch.cuda.is_available() is False)")


def _optimizer(problem: Problem, x: torch.Tensor) -> torch.optim.Optimizer:
    o = problem.optimizer
    if o.name == "adam":
        return torch.optim.Adam([x], lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    return torch.optim.SGD([x], lr=o.lr, momentum=o.momentum or 0.0, nesterov=o.name == "nesterov")


def descend(problem: Problem) -> Trajectory:
    """Gradient descent on one `requires_grad` tensor.

    Rows are written into tensors on the same device and copied to the host once per chunk of
    steps (to look for divergence), so a GPU run does not synchronise at every step.
    """
    torch.manual_seed(problem.seed)
    dt = getattr(torch, problem.dtype)
    device = problem.device
    value = problem.loss.objective(OPS, problem.x_start.shape)
    x = torch.tensor(problem.x_start, dtype=dt, device=device, requires_grad=True)
    optimizer = _optimizer(problem, x)
    n, head = problem.epochs + 1, problem.recorded
    row = x.shape if head is None else (head,)
    xs, grads = (torch.empty((n, *row), dtype=dt, device=device) for _ in range(2))
    losses = torch.empty(n, dtype=dt, device=device)
    norms = None if head is None else torch.empty((n, 2), dtype=dt, device=device)
    rows = n
    for start, stop in chunks(problem.epochs):
        for k in range(start, stop):
            optimizer.zero_grad(set_to_none=True)
            y = value(x)
            y.backward()
            with torch.no_grad():
                if head is None:
                    xs[k], losses[k], grads[k] = x, y, x.grad
                else:
                    xs[k], losses[k], grads[k] = x[:head], y, x.grad[:head]
                    norms[k, 0], norms[k, 1] = torch.linalg.vector_norm(x), torch.linalg.vector_norm(x.grad)
            optimizer.step()  # the update after the last row is discarded
        diverged = first_diverged_row(xs[start:stop].cpu().numpy(), losses[start:stop].cpu().numpy(),
                                      problem.diverge_above)
        if diverged is not None:
            rows = start + diverged + 1
            break
        if problem.progress:
            problem.progress(stop)
    host = [t.cpu().numpy() for t in (xs, losses, grads)]
    whole = (None, None) if norms is None else norms.cpu().numpy().T
    return Trajectory(*host, str(x.device), *whole).head(rows)
