"""Seeds side by side: stacked models, and a compiled SGD/Adam loop that keeps checkpoints.

The reproductions train the same small models for many seeds with a plain optimizer and look at
the parameters at a few checkpoint iterations. Here every seed's parameters are stacked on a
leading axis, the train step is ``jax.vmap``-ped over it, and the steps between checkpoints run
as one ``lax.scan`` (one compiled call per stretch; stretches of equal length reuse the trace).

Example:
  >>> from gatezoo.tasks import make_task
  >>> task = make_task("adding", seq_len=10)
  >>> models = SeededModels.build("vector", task.input_dim, 8, seeds=[1, 2])
  >>> run = train_with_checkpoints(models, task, "sgd", 1e-2, [0, 5], batch_size=4,
  ...                              batch_key=lambda s, i: jax.random.fold_in(
  ...                                  stream_key(s, "train"), i))
  >>> jax.tree_util.tree_leaves(run.checkpoints[5])[0].shape[0]
  2
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gatezoo.models import InitSpec, SequenceModel, make_cell

__all__ = ["SeededModels", "CheckpointRun", "train_with_checkpoints", "flat_size",
           "over_seeds", "stream_key", "STREAMS"]

# One independent stream per use of a seed: ``fold_in(key(seed), STREAMS[name])``. Streams of
# different seeds and of different uses never coincide (unlike ``key(seed + offset)``).
STREAMS = {"cell": 0, "readout": 1, "train": 2, "jitter": 3, "probe": 4, "triples": 5,
           "gradcov": 6, "power": 7}


def stream_key(seed: int | jax.Array, name: str) -> jax.Array:
    """The PRNG key of stream ``name`` (one of :data:`STREAMS`) of ``seed``."""
    if name not in STREAMS:
        raise ValueError(f"unknown key stream {name!r}; choose one of: {', '.join(STREAMS)}")
    return jax.random.fold_in(jax.random.key(seed), STREAMS[name])


@dataclasses.dataclass
class SeededModels:
    """One architecture, many seeds: ``params`` has a leading seed axis on every leaf.

    The models are those of the authors' release (THEORY.md §1.7): no biases anywhere, readout
    ``W_o h_T`` without bias, PyTorch-style uniform initialisation (``init="torch"``).
    """

    graphdef: Any
    rest: Any
    params: Any
    seeds: tuple[int, ...]
    cell: str

    @classmethod
    def build(
        cls, cell: str, input_dim: int, hidden: int, seeds: Sequence[int], *,
        init: str = "torch", init_std: float = 0.2, dtype: Any = jnp.float32,
        cell_options: dict | None = None,
    ) -> SeededModels:
        models = []
        for s in seeds:
            c = make_cell(
                cell, input_dim, hidden, rngs=nnx.Rngs(params=stream_key(int(s), "cell")),
                init=InitSpec(scheme=init, std=init_std), use_bias=False, param_dtype=dtype,
                **(cell_options or {}),
            )
            models.append(SequenceModel(
                c, 1, readout="last", readout_bias=False,
                rngs=nnx.Rngs(params=stream_key(int(s), "readout"))
            ))
        graphdef, _, rest = nnx.split(models[0], nnx.Param, ...)
        params = jax.tree_util.tree_map(
            lambda *p: jnp.stack(p), *[nnx.state(m, nnx.Param) for m in models]
        )
        return cls(graphdef, rest, params, tuple(int(s) for s in seeds), cell)

    def model(self, params: Any) -> SequenceModel:
        """The model of one seed's parameters (usable inside jit/vmap)."""
        return nnx.merge(self.graphdef, params, self.rest)

    def predict(self, params: Any, xs: jax.Array) -> jax.Array:
        return self.model(params)(xs)


def over_seeds(fn: Callable, xs: Any, seed_batch: int | None | str = "auto"):
    """``fn`` applied to every seed's slice of ``xs`` (leading seed axis), inside one program.

    ``seed_batch=None`` vmaps all seeds at once; an integer ``n`` runs them ``n`` at a time
    (``lax.map`` with ``batch_size=n``). ``"auto"``: one at a time on a CPU, where the backward
    pass's residuals of all seeds together fall out of the cache and one vmap over 20 seeds is
    slower than the seeds in turn (benchmarks/README.md, training), and all at once on an
    accelerator, whose batched matrix products want the width.
    """
    if seed_batch == "auto":
        seed_batch = 1 if jax.default_backend() == "cpu" else None
    if seed_batch is None:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=int(seed_batch))


