"""Learning-rate trials as slots beside the seeds: one compiled program for a whole search.

A run with ``TrainConfig.lr_trials = (eta_1, ..., eta_N)`` trains ``N x S`` slots, trial-major
(slot ``j = k S + i`` is trial ``k`` at seed ``i``). Every slot starts from its seed's parameters
and data stream, exactly as the single run at that seed would, and differs only in the rate held
in its optimizer state: under :func:`optax.inject_hyperparams` a numeric ``learning_rate`` is an
array in ``state.hyperparams``, read at every update, so writing ``eta_k`` into slot ``j`` after
``init`` is all a trial needs. The compiled step is the same program as a run of ``N x S`` seeds
(one trace), and trial ``k`` of a sweep equals the run at ``eta_k`` to float tolerance.

The search space of a rate is log-uniform: :func:`log_grid` spaces ``N`` trials evenly in
``log eta`` over ``[lo, hi]`` (both ends included), the grid of DeepOBS and AlgoPerf-style
harnesses with a stated budget of ``N`` trials per optimizer.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from gatezoo.instruments.optimizer import learning_rate_in_force
  >>> from gatezoo.training.optimizers import make_optimizer
  >>> opt = make_optimizer("sgd", 0.1)
  >>> state = jax.vmap(opt.init)({"w": jnp.ones((2, 3))})
  >>> state = set_slot_learning_rates(state, [0.01, 1.0])
  >>> [round(float(v), 4) for v in learning_rate_in_force(state)]
  [0.01, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import optax

__all__ = ["log_grid", "set_slot_learning_rates"]


def log_grid(lo: float, hi: float, n: int) -> tuple[float, ...]:
    """``n`` rates evenly spaced in ``log eta`` over ``[lo, hi]``: ``lo (hi/lo)^(k/(n-1))``.

    ``n = 1`` gives the geometric midpoint ``sqrt(lo hi)``.

    Raises:
      ValueError: unless ``0 < lo <= hi`` and ``n >= 1``.
    """
    lo, hi = float(lo), float(hi)
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"a learning-rate range needs 0 < lo <= hi, got {lo:g}:{hi:g}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of trials must be an integer >= 1, got {n!r}")
    if n == 1:
        return (math.sqrt(lo * hi),)
    ratio = math.log(hi / lo)
    return tuple(float(lo * math.exp(ratio * k / (n - 1))) for k in range(n))


def _inject_state(tree: Any) -> Any:
    """The first inject_hyperparams state (``hyperparams`` + ``inner_state``) in ``tree``."""
    if isinstance(tree, tuple) and hasattr(tree, "hyperparams") and hasattr(tree, "inner_state"):
        return tree
    children = tree.values() if isinstance(tree, dict) else (
        tree if isinstance(tree, (tuple, list)) else ())
    for child in children:
        found = _inject_state(child)
        if found is not None:
            return found
    return None


def set_slot_learning_rates(opt_state: Any, rates: Sequence[float] | jnp.ndarray) -> Any:
    """``opt_state`` (stacked over slots) with slot ``j``'s injected learning rate set to
    ``rates[j]``.

    Raises:
      ValueError: if the state has no numeric injected ``learning_rate`` (a rate schedule is
        evaluated afresh at every update, so a written value would not last), or if the number
        of rates differs from the number of slots.
    """
    hp = _inject_state(opt_state)
    if hp is None or "learning_rate" not in hp.hyperparams:
        raise ValueError("learning-rate trials need an optimizer built with "
                         "optax.inject_hyperparams and a learning_rate argument")
    if "learning_rate" in getattr(hp, "hyperparams_states", {}):
        raise ValueError("learning-rate trials need a constant rate (the schedule would "
                         "overwrite the trial's rate at every update)")
    current = jnp.asarray(hp.hyperparams["learning_rate"])
    new = jnp.asarray(rates, current.dtype)
    if new.shape != current.shape:
        raise ValueError(f"{new.size} learning rates given for {current.size} slots")
    return optax.tree.set(opt_state, learning_rate=new)
