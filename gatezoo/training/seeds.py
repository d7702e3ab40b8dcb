"""Seeds side by side inside one compiled program: all at once, or in groups.

Every per-seed array carries a leading seed (slot) axis. :func:`over_seeds` applies a one-seed
function to each slice. How the seeds share the machine is a choice of speed only: the result
is the same function of each seed's slice either way.

Example:
  >>> import jax.numpy as jnp
  >>> over_seeds(lambda a: a[0] * a[1], (jnp.arange(4.0), jnp.ones(4)), seed_batch=2)
  Array([0., 1., 2., 3.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

__all__ = ["over_seeds", "resolve_seed_batch"]


def resolve_seed_batch(seed_batch: int | None) -> int | None:
    """The group size :func:`over_seeds` uses: ``seed_batch``, or for ``None`` 1 on a CPU and
    ``None`` (all seeds in one ``jax.vmap``) on an accelerator.

    On XLA:CPU one vmap over many seeds is slower than the seeds in turn inside the same
    program (the backward pass's residuals of all seeds together fall out of the cache;
    benchmarks/README.md, training); an accelerator's batched matrix products want the width.
    """
    if seed_batch is None and jax.default_backend() == "cpu":
        return 1
    if seed_batch is not None and (isinstance(seed_batch, bool) or int(seed_batch) < 1):
        raise ValueError(f"seed_batch must be a positive integer or None, got {seed_batch!r}")
    return None if seed_batch is None else int(seed_batch)


def over_seeds(fn: Callable[[Any], Any], xs: Any, seed_batch: int | None = None) -> Any:
    """``fn`` applied to every seed's slice of ``xs`` (a pytree, leading seed axis on each
    leaf), results stacked over the seeds.

    Args:
      fn: ``fn(one_seed_slice) -> pytree``; whatever is the same for every seed (the step
        index, dataset arrays) is closed over rather than put in ``xs``.
      xs: the per-seed inputs.
      seed_batch: ``k`` runs groups of ``k`` seeds, each group one ``jax.vmap``, the groups one
        after another (``lax.map`` with ``batch_size=k``); ``None`` picks by backend
        (:func:`resolve_seed_batch`).
    """
    group = resolve_seed_batch(seed_batch)
    if group is None:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=group)
