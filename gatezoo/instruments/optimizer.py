r"""The optimizer side, read from an Optax state built with ``optax.inject_hyperparams``.

* learning rate in force: ``hyperparams['learning_rate']`` (after the schedule);
* momentum: ``beta`` is ``hyperparams['momentum']`` (heavy ball, ``optax.trace``; effective
  step factor :math:`1/(1-\beta)`) or ``hyperparams['b1']`` (Adam's EMA, factor 1);
* Adam's per-parameter step :math:`\eta / (\sqrt{\hat\nu} + \epsilon)` with
  :math:`\hat\nu = \nu/(1-\beta_2^{n})`, summarised per neuron row (THEORY.md §5): for every cell
  kernel ``(fan_in, hidden)`` the mean over the incoming weights of each neuron, then the mean
  over kernels.

The readers walk the state's tuples and dicts, so chains (``clip``, weight decay) are fine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax

from gatezoo.instruments.protocol import ModelFns
from gatezoo.instruments.views import Measure, StepViews

__all__ = [
    "hyperparams",
    "learning_rate_in_force",
    "momentum_beta",
    "adam_effective_lr",
    "per_neuron_rows",
    "adam_rows",
    "optimizer",
]


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, optax.ScaleByAdamState | optax.TraceState):
        return
    if isinstance(node, tuple | list):
        for child in node:
            yield from _walk(child)
    elif isinstance(node, dict):
        for child in node.values():
            yield from _walk(child)


def hyperparams(opt_state: Any) -> dict[str, jax.Array]:
    """The injected hyperparameters of every ``inject_hyperparams`` state, merged (outer first)."""
    out: dict[str, jax.Array] = {}
    for node in _walk(opt_state):
        hp = getattr(node, "hyperparams", None)
        if isinstance(hp, dict) and hasattr(node, "inner_state"):
            for k, v in hp.items():
                out.setdefault(k, v)
    return out


def learning_rate_in_force(opt_state: Any) -> jax.Array | None:
    """``hyperparams['learning_rate']``, or ``None`` if the optimizer did not inject it."""
    lr = hyperparams(opt_state).get("learning_rate")
    return None if lr is None else jnp.asarray(lr)


def momentum_beta(opt_state: Any) -> tuple[jax.Array, str]:
    """``(beta, kind)``: kind ``"heavy-ball"`` (``TraceState``), ``"ema"`` (Adam) or ``"none"``."""
    hp = hyperparams(opt_state)
    nodes = list(_walk(opt_state))
    if any(isinstance(n, optax.TraceState) for n in nodes) and "momentum" in hp:
        return jnp.asarray(hp["momentum"]), "heavy-ball"
    if any(isinstance(n, optax.ScaleByAdamState) for n in nodes):
        return jnp.asarray(hp.get("b1", 0.9)), "ema"
    return jnp.asarray(0.0), "none"


def adam_effective_lr(opt_state: Any) -> Any | None:
    r"""Adam's per-parameter step :math:`\eta/(\sqrt{\hat\nu}+\epsilon)` (a pytree like the
    params), or ``None`` without an Adam state or an injected learning rate."""
    adam = next((n for n in _walk(opt_state) if isinstance(n, optax.ScaleByAdamState)), None)
    lr = learning_rate_in_force(opt_state)
    if adam is None or lr is None:
        return None
    hp = hyperparams(opt_state)
    b2 = jnp.asarray(hp.get("b2", 0.999))
    eps = jnp.asarray(hp.get("eps", 1e-8))
    count = jnp.maximum(adam.count, 1).astype(b2.dtype)
    bias = 1.0 - b2**count
    return jax.tree_util.tree_map(lambda nu: lr / (jnp.sqrt(nu / bias) + eps), adam.nu)


def per_neuron_rows(tree: Any, hidden: int) -> jax.Array | None:
    """Mean over incoming weights of each neuron, averaged over the kernels ``(fan_in, hidden)``
    of ``tree`` (Flax orientation: THEORY's row ``i`` is column ``i``); ``None`` if none."""
    rows = [
        jnp.mean(leaf, axis=0)
        for leaf in jax.tree_util.tree_leaves(tree)
        if leaf.ndim == 2 and leaf.shape[-1] == hidden
    ]
    return None if not rows else jnp.mean(jnp.stack(rows), axis=0)


def adam_rows(fns: ModelFns, opt_state: Any) -> jax.Array | None:
    """Adam's per-neuron preconditioner of the cell, ``(hidden,)``, or ``None`` without Adam."""
    eff = adam_effective_lr(opt_state)
    return None if eff is None else per_neuron_rows(fns.cell_params(eff), fns.hidden)


def _norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def optimizer(fns, *, every: int = 1) -> Measure:
    """The ``optimizer`` instrument (any cell, any Optax optimizer).

    Metrics: ``optimizer/lr`` (in force), ``optimizer/beta`` and ``optimizer/momentum_factor``
    (``1/(1-beta)`` for heavy-ball momentum, 1 otherwise), ``optimizer/grad_norm``,
    ``optimizer/update_norm``, ``optimizer/step_gain`` (``||update|| / (lr ||grad||)``: what the
    optimizer multiplies the plain SGD step by), and with Adam ``optimizer/adam_row_{mean,min,
    max}`` and ``optimizer/adam_row_anisotropy`` (max/min over neurons of the per-row step).
    """

    def measure(ctx, state, views: StepViews):
        lr = learning_rate_in_force(ctx.opt_state)
        beta, kind = momentum_beta(ctx.opt_state)
        gnorm, unorm = _norm(ctx.grads), _norm(ctx.updates)
        out = {
            "optimizer/beta": beta,
            "optimizer/momentum_factor": 1.0 / (1.0 - beta) if kind == "heavy-ball" else
            jnp.ones_like(beta),
            "optimizer/grad_norm": gnorm,
            "optimizer/update_norm": unorm,
        }
        if lr is not None:
            out["optimizer/lr"] = lr
            out["optimizer/step_gain"] = unorm / (lr * gnorm)
        rows = adam_rows(ctx.fns, ctx.opt_state)
        if rows is not None:
            out["optimizer/adam_row_mean"] = jnp.mean(rows)
            out["optimizer/adam_row_min"] = jnp.min(rows)
            out["optimizer/adam_row_max"] = jnp.max(rows)
            out["optimizer/adam_row_anisotropy"] = jnp.max(rows) / jnp.min(rows)
        return out, state

    return Measure("optimizer", lambda p: (), measure, every=every)
