"""The Task contract: shapes, the sampler, the loss and the metrics of one benchmark."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gatezoo.tasks.losses import accuracy, mean_squared_error, softmax_cross_entropy

__all__ = ["Task", "Sampler", "SPLITS", "READOUTS", "LOSS_KINDS"]

SPLITS = ("train", "test")
READOUTS = ("last", "all")
LOSS_KINDS = ("mse", "xent")

# sampler(data, key, batch_size, split) -> (x, y); ``data`` is the task's device arrays (or None).
Sampler = Callable[[Any, jax.Array, int, str], tuple[jax.Array, jax.Array]]
# metric_fn(pred, y) -> extra task-specific metrics.
MetricFn = Callable[[jax.Array, jax.Array], dict[str, jax.Array]]


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

    The loss is :math:`\mathrm{mean}\,(\hat y - y)^2` for ``mse`` and the mean softmax cross-entropy
    for ``xent``, averaged over the batch (and every step for ``readout="all"``). ``baseline`` is
    the loss of the trivial predictor described by ``baseline_note`` (a model that beats it has
    learned something).

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
    ) -> tuple[jax.Array, jax.Array]:
        """Draws one batch ``(x, y)``; ``split="test"`` draws held-out data."""
        return self.sample_from(self.data, key, batch_size, split)

    def sample_from(
        self, data: Any, key: jax.Array, batch_size: int, split: str = "train"
    ) -> tuple[jax.Array, jax.Array]:
        """Like :meth:`sample` with the task's arrays passed explicitly (e.g. as a jit argument)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return self.sampler(data, key, batch_size, split)

    def loss(self, pred: jax.Array, y: jax.Array) -> jax.Array:
        """The scalar training loss of predictions ``pred`` against targets ``y``."""
        self._check_shapes(pred, y)
        if self.loss_kind == "mse":
            return mean_squared_error(pred, y)
        return softmax_cross_entropy(pred, y)

    def metrics(self, pred: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        """Scalar metrics: ``baseline_ratio`` (loss / baseline; < 1 means learned), ``accuracy``
        for classification, plus the task's own (e.g. the copy task's accuracy on recalled steps).
        """
        out = {"baseline_ratio": self.loss(pred, y) / self.baseline}
        if self.loss_kind == "xent":
            out["accuracy"] = accuracy(pred, y)
        if self.metric_fn is not None:
            out.update(self.metric_fn(pred, y))
        return out

    def option(self, name: str, default: Any = None) -> Any:
        """The resolved value of one construction option."""
        return dict(self.options).get(name, default)

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
