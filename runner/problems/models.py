"""Models trained on data: the parameters are the run's x, the loss the model's on its training rows.

    model=linear     least squares of a regression target, (1/2n) |X w - y|^2 + (l2/2) |w|^2
    model=logistic   the mean log-loss of a sigmoid (two classes) or a softmax (more) + (l2/2) |w|^2
    model=mlp        a multilayer perceptron (`model.hidden` sizes, tanh or ReLU), its output and
                     loss as the data's task asks: a score and least squares, a sigmoid, a softmax

The intercept (the dataset's column of ones, `runner.problems.datasets`) and a network's biases
are not penalised, as in scikit-learn. x of one point is every layer's weights, row by row, each
followed by its biases (a network's), flattened. A `Model` is a loss to the engines
(`runner.problems.losses.Loss`'s interface): `objective` is written in the framework's operations
(`OPS`: matmul, reshape, log_softmax, take and the rest), so TensorFlow, PyTorch and JAX differentiate
it, and `gradient` is the derivative by hand, as the article's NumPy `dfunc`: for the linear
models Xᵀ(prediction - target)/n + l2 w, for the network backpropagation written out.

    model = from_config(cfg.model, datasets.prepare(cfg.data))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping, NamedTuple, Optional

import numpy as np

from runner.errors import ConfigError
from runner.problems import datasets
from runner.problems.datasets import Dataset
from runner.problems.expressions import NUMPY_OPS

LINEAR, LOGISTIC, MLP = "linear", "logistic", "mlp"
MODELS = (LINEAR, LOGISTIC, MLP)
ACTIVATIONS = ("tanh", "relu")


class Layer(NamedTuple):
    """Where one layer's parameters lie in x: weights (inputs x outputs, row by row) at `weights`,
    its biases at `biases` (None: it has none)."""

    inputs: int
    outputs: int
    weights: int
    biases: Optional[int]


@dataclass(frozen=True)
class Model:
    """A model on a prepared dataset, with the interface the engines ask of a loss."""

    name: str
    data: Dataset
    l2: Any  # the weight decay: a number, or an array of one per point (a batch over model.l2)
    batch_size: Optional[int] = None  # rows a step; None: every training row (the full batch)
    hidden: tuple[int, ...] = ()  # a network's hidden layers' sizes
    activation: str = "tanh"

    @property
    def constants(self) -> Mapping[str, Any]:
        """What differs from point to point (JAX's engine hands it to its compiled program)."""
        return {"l2": self.l2} if np.ndim(self.l2) else {}

    @property
    def outputs(self) -> int:
        """Scores per row: one for a regression and two classes, one per class for a softmax."""
        return self.data.classes if self.data.task == datasets.CLASSES else 1

    @cached_property
    def layers(self) -> tuple[Layer, ...]:
        """One layer for the linear models (the intercept column is their bias); a network's
        layers each have biases."""
        sizes = (self.data.features, *self.hidden, self.outputs)
        layers, at = [], 0
        for inputs, outputs in zip(sizes[:-1], sizes[1:]):
            biases = None if self.name != MLP else at + inputs * outputs
            layers.append(Layer(inputs, outputs, at, biases))
            at += inputs * outputs + (0 if biases is None else outputs)
        return tuple(layers)

    @property
    def size(self) -> int:
        """Coordinates of x: every weight and bias."""
        last = self.layers[-1]
        return (last.weights + last.inputs * last.outputs) + (0 if last.biases is None else last.outputs)

    @cached_property
    def penalised(self) -> np.ndarray:
        """1 for each coordinate of x the L2 penalty weighs, 0 for biases and the intercept's weights."""
        mask = np.zeros(self.size)
        for number, layer in enumerate(self.layers):
            weights = np.ones((layer.inputs, layer.outputs))
            if number == 0 and self.data.intercept:
                weights[-1] = 0.0
            mask[layer.weights:layer.weights + weights.size] = weights.reshape(-1)
        return mask

    def initial(self, seed: int) -> np.ndarray:
        """x at epoch 0: zeros for the linear models (convex: any start reaches the one minimum);
        a network's weights drawn from `seed`, Glorot's uniform for tanh and He's for ReLU, its
        biases 0 (all zeros would leave every hidden unit the same)."""
        x = np.zeros(self.size)
        if self.name != MLP:
            return x
        generator = np.random.default_rng(seed)
        for layer in self.layers:
            fan = layer.inputs + layer.outputs if self.activation == "tanh" else layer.inputs / 2
            bound = math.sqrt(6 / fan)
            x[layer.weights:layer.weights + layer.inputs * layer.outputs] = generator.uniform(
                -bound, bound, layer.inputs * layer.outputs)
        return x

    def _penalty(self, convert: Callable, scale: float = 1.0) -> Any:
        """scale * l2 for each coordinate of x (0 where unpenalised): (size,), or (points, size)
        with one l2 per point."""
        if np.ndim(self.l2) == 0:
            return convert(scale * float(self.l2) * self.penalised)
        return convert(self.l2)[..., None] * convert(scale * self.penalised)

    def targets(self, y: np.ndarray) -> np.ndarray:
        """What the scores are compared with: y itself, or one-hot rows for a softmax."""
        if self.outputs == 1:
            return y.astype(np.float64)
        return np.eye(self.outputs)[y]

    def objective(self, ops: Mapping[str, Callable], shape: tuple[int, ...],
                  convert: Optional[Callable] = None) -> Callable[[Any], Any]:
        """The training loss of each point: x of shape (..., size) -> (...)."""
        return self._loss(ops, convert or np.asarray, self.data.x_train, self.data.y_train, penalty=True)

    @property
    def measure_names(self) -> tuple[str, ...]:
        """What each epoch records beside the loss (the training objective, penalty included):
        the training and validation rows' mean loss without the penalty, and a classifier's
        validation accuracy."""
        return ("train_loss", "val_loss") + (() if self.data.task == datasets.REGRESSION else ("val_accuracy",))

    def measure(self, ops: Mapping[str, Callable], convert: Optional[Callable] = None) -> Callable:
        """(x, loss) -> the values of `measure_names`, one per point each: one forward pass over the
        validation rows gives both their loss and their accuracy."""
        convert = convert or np.asarray
        weight = self._penalty(convert, 1 / 2)
        total, scores_of, mean_loss = ops["sum"], self._scores(ops), self._mean_loss(ops)
        x_val, target = convert(self.data.x_val), convert(self.targets(self.data.y_val))
        share = 1 / len(self.data.y_val)
        accuracy = None if self.data.task == datasets.REGRESSION else self._accuracy(ops, convert, self.data.y_val)

        def measure(x, loss):
            scores = scores_of(x, x_val)
            values = (loss - total(weight * x * x, (-1,)), mean_loss(x, scores, target, share))
            return values if accuracy is None else (*values, accuracy(x, scores))

        return measure

    def _scores(self, ops: Mapping[str, Callable]) -> Callable[[Any, Any], Any]:
        """(x (..., size), rows (n, features)) -> the scores (..., n, outputs): the forward pass."""
        dense = ops["dense"] if "dense" in ops else dense_by_matmul(ops)
        # ReLU as a choice, not (z + |z|)/2 or max(z, 0): frameworks differ on |z|' and max' at 0
        # (JAX takes |0|' = 1), and a hidden unit at exactly 0 is common (a row whose units before are all 0)
        activate = ops["tanh"] if self.activation == "tanh" else (lambda z: ops["where"](z > 0, z, z * 0))

        def scores(x, x_rows):
            h = x_rows
            for number, layer in enumerate(self.layers):
                if number:
                    h = activate(h)
                size = layer.inputs * layer.outputs
                weights = x if size == x.shape[-1] else x[..., layer.weights:layer.weights + size]
                biases = None if layer.biases is None else x[..., layer.biases:layer.biases + layer.outputs]
                h = dense(h, weights, biases, layer.inputs, layer.outputs)
            return h

        return scores

    def _accuracy(self, ops: Mapping[str, Callable], convert: Callable, y: np.ndarray) -> Callable[[Any, Any], Any]:
        """(x, scores of these rows) -> the fraction of rows whose predicted class is theirs, (...).
        The prediction is scikit-learn's: class 1 where the score is > 0; else the first of the
        highest scores (argmax), so that at w = 0, every score equal, every row is predicted class 0."""
        rows, labels = len(y), convert(y.astype(np.float64))
        one, zero = convert(np.ones(())), convert(np.zeros(()))
        reshape, total, where, argmax = ops["reshape"], ops["sum"], ops["where"], ops["argmax"]

        def accuracy(x, scores):
            if self.outputs == 1:
                right = where(reshape(scores, (*x.shape[:-1], rows)) > 0, labels, one - labels)
            else:
                right = where(argmax(scores) == labels, one, zero)
            return total(right, (-1,)) / rows

        return accuracy

    def gradient(self, ops: Mapping[str, Callable], shape: tuple[int, ...],
                 convert: Optional[Callable] = None) -> Callable[[Any], Any]:
        """The derivative by hand (NumPy's): backpropagation of (prediction - target)/n, where the
        prediction is the score (least squares), its sigmoid or its softmax (each log-loss has
        this derivative in the scores), + l2 w. For the linear models, Xᵀ(prediction - target)/n + l2 w."""
        convert = convert or np.asarray
        x_rows, target = convert(self.data.x_train), convert(self.targets(self.data.y_train))
        gradient, share = self._gradient(convert), 1 / len(self.data.y_train)
        return lambda x: gradient(x, x_rows, target, share)

    def batch_objective(self, ops: Mapping[str, Callable], convert: Callable) -> Callable[[Any, Any, Any], Any]:
        """The loss on a mini-batch: (x, indices, weights) -> (...), the training rows at `indices`
        (a batch, padded to `batch_size`) weighed by `weights` (1/rows each, 0 for padding)."""
        x_rows, target = convert(self.data.x_train), convert(self.targets(self.data.y_train))
        loss, take = self._loss_of_rows(ops, convert, penalty=True), ops["take"]
        return lambda x, indices, weights: loss(x, take(x_rows, indices), take(target, indices), weights)

    def batch_gradient(self, ops: Mapping[str, Callable], convert: Callable) -> Callable[[Any, Any, Any], Any]:
        """`batch_objective`'s derivative, by hand."""
        x_rows, target = convert(self.data.x_train), convert(self.targets(self.data.y_train))
        gradient, take = self._gradient(convert), ops["take"]
        return lambda x, indices, weights: gradient(x, take(x_rows, indices), take(target, indices), weights)

    def epoch_batches(self, first: int, count: int, seed: Any) -> tuple[np.ndarray, np.ndarray]:
        """The mini-batches of epochs first .. first + count - 1: indices (count, steps, batch_size),
        or with one seed per point (an array) (count, steps, points, batch_size), and weights
        (count, steps, batch_size). Each epoch's order is a permutation NumPy draws from (seed,
        epoch), the same on every backend and for a point as for its run alone; its last batch,
        when the rows do not divide evenly, is padded with row 0 at weight 0 so that every step
        has one shape (a compiled loop compiles once)."""
        rows, size = len(self.data.y_train), self.batch_size
        steps = -(-rows // size)
        seeds, each = np.unique(np.reshape(seed, -1), return_inverse=True)  # lr x seed: each seed's order once
        indices = np.zeros((count, len(seeds), steps * size), dtype=np.int64)
        for k in range(count):
            for p, s in enumerate(seeds):
                indices[k, p, :rows] = np.random.default_rng([int(s), first + k]).permutation(rows)
        indices = indices[:, each].reshape(count, len(each), steps, size).swapaxes(1, 2)
        weights = np.zeros((count, steps * size))
        weights[:, :rows] = 1.0
        weights = weights.reshape(count, steps, size)
        weights /= weights.sum(axis=-1, keepdims=True)
        return (indices if np.ndim(seed) else indices[:, :, 0]), weights

    def working_bytes(self, points: int, itemsize: int, per_point_rows: bool) -> int:
        """Bytes a step of `points` models holds beyond their parameters, about: every layer's
        output for the rows of a step (a mini-batch, or every training row; the validation rows
        when they are more), before and after its activation and its gradient, and the rows
        themselves where each point takes its own mini-batch (`per_point_rows`)."""
        rows = max(self.batch_size or len(self.data.y_train), len(self.data.y_val))
        widths = sum(layer.outputs for layer in self.layers)
        taken = (self.batch_size or 0) * (self.data.features + self.outputs) if per_point_rows else 0
        return points * (3 * rows * widths + taken) * itemsize

    def order_bytes(self, points: int, per_point: bool) -> int:
        """Bytes of one epoch's mini-batch indices (`epoch_batches`): none for the full batch."""
        if not self.batch_size:
            return 0
        return -(-len(self.data.y_train) // self.batch_size) * self.batch_size * 8 * (points if per_point else 1)

    def value_and_gradient(self, ops: Mapping[str, Callable], shape: tuple[int, ...],
                           convert: Optional[Callable] = None) -> Callable[[Any], tuple[Any, Any]]:
        """x -> (the training loss, its gradient by hand), from one forward pass (NumPy's engine
        records both each epoch)."""
        convert = convert or np.asarray
        x_rows, target = convert(self.data.x_train), convert(self.targets(self.data.y_train))
        gradient, share = self._gradient(convert, with_value=True), 1 / len(self.data.y_train)
        return lambda x: gradient(x, x_rows, target, share)

    def _gradient(self, convert: Callable, with_value: bool = False) -> Callable[[Any, Any, Any, Any], Any]:
        """(x, rows, target, weights) -> the gradient of the weighed loss on these rows, penalty
        included, in NumPy (with the loss first, `with_value`); `weights` one per row, or one
        number for all."""
        weight = self._penalty(convert)
        tanh = self.activation == "tanh"
        mean_loss = self._mean_loss(NUMPY_OPS)

        def gradient(x, x_rows, target, weights):
            lead = x.shape[:-1]
            inputs, before, h = [], [None], x_rows  # each layer's input, and it before its activation
            for number, layer in enumerate(self.layers):
                if number:
                    before.append(h)
                    h = np.tanh(h) if tanh else np.where(h > 0, h, h * 0)
                inputs.append(h)
                w = x[..., layer.weights:layer.weights + layer.inputs * layer.outputs]
                h = h @ w.reshape(*lead, layer.inputs, layer.outputs)
                if layer.biases is not None:
                    h = h + x[..., None, layer.biases:layer.biases + layer.outputs]
            if self.data.task == datasets.REGRESSION:
                prediction = h
            elif self.outputs == 1:
                prediction = 1 / (1 + np.exp(-h))
            else:
                log_total = NUMPY_OPS["logsumexp"](h)
                prediction = np.exp(h - log_total[..., None])
            if with_value:
                if self.outputs > 1:  # the softmax's log-loss from the same log-sum-exp
                    mean = np.sum((log_total - np.sum(target * h, axis=-1)) * weights, axis=-1)
                else:
                    mean = mean_loss(x, h, target, weights)
                value = mean + np.sum(weight / 2 * x * x, axis=-1)
            delta = (prediction - (target if self.outputs > 1 else target[..., None])) * _column(weights)  # d/d scores
            grad = np.empty_like(x)
            for number in reversed(range(len(self.layers))):
                layer, h = self.layers[number], inputs[number]
                grad[..., layer.weights:layer.weights + layer.inputs * layer.outputs] = (
                    np.swapaxes(h, -1, -2) @ delta).reshape(*lead, -1)
                if layer.biases is not None:
                    grad[..., layer.biases:layer.biases + layer.outputs] = delta.sum(axis=-2)
                if number:
                    w = x[..., layer.weights:layer.weights + layer.inputs * layer.outputs]
                    back = delta @ np.swapaxes(w.reshape(*lead, layer.inputs, layer.outputs), -1, -2)
                    # tanh' = 1 - tanh^2; ReLU's is 1 where z > 0, else 0 (at 0 too, as `where` routes it)
                    delta = back * (1 - h * h if tanh else (before[number] > 0))
            return (value, grad + weight * x) if with_value else grad + weight * x

        return gradient

    def _loss(self, ops: Mapping[str, Callable], convert: Callable, x_rows: np.ndarray, y: np.ndarray,
              penalty: bool) -> Callable[[Any], Any]:
        """The mean loss over these rows, with the penalty or without: x (..., size) -> (...)."""
        x_rows, target, share = convert(x_rows), convert(self.targets(y)), 1 / len(y)
        loss = self._loss_of_rows(ops, convert, penalty)
        return lambda x: loss(x, x_rows, target, share)

    def _loss_of_rows(self, ops: Mapping[str, Callable], convert: Callable, penalty: bool
                      ) -> Callable[[Any, Any, Any, Any], Any]:
        """(x, rows, target, weights) -> the weighed loss on these rows: x (..., size) -> (...)."""
        weight = self._penalty(convert, 1 / 2)
        total, scores_of, mean_loss = ops["sum"], self._scores(ops), self._mean_loss(ops)

        def loss(x, x_rows, target, weights):
            mean = mean_loss(x, scores_of(x, x_rows), target, weights)
            return mean + total(weight * x * x, (-1,)) if penalty else mean

        return loss

    def _mean_loss(self, ops: Mapping[str, Callable]) -> Callable[[Any, Any, Any, Any], Any]:
        """(x, scores (..., rows, outputs), target, weights) -> the weighed loss of the scores, (...)."""
        reshape, total = ops["reshape"], ops["sum"]

        def mean_loss(x, scores, target, weights):
            if self.data.task == datasets.REGRESSION:
                error = reshape(scores, (*x.shape[:-1], -1)) - target
                each = error * error / 2
            elif self.outputs == 1:  # log(1 + e^z) - y z, written so that no exp overflows
                z = reshape(scores, (*x.shape[:-1], -1))
                each = (z + ops["abs"](z)) / 2 + ops["log"](1 + ops["exp"](-ops["abs"](z))) - target * z
            else:  # the frameworks' fused log-softmax: a smaller autograd graph than logsumexp's
                # Each row weighed before one sum over rows and classes: XLA on the CPU runs a
                # sum over rows of weighed sums over classes ~50x slower (1,000 models on digits)
                share = weights if np.ndim(weights) == 0 else reshape(weights, (-1, 1))
                return -total(target * ops["log_softmax"](scores) * share, (-2, -1))
            return total(each * weights, (-1,))

        return mean_loss

    # What theory knows: least squares is a quadratic, its Hessian X^T X / n + l2 diag(penalised).
    # With one l2 per point, one Hessian per point: (points, size, size).
    @cached_property
    def _hessian(self) -> Optional[np.ndarray]:
        if self.name != LINEAR:
            return None
        x = self.data.x_train
        return x.T @ x / len(x) + self._penalty(np.asarray)[..., None] * np.eye(self.size)

    @cached_property
    def curvatures(self) -> Optional[np.ndarray]:
        """The Hessian's eigenvalues, largest first (least squares): (size,), or (points, size)
        with one l2 per point; else None."""
        return None if self._hessian is None else np.linalg.eigvalsh(self._hessian)[..., ::-1].copy()

    def minimiser_values(self) -> Optional[np.ndarray]:
        """Least squares' minimiser, the normal equations' solution, shape (1 or points, size); else None."""
        if self._hessian is None:
            return None
        x, y = self.data.x_train, self.data.y_train
        hessian = self._hessian if self._hessian.ndim == 3 else self._hessian[None]
        return np.linalg.solve(hessian, np.broadcast_to(x.T @ y / len(y), hessian.shape[:2])[..., None])[..., 0]

    def minimum_values(self, shape: tuple[int, ...], points: int) -> Optional[np.ndarray]:
        minimiser = self.minimiser_values()
        if minimiser is None:
            return None
        return np.broadcast_to(np.asarray(self.objective(NUMPY_OPS, shape)(minimiser), np.float64), (points,))

    def curvature_values(self) -> Optional[np.ndarray]:
        return None if self.curvatures is None else self.curvatures.reshape(-1, self.size)

    @property
    def curvature(self) -> Optional[float]:
        return None if self.curvatures is None else float(self.curvatures.max())

    domain = None  # its parameters are unconstrained
    online = None

    # Every model's loss has a second derivative where its sharpness is measured: a ReLU network's
    # wherever no hidden unit sits exactly at 0, as Cohen et al. measure it.
    twice_differentiable = True

    def spectrum_known(self) -> bool:
        return self.curvatures is not None

    def with_constants(self, values: Mapping[str, Any]) -> "Model":
        """The model with its weight decay `values["l2"]` (one per point), the one constant a batch varies."""
        unknown = set(values) - {"l2"}
        if unknown:
            raise ValueError(f"model={self.name} has no constants {', '.join(sorted(unknown))}: only l2 is batched")
        return dataclasses.replace(self, l2=values["l2"]) if values else self


def from_config(cfg: Any, data: Dataset, batch_size: Optional[int] = None) -> Model:
    """The model `cfg` names on `data`, `batch_size` rows a step, or a ConfigError naming the key
    and what is allowed."""
    rows = len(data.y_train)
    if batch_size is not None and not 1 <= batch_size <= rows:
        raise ConfigError(f"batch_size={batch_size} is not allowed: an integer from 1 to {rows} (the training rows "
                          f"of data={data.name}), or null for the full batch")
    if cfg.name not in MODELS:
        raise ConfigError(f"model={cfg.name} is not a model: allowed are {', '.join(MODELS)}")
    if cfg.name == LINEAR and data.task != datasets.REGRESSION:
        raise ConfigError(f"model=linear fits a regression target: data={data.name} is a classification; "
                          f"use model=logistic")
    if cfg.name == LOGISTIC and data.task == datasets.REGRESSION:
        regression = ", ".join(name for name, (task, _) in datasets.LOADERS.items() if task == datasets.REGRESSION)
        classes = "|".join(name for name, (task, _) in datasets.LOADERS.items() if task != datasets.REGRESSION)
        raise ConfigError(f"model=logistic needs classes: data={data.name} is a regression ({regression} are); "
                          f"use data={classes}, or model=linear")
    hidden, activation = (), "tanh"
    if cfg.name == MLP:
        hidden, activation = cfg.get("hidden"), cfg.get("activation")
        if not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
            raise ConfigError(f"model.hidden={hidden} is not allowed: a list of one or more integers >= 1, the hidden "
                              f"layers' sizes, e.g. [32] or [64,32]")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={activation} is not allowed: {'|'.join(ACTIVATIONS)}")
    return Model(cfg.name, data, float(cfg.l2), None if batch_size == rows else batch_size, tuple(hidden), activation)


def dense_by_matmul(ops: Mapping[str, Callable]) -> Callable:
    """A layer in any framework's operations: (rows (..., n, inputs), weights (..., inputs *
    outputs), biases (..., outputs) or None, inputs, outputs) -> rows @ weights + biases, (..., n,
    outputs), the weights row by row (inputs x outputs). An engine whose framework has a faster
    layer gives its own as OPS["dense"] (PyTorch's: `nn.Linear`'s)."""
    matmul, reshape = ops["matmul"], ops["reshape"]

    def dense(rows, weights, biases, inputs, outputs):
        lead = tuple(weights.shape[:-1])
        scores = matmul(rows, reshape(weights, (*lead, inputs, outputs)))
        return scores if biases is None else scores + reshape(biases, (*lead, 1, outputs))

    return dense


def _column(weights: Any) -> Any:
    """Per-row weights as a column against (..., rows, outputs); one number stays one number."""
    return weights if np.ndim(weights) == 0 else np.reshape(weights, (-1, 1))
