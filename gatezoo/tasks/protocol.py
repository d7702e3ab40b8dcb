"""The Task contract: shapes, the sampler, the loss and the metrics of one benchmark."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gatezoo.tasks.losses import (
    accuracy,
    masked_mean,
    mean_squared_error,
    softmax_cross_entropy,
    valid_mask,
)

__all__ = ["Task", "Padded", "Sampler", "SPLITS", "READOUTS", "LOSS_KINDS"]

SPLITS = ("train", "test")
READOUTS = ("last", "all")
LOSS_KINDS = ("mse", "xent")



class Padded(NamedTuple):
    """The targets of a variable-length batch: what ``y`` is for a fixed-length task, plus the
    number of valid steps of each sequence.

    * ``target``: the fixed-length ``y`` (see :class:`Task` for its shapes).
    * ``lengths``: int32 ``(B,)``, each in ``1..T``. Steps ``t >= lengths[b]`` of sequence ``b``
      are padding: its inputs are zero there and they carry no loss.

    A NamedTuple, so it is a pytree: it passes through ``jax.jit``, ``vmap`` and ``scan``.
    """

    target: jax.Array
    lengths: jax.Array


# sampler(data, key, batch_size, split) -> (x, y), y a Padded for a variable-length task;
# ``data`` is the task's device arrays (or None).
Sampler = Callable[[Any, jax.Array, int, str], tuple[jax.Array, "jax.Array | Padded"]]
# metric_fn(pred, y) -> extra task-specific metrics (y a Padded only for variable-length tasks
# with readout "all"; see Task.metrics).
MetricFn = Callable[[jax.Array, Any], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Task:
    r"""A benchmark: what a batch looks like, how it is drawn, and how a prediction is scored.

    Shapes (``B`` batch, ``T = seq_len``):

    * ``x``: ``(B, T, input_dim)`` float32.
    * ``y``: ``(B, output_dim)`` float32 for ``mse``/``last``, ``(B, T, output_dim)`` for
      ``mse``/``all``; int32 labels ``(B,)`` for ``xent``/``last`` and ``(B, T)`` for
      ``xent``/``all``.
    * ``pred`` (from :class:`gatezoo.SequenceModel`): ``(B, output_dim)`` for ``last``,
      ``(B, T, output_dim)`` for ``all`` (logits for ``xent``).

    A ``variable_length`` task pads its sequences to ``T``: ``sample`` returns
    ``(x, Padded(target, lengths))`` with ``target`` shaped like ``y`` above and int32
    ``lengths`` ``(B,)`` in ``1..T``; ``x`` is zero at the padded steps ``t >= lengths[b]``.
    :meth:`predict` hands the lengths to the model (readout ``last`` then reads each sequence at
    its own last valid step ``lengths[b] - 1``), and :meth:`loss` / :meth:`metrics` average over
    the valid steps only. Fixed-length tasks return a plain ``y``; a :class:`Padded` is accepted
    for them too.

    The loss is :math:`\mathrm{mean}\,(\hat y - y)^2` for ``mse`` and the mean softmax cross-entropy
    for ``xent``, averaged over the batch (and every valid step for ``readout="all"``).
    ``baseline`` is the loss of the trivial predictor described by ``baseline_note`` (a model that
    beats it has learned something).

    ``sample`` is a pure function of the key and may run inside ``jax.jit`` (``batch_size`` and
    ``split`` static). Dataset tasks keep their arrays in ``data`` (on device); a training loop that
    wants them as jit arguments instead of captured constants calls ``sample_from(data, ...)``.

    Example:
      >>> import jax
      >>> from gatezoo.tasks import make_task
      >>> task = make_task("adding", seq_len=20)
      >>> x, y = task.sample(jax.random.key(0), 4)
      >>> x.shape, y.shape, round(task.baseline, 3)
      ((4, 20, 4), (4, 1), 0.167)
      >>> padded = make_task("adding", seq_len=20, min_len=10)
      >>> x, ys = padded.sample(jax.random.key(0), 4)
      >>> padded.variable_length, ys.target.shape, ys.lengths.shape
      (True, (4, 1), (4,))

    References:
      Hochreiter and Schmidhuber, `Long Short-Term Memory
      <https://doi.org/10.1162/neco.1997.9.8.1735>`__, Neural Computation 9(8), 1997 (the
      adding problem of the example).
    """

    name: str
    description: str
    input_dim: int
    output_dim: int
    seq_len: int
    readout: str
    loss_kind: str
    baseline: float
    baseline_note: str
    options: tuple[tuple[str, Any], ...] = ()
    variable_length: bool = False
    sampler: Sampler | None = dataclasses.field(default=None, repr=False, compare=False)
    data: Any = dataclasses.field(default=None, repr=False, compare=False)
    metric_fn: MetricFn | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.loss_kind not in LOSS_KINDS:
            raise ValueError(f"loss_kind must be one of {LOSS_KINDS}, got {self.loss_kind!r}")
        if self.sampler is None:
            raise ValueError(f"task {self.name!r} needs a sampler")

    def sample(
        self, key: jax.Array, batch_size: int, split: str = "train"
    ) -> tuple[jax.Array, jax.Array | Padded]:
        """Draws one batch ``(x, y)``; ``split="test"`` draws held-out data. ``y`` is a
        :class:`Padded` for a ``variable_length`` task."""
        return self.sample_from(self.data, key, batch_size, split)

    def sample_from(
        self, data: Any, key: jax.Array, batch_size: int, split: str = "train"
    ) -> tuple[jax.Array, jax.Array | Padded]:
        """Like :meth:`sample` with the task's arrays passed explicitly (e.g. as a jit argument)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return self.sampler(data, key, batch_size, split)

    def predict(
        self, model: Callable[..., jax.Array], xs: jax.Array, ys: jax.Array | Padded
    ) -> jax.Array:
        """The model's prediction for a batch: ``model(xs, seq_lengths=ys.lengths)`` when ``ys``
        is a :class:`Padded`, else ``model(xs)``. ``xs``: ``(B, T, input_dim)``; the result is
        the ``pred`` that :meth:`loss` and :meth:`metrics` score against ``ys``."""
        if isinstance(ys, Padded):
            return model(xs, seq_lengths=ys.lengths)
        return model(xs)

    def loss(self, pred: jax.Array, y: jax.Array | Padded) -> jax.Array:
        """The scalar training loss of predictions ``pred`` against targets ``y`` (a plain array
        or a :class:`Padded`, whose padded steps carry no weight for readout ``all``)."""
        target, mask = self._unpack(pred, y)
        if self.loss_kind == "mse":
            if mask is None:
                return mean_squared_error(pred, target)
            # Mean over the output axis first, so a full mask reproduces the unmasked MSE.
            return masked_mean(jnp.mean(jnp.square(pred - target), axis=-1), mask)
        if mask is None:
            return softmax_cross_entropy(pred, target)
        return masked_mean(softmax_cross_entropy(pred, target, reduce=False), mask)

    def metrics(self, pred: jax.Array, y: jax.Array | Padded) -> dict[str, jax.Array]:
        """Scalar metrics: ``baseline_ratio`` (loss / baseline; < 1 means learned), ``accuracy``
        for classification, plus the task's own (e.g. the copy task's accuracy on recalled steps).

        For a :class:`Padded` ``y`` with readout ``all`` every built-in metric averages over the
        valid steps; ``metric_fn`` then receives the :class:`Padded` itself, so only a
        ``variable_length`` task (whose ``metric_fn`` masks, e.g. with
        :func:`gatezoo.tasks.losses.masked_mean`) may have one. For readout ``last`` it receives
        ``target``, as ``pred`` is already read at each sequence's last valid step.
        """
        target, mask = self._unpack(pred, y)
        out = {"baseline_ratio": self.loss(pred, y) / self.baseline}
        if self.loss_kind == "xent":
            hits = (jnp.argmax(pred, axis=-1) == target).astype(jnp.float32)
            out["accuracy"] = accuracy(pred, target) if mask is None else masked_mean(hits, mask)
        if self.metric_fn is not None:
            if mask is None:
                out.update(self.metric_fn(pred, target))
            elif self.variable_length:
                out.update(self.metric_fn(pred, y))
            else:
                raise ValueError(
                    f"task {self.name!r} is fixed-length and its metric_fn reads whole "
                    "sequences; score it with a plain y, not a Padded"
                )
        return out

    def option(self, name: str, default: Any = None) -> Any:
        """The resolved value of one construction option."""
        return dict(self.options).get(name, default)

    def _unpack(self, pred: jax.Array, y: jax.Array | Padded) -> tuple[jax.Array, Any]:
        """Checks shapes; returns ``(target, mask)``: ``mask`` is the ``(B, T)`` valid-step mask
        for a Padded ``y`` with readout ``all``, else None (every position counts)."""
        if not isinstance(y, Padded):
            self._check_shapes(pred, y)
            return y, None
        self._check_shapes(pred, y.target)
        lengths = y.lengths
        want = tuple(y.target.shape[:1])
        if tuple(lengths.shape) != want or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(
                f"task {self.name!r} expects Padded.lengths as integers of shape {want}, "
                f"got {lengths.dtype} {tuple(lengths.shape)}"
            )
        if self.readout == "last":
            return y.target, None
        return y.target, valid_mask(lengths, self.seq_len)

    def _check_shapes(self, pred: jax.Array, y: jax.Array) -> None:
        steps = (self.seq_len,) if self.readout == "all" else ()
        want_pred = (*y.shape[:1], *steps, self.output_dim)
        want_y = want_pred if self.loss_kind == "mse" else want_pred[:-1]
        if tuple(pred.shape) != want_pred or tuple(y.shape) != want_y:
            raise ValueError(
                f"task {self.name!r} expects pred {want_pred} and y {want_y}, "
                f"got {tuple(pred.shape)} and {tuple(y.shape)}"
            )
        if self.loss_kind == "xent" and not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(f"task {self.name!r} expects integer labels, got {y.dtype}")
