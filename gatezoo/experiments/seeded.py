"""Seeds side by side: stacked models, trained on gatezoo's one train step with checkpoints.

The reproductions train the same small models for many seeds with a plain optimizer and look at
the parameters at a few checkpoint iterations. Here every seed's parameters are stacked on a
leading axis and trained by the compiled step of ``gz.train``
(:func:`gatezoo.training.make_step_fns`: the seeds side by side, K steps per ``lax.scan``, one
compile per run) with the reproductions' own batch rules; the host stops at each checkpoint.

Example:
  >>> from gatezoo.tasks import make_task
  >>> task = make_task("adding", seq_len=10)
  >>> models = SeededModels.build("vector", task.input_dim, 8, seeds=[1, 2])
  >>> run = train_with_checkpoints(models, task, "sgd", 1e-2, [0, 5], batch_size=4,
  ...                              batch_key=lambda s, i: jax.random.fold_in(
  ...                                  stream_key(s, "batches"), i))
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
from flax import nnx

from gatezoo.flops import FlopCount, count_flops
from gatezoo.instruments.attach import attach
from gatezoo.models import InitSpec, SequenceModel, make_cell
from gatezoo.streams import STREAMS, stream_key
from gatezoo.training.optimizers import make_optimizer
from gatezoo.training.sharding import place_state, run_mesh
from gatezoo.training.step import BatchFn, make_step_fns

__all__ = ["SeededModels", "CheckpointRun", "train_with_checkpoints", "flat_size",
           "stream_key", "STREAMS"]

@dataclasses.dataclass
class SeededModels:
    """One architecture, many seeds: ``params`` has a leading seed axis on every leaf.

    The models are those of the authors' release (docs/theory.md §1.7): no biases anywhere, readout
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
      flops: the operations of all the training steps (:func:`gatezoo.flops.count_flops` of
        the compiled K-step chunk, per step, times the steps taken).
      devices: how many devices the seeds were split over.
    """

    checkpoints: dict[int, Any]
    losses: np.ndarray
    wall_time_s: float
    flops: FlopCount = FlopCount()
    devices: int = 1


def _checkpoint_batches(
    task: Any, batch_size: int, batch_key: Callable, input_jitter: float,
    jitter_key: Callable | None,
) -> BatchFn:
    """The step builder's batch source: ``task.sample(batch_key(seed, step))``, plus Gaussian
    input noise of std ``input_jitter`` keyed by ``jitter_key(seed, step)``."""

    def batch(seed, step, data):
        del data  # task.sample reads the task's own arrays (the reproductions' hold none)
        xs, ys = task.sample(batch_key(seed, step), batch_size)
        if input_jitter:
            xs = xs + input_jitter * jax.random.normal(jitter_key(seed, step), xs.shape, xs.dtype)
        return xs, ys

    return batch


def _stretch(marks: Sequence[int]) -> int:
    """Steps per compiled call: the longest stretch (at most 100) that divides every gap between
    checkpoints, so that few calls end short (a short call runs the same compiled program)."""
    gaps = [b - a for a, b in zip([0, *marks], marks, strict=False) if b > a]
    return max(1, min(math.gcd(*gaps) if gaps else 1, 100))


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
    seed_batch: int | None = None,
    devices: int | None = None,
) -> CheckpointRun:
    """Trains every seed and keeps the parameters after ``c`` updates for each ``c`` in
    ``checkpoints``.

    The steps are those of ``gz.train`` (:func:`gatezoo.training.make_step_fns` on the model
    attached with no instruments); only the batches and the stops differ.

    Args:
      models: the stacked models (updated in place: ``models.params`` ends as the final params).
      task: a :class:`gatezoo.tasks.Task`; its ``loss`` is minimised.
      optimizer: a name of :func:`gatezoo.make_optimizer` (the reproductions use ``"sgd"``,
        plain without momentum, and ``"adam"``) at the constant rate ``learning_rate``.
      checkpoints: iterations at which to keep parameters; the run lasts ``max(checkpoints)``.
      batch_key: ``batch_key(seed, step) -> key`` of the training batch (a constant key gives the
        same batch every step: docs/theory.md §6.4's quirk).
      input_jitter: std of Gaussian noise added to the inputs each step (keyed by ``jitter_key``).
      seed_batch: seeds per ``jax.vmap`` inside the compiled step
        (:func:`gatezoo.training.seeds.over_seeds`; ``None``: by backend).
      devices: split the seeds over this many devices (``shard="seeds"`` of
        :mod:`gatezoo.training.sharding`; on a CPU, host devices run on their own cores);
        ``None``: all of this process's devices when the seeds divide over them, else one. The
        kept parameters come back on one device.

    A non-finite step is applied like any other (a diverging seed ends with NaN parameters and
    losses, as in a plain optimizer loop), not skipped.
    """
    marks = sorted(set(int(c) for c in checkpoints))
    if marks and marks[0] < 0:
        raise ValueError(f"checkpoints must be >= 0, got {marks[0]}")
    if input_jitter and jitter_key is None:
        raise ValueError("input_jitter needs jitter_key(seed, step)")
    start, k = time.perf_counter(), _stretch(marks)
    first = models.model(jax.tree_util.tree_map(lambda p: p[0], models.params))
    # one process only: the kept parameters are read back whole on this host
    mesh = None if jax.process_count() > 1 else run_mesh(
        devices, "seeds", batch_size=batch_size, slots=len(models.seeds))
    step_fns = make_step_fns(
        attach(first, task), task, make_optimizer(optimizer, learning_rate),
        batch_size=batch_size, steps_per_call=k, seed_batch=seed_batch, mesh=mesh,
        batch=_checkpoint_batches(task, batch_size, batch_key, input_jitter, jitter_key),
        skip_nonfinite=False,
    )
    state = place_state(step_fns.init(models.params, jnp.asarray(models.seeds)), mesh)
    whole = (lambda tree: tree) if mesh is None else (
        lambda tree: jax.device_put(tree, jax.devices()[0]))
    data, total, done = getattr(task, "data", None), (marks[-1] if marks else 0), 0
    per_step = count_flops(step_fns.chunk, state, None, data, jnp.int32(k)).scaled(1 / k)
    kept: dict[int, Any] = {}
    losses = [np.zeros((0, len(models.seeds)))]
    for mark in marks:
        while done < mark:
            n = min(k, mark - done)
            state, out = step_fns.chunk(state, None, data, jnp.int32(n))
            losses.append(np.asarray(out["loss"])[:n])
            done += n
            if progress is not None:
                progress(done, total)
        kept[mark] = whole(state.params)
    models.params = whole(state.params)
    return CheckpointRun(kept, np.concatenate(losses, axis=0), time.perf_counter() - start,
                         per_step.scaled(total), 1 if mesh is None else mesh.size)
