"""The PyTorch engine: autograd on a leaf tensor of shape (points, *shape), kept on its device.

The update rules are `runner.descent.optimizers`' written in tensor operations: `torch.optim` takes one
learning rate per parameter, not one per point (the tests hold the rules to `torch.optim.SGD`
and `torch.optim.Adam` on single points). Each step makes a new leaf from the update: on a
scalar, within a few percent of a bare loop that keeps x alone (bench/run.py measures both).
"""

from __future__ import annotations

import operator
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from runner.descent import optimizers, sharpness
from runner.engines import CHECK_EVERY, Problem, Rows, State, Stepper, alive, broadcast_shape, no_gpu, record
from runner.problems.models import dense_by_matmul

FRAMEWORK = "torch"
VERSION = torch.__version__


_dense_by_matmul = dense_by_matmul({"matmul": torch.matmul, "reshape": torch.reshape})


def _dense(rows, weights, biases, inputs: int, outputs: int):
    """A model's layer (`runner.problems.models`): rows @ weights + biases, the weights of each
    point row by row (inputs x outputs).

    For one point (a model's run) it is `nn.Linear`'s: F.linear against the weights copied into
    its layout (outputs x inputs), one `addmm`. Against x's own row-major layout, matmul broadcasts
    to `bmm` and autograd's weight gradient is rowsᵀ·grad: together about 1.5x the time on the CPU
    (bench/models.py). For many points against the same rows (a batch's first layer, a model's
    measures of many epochs) it is one `addmm` against every point's weights side by side, about 5x
    faster than matmul's broadcast `bmm` on digits. The sums run in another order: float32
    results differ from matmul's in their last bits."""
    lead = tuple(weights.shape[:-1])
    if lead == (1,) and rows.shape[:-2] in ((), (1,)):
        layout = weights.reshape(inputs, outputs).t().contiguous()
        return F.linear(rows.reshape(rows.shape[-2:]), layout, None if biases is None else biases.reshape(outputs))[None]
    if rows.dim() != 2:  # each point its own rows: a network's later layers in a batch, mini-batches over seeds
        return _dense_by_matmul(rows, weights, biases, inputs, outputs)
    count, n = weights[..., 0].numel(), rows.shape[0]
    side = weights.reshape(count, inputs, outputs).permute(1, 0, 2).reshape(inputs, count * outputs)
    scores = torch.mm(rows, side) if biases is None else torch.addmm(biases.reshape(count * outputs), rows, side)
    return scores.reshape(n, count, outputs).permute(1, 0, 2).reshape(*lead, n, outputs)


OPS = {"sin": torch.sin, "cos": torch.cos, "tanh": torch.tanh, "exp": torch.exp,
       "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs, "maximum": torch.maximum, "where": torch.where,
       "pow": operator.pow, "sum": lambda v, axes: torch.sum(v, dim=axes),
       "stack": lambda parts: torch.stack(parts, dim=-1),
       "matmul": torch.matmul, "reshape": torch.reshape, "logsumexp": lambda v: torch.logsumexp(v, dim=-1),
       "take": lambda v, indices: v[indices],
       "log_softmax": lambda v: torch.log_softmax(v, dim=-1), "argmax": lambda v: torch.argmax(v, dim=-1).to(v.dtype),
       "dense": _dense}


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda:0"
    if requested == "auto":
        return "cpu"
    raise no_gpu("torch", requested, "sees no CUDA GPU (torch.cuda.is_available() is False)")