def flat_size(params: Any) -> int:
    """Number of scalars of one seed's parameters (leaves carry a leading seed axis)."""
    return int(sum(math.prod(p.shape[1:]) for p in jax.tree_util.tree_leaves(params)))


@dataclasses.dataclass
class CheckpointRun:
    """Parameters at each checkpoint (stacked over seeds) and the training loss of every step.

    Attributes:
      checkpoints: ``{iteration: params}``; ``iteration`` counts the updates applied.
      losses: ``(steps, seeds)`` training loss of each step's batch, before its update.
      wall_time_s: seconds spent training (compilation included).
    """

    checkpoints: dict[int, Any]
    losses: np.ndarray
    wall_time_s: float


def _optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "adam":
        return optax.adam(learning_rate)
    raise ValueError(f"unknown optimizer {name!r} for a reproduction; choose 'sgd' or 'adam'")


def train_with_checkpoints(
    models: SeededModels,
    task: Any,
    optimizer: str,
    learning_rate: float,
    checkpoints: Sequence[int],
    *,
    batch_size: int,
    batch_key: Callable[[int, jax.Array], jax.Array],
    input_jitter: float = 0.0,
    jitter_key: Callable[[int, jax.Array], jax.Array] | None = None,
    progress: Callable[[int, int], None] | None = None,
    seed_batch: int | None | str = "auto",
) -> CheckpointRun:
    """Trains every seed and keeps the parameters after ``c`` updates for each ``c`` in
    ``checkpoints``.

    Args:
      models: the stacked models (updated in place: ``models.params`` ends as the final params).
      task: a :class:`gatezoo.tasks.Task`; its ``loss`` is minimised.
      optimizer: ``"sgd"`` (plain, no momentum) or ``"adam"``.
      checkpoints: iterations at which to keep parameters; the run lasts ``max(checkpoints)``.
      batch_key: ``batch_key(seed, step) -> key`` of the training batch (a constant key gives the
        same batch every step: THEORY.md §6.4's quirk).
      input_jitter: std of Gaussian noise added to the inputs each step (keyed by ``jitter_key``).
      seed_batch: seeds per ``jax.vmap`` inside the compiled step (see :func:`over_seeds`).
    """
    opt = _optimizer(optimizer, learning_rate)
    params = models.params
    opt_state = jax.vmap(opt.init)(params)
    seeds = jnp.asarray(models.seeds)

    def loss_fn(p, x, y):
        return task.loss(models.predict(p, x), y)

    def one_seed(p, s, seed, i):
        x, y = task.sample(batch_key(seed, i), batch_size)
        if input_jitter:
            x = x + input_jitter * jax.random.normal(jitter_key(seed, i), x.shape, x.dtype)
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    def body(carry, i):
        p, s = carry
        p, s, loss = over_seeds(lambda a: one_seed(*a, i), (p, s, seeds), seed_batch)
        return (p, s), loss

    @jax.jit
    def stretch(p, s, steps):
        (p, s), losses = jax.lax.scan(body, (p, s), steps)
        return p, s, losses

    marks = sorted(set(int(c) for c in checkpoints))
    if marks and marks[0] < 0:
        raise ValueError(f"checkpoints must be >= 0, got {marks[0]}")
    total = marks[-1] if marks else 0
    start = time.perf_counter()
    kept: dict[int, Any] = {}
    losses = []
    done = 0
    # the longest stretch that divides every gap keeps the number of distinct traces small
    gaps = [b - a for a, b in zip([0, *marks], marks, strict=False) if b > a]
    chunk = math.gcd(*gaps) if gaps else 1
    chunk = max(1, min(chunk, 100))
    for mark in marks:
        while done < mark:
            n = min(chunk, mark - done)
            params, opt_state, l = stretch(params, opt_state, jnp.arange(done, done + n))
            losses.append(np.asarray(l))
            done += n
            if progress is not None:
                progress(done, total)
        kept[mark] = params
    models.params = params
    loss_arr = np.concatenate(losses, axis=0) if losses else np.zeros((0, len(models.seeds)))
    return CheckpointRun(kept, loss_arr, time.perf_counter() - start)
