"""Glue shared by the synthetic tasks: split-separated keys and a Task around a generator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from gatezoo.tasks.protocol import SPLITS, MetricFn, Task

__all__ = ["Generator", "split_key", "synthetic_task"]

# generate(key, batch_size) -> (x, y): a pure, jit-able draw of one batch (y a Padded for a
# variable-length task).
Generator = Callable[[jax.Array, int], tuple[jax.Array, Any]]


def split_key(key: jax.Array, split: str) -> jax.Array:
    """Derives the key a split draws from: ``fold_in(key, index of split)``.

    Train and test batches therefore come from different streams even when the caller passes
    the same key, and the training stream never reproduces a test batch.
    """
    return jax.random.fold_in(key, SPLITS.index(split))


def synthetic_task(
    generate: Generator,
    *,
    name: str,
    description: str,
    input_dim: int,
    output_dim: int,
    seq_len: int,
    baseline: float,
    baseline_note: str,
    options: dict[str, Any],
    readout: str = "last",
    loss_kind: str = "mse",
    metric_fn: MetricFn | None = None,
    variable_length: bool = False,
) -> Task:
    """Wraps a generator as a :class:`Task` whose splits draw from disjoint key streams;
    ``variable_length=True`` when the generator returns ``Padded`` targets."""

    def sampler(data, key, batch_size, split):
        del data  # synthetic tasks hold no arrays
        return generate(split_key(key, split), batch_size)

    return Task(
        name=name,
        description=description,
        input_dim=input_dim,
        output_dim=output_dim,
        seq_len=seq_len,
        readout=readout,
        loss_kind=loss_kind,
        baseline=float(baseline),
        baseline_note=baseline_note,
        options=tuple(sorted(options.items())),
        sampler=sampler,
        metric_fn=metric_fn,
        variable_length=variable_length,
    )