def start(problem: Problem, resume: Optional[State] = None) -> Stepper:
    """Gradient descent of the batch (from `resume` where given); rows stay on the device until a piece is done (and once
    per CHECK_EVERY steps, to see whether every point has diverged)."""
    torch.manual_seed(problem.seed)
    dt, device = getattr(torch, problem.dtype), problem.device

    def convert(values):
        return torch.tensor(np.asarray(values), dtype=dt, device=device)

    value = problem.loss.objective(OPS, problem.shape, convert)
    init, update = optimizers.rule(problem.optimizer, OPS,
                                   lambda v: convert(problem.per_point(v).reshape(broadcast_shape(problem))),
                                   value, problem.minimum(), problem.loss.domain)
    x = torch.tensor(problem.x_start if resume is None else resume.x, dtype=dt, device=device, requires_grad=True)
    state = init(x.detach()) if resume is None else tuple(convert(v) for v in resume.rule)
    ones = torch.ones(problem.points, dtype=dt, device=device)
    head = problem.recorded
    norm = (lambda v: torch.linalg.vector_norm(v, dim=-1))

    row = problem.shape if head is None else (head,)
    measure = problem.measure(OPS, convert)
    span = problem.measure_span(torch.finfo(dt).bits // 8)
    batch_value = problem.loss.batch_objective(OPS, convert) if problem.loss.batch_size else None
    epoch = 0 if resume is None else resume.epoch  # of the next row: each epoch's mini-batches are drawn from it

    def step(count: int) -> Rows:
        nonlocal x, state, epoch
        if batch_value:
            indices, weights = problem.epoch_batches(epoch, count)
            indices, weights = torch.tensor(indices, device=device), convert(weights)
        rates = problem.learning_rates(epoch, count)  # None: the rule's own lr
        if rates is not None:
            rates = convert(rates.reshape(count, *broadcast_shape(problem)))
        epoch += count
        # Rows go into tensors made once a piece, on x's device: holding each step's own tensors
        # instead keeps the allocator from reusing memory (5x slower a step at 10^4 points).
        xs, grads = (torch.empty((count, problem.points, *row), dtype=dt, device=device) for _ in range(2))
        losses = torch.empty((count, problem.points), dtype=dt, device=device)
        norms = None if head is None else torch.empty((count, problem.points, 2), dtype=dt, device=device)
        measured = torch.empty((count, problem.points, len(problem.measure_names)), dtype=dt, device=device) \
            if measure else None
        # A model's measures (validation loss, ...) of many epochs in one evaluation, after their steps:
        # each epoch's x is held until then (`held`, `span` epochs at most), and the rows from `unmeasured` on
        held = torch.empty((min(span, count), problem.points, *problem.shape), dtype=dt, device=device) \
            if measure else None
        unmeasured = 0

        def measure_held(last: int):
            nonlocal unmeasured
            with torch.no_grad():
                measured[unmeasured:last] = torch.stack(
                    measure(held[:last - unmeasured], losses[unmeasured:last]), dim=-1)
            unmeasured = last

        done = count
        for block in range(0, count, CHECK_EVERY):
            for k in range(block, min(block + CHECK_EVERY, count)):
                y = value(x)
                (grad,) = torch.autograd.grad(y, x, ones)
                with torch.no_grad():
                    if head is None:
                        xs[k], losses[k], grads[k] = x, y, grad
                    else:
                        xs[k], losses[k], grads[k], norms[k, :, 0], norms[k, :, 1] = record(x, y, grad, head, norm)
                    if measure:
                        held[k - unmeasured] = x
                if measure and k + 1 - unmeasured == span:
                    measure_held(k + 1)
                scheduled = {} if rates is None else {"lr": rates[k]}
                if batch_value:  # an epoch of mini-batch steps (after the last row: discarded)
                    for batch, weight in zip(indices[k], weights[k]):
                        (batch_grad,) = torch.autograd.grad(batch_value(x, batch, weight), x, ones)
                        x, state = update(batch_grad, state, x.detach(), **scheduled)
                        x.requires_grad_()
                else:
                    x, state = update(grad, state, x.detach(), **scheduled)  # after the last row: discarded
                    x.requires_grad_()
            if measure and unmeasured < k + 1:
                measure_held(k + 1)
            if not alive(xs[k].cpu().numpy(), losses[k].cpu().numpy(), problem.diverge_above).any():
                done = k + 1  # every point has diverged
                break
        return Rows(*(None if t is None else t[:done].cpu().numpy() for t in (xs, losses, grads, norms, measured)))

    # the last measurement's eigenvectors: drawn at the first
    direction = None if resume is None or resume.direction is None else convert(resume.direction)

    def measure_sharpness(iterations: int) -> np.ndarray:
        """The largest Hessian eigenvalue of each point at the current x: power iteration on
        Hessian-vector products, each a backward pass through the gradient's graph."""
        nonlocal direction
        if direction is None:
            direction = convert(sharpness.start(problem.points, problem.shape, problem.seed))
        at = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(value(at), at, ones, create_graph=True)
        linear = not grad.requires_grad  # the gradient does not depend on x: the Hessian is 0
        quotient = torch.zeros(problem.points, dtype=dt, device=device)
        for _ in range(iterations):
            hv = None if linear else torch.autograd.grad(grad, at, direction, retain_graph=True, allow_unused=True)[0]
            hv = torch.zeros_like(at) if hv is None else hv.detach()
            quotient, direction = sharpness.power_step(direction, hv, OPS)
        return quotient.cpu().numpy().astype(np.float64)

    def where() -> State:
        def host(t):
            return t.detach().cpu().numpy()

        return State.held(host(x), tuple(host(v) for v in state), epoch, None if direction is None else host(direction))

    step.device = str(x.device)
    step.sharpness = measure_sharpness
    step.state = where
    return step
