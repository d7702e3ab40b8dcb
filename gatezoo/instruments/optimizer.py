r"""The optimizer side, for any Optax optimizer: measured from updates, read from its state.

Measured (every optimizer): the per-coordinate effective step :math:`s = -\Delta\theta / g`
from the step's ``updates`` (for bfloat16 parameters, the float32 update of their master copy:
:func:`optimizer_update`) and ``grads``. Per neuron ``q`` of the cell (docs/theory.md §5: the row
``q`` of every kernel, Flax's column ``q`` of a ``(fan_in, hidden)`` kernel) its least-squares
value

.. math::
    s_q = -\frac{\sum_{i \in q} u_i g_i}{\sum_{i \in q} g_i^2},

which is :math:`\eta` for SGD and a gradient-weighted mean of the diagonal preconditioner for
Adam-like methods; summarised by its mean over neurons (size), its coefficient of variation and
max/min across neurons (spread), and its Pearson correlation with the gate's per-neuron mean
:math:`E[\alpha_q]` (gated cells).

A fused kernel ``(fan_in, k hidden)`` counts as ``k`` kernels of ``(fan_in, hidden)``.

Read (where the state has them), with ``optax.tree.get``-style lookups by name in any state
layout (chains, ``inject_hyperparams``, ``optax.contrib``): the rate in force
(``learning_rate``, present when the optimizer was given as a factory and wrapped by
``optax.inject_hyperparams``), the momentum ``beta`` (``momentum`` or ``b1``) with the momentum
trace (``trace``), and Adam's second moment ``nu`` (``ScaleByAdamState``), whose per-parameter
step is :math:`\eta / (\sqrt{\hat\nu} + \epsilon)`, :math:`\hat\nu = \nu/(1-\beta_2^{n})`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from gatezoo.instruments.protocol import LayerFns
from gatezoo.instruments.stats import pearson
from gatezoo.instruments.views import Measure, StepViews

__all__ = [
    "state_value",
    "learning_rate_in_force",
    "momentum_beta",
    "adam_effective_lr",
    "per_neuron_rows",
    "adam_rows",
    "effective_step_rows",
    "optimizer_update",
    "optimizer",
]


def state_value(opt_state: Any, key: str, tuple_name: str | None = None) -> Any | None:
    """The first value named ``key`` in ``opt_state`` (outermost first), or ``None``.

    A thin layer over ``optax.tree_utils.tree_get_all_with_path``: a chain may hold the same
    name twice (two injected rates), where ``optax.tree.get`` refuses; ``tuple_name`` keeps only
    fields of that NamedTuple (``"ScaleByAdamState"``).
    """

    def keep(path, value):
        if tuple_name is None:
            return True
        last = path[-1] if path else None
        return getattr(last, "tuple_name", None) == tuple_name

    found = optax.tree_utils.tree_get_all_with_path(opt_state, key, filtering=keep)
    if not found:
        return None
    return min(found, key=lambda pv: len(pv[0]))[1]


def _array(value: Any) -> jax.Array | None:
    if value is None:
        return None
    try:
        return jnp.asarray(value)
    except TypeError:  # a callable hyperparameter left uninjected
        return None


def learning_rate_in_force(opt_state: Any) -> jax.Array | None:
    """The rate applied by the last update (``None`` if the state holds no ``learning_rate``:
    a transformation built with a fixed rate; pass a factory to have it injected)."""
    return _array(state_value(opt_state, "learning_rate"))


def momentum_beta(opt_state: Any) -> tuple[jax.Array, str]:
    """``(beta, kind)``: kind ``"heavy-ball"`` (a momentum ``trace`` with an injected
    ``momentum``), ``"ema"`` (Adam's ``b1``) or ``"none"`` (``beta = 0``)."""
    momentum = _array(state_value(opt_state, "momentum"))
    if state_value(opt_state, "trace") is not None and momentum is not None:
        return momentum, "heavy-ball"
    if state_value(opt_state, "nu", "ScaleByAdamState") is not None:
        b1 = _array(state_value(opt_state, "b1"))
        return (jnp.asarray(0.9) if b1 is None else b1), "ema"
    return jnp.asarray(0.0), "none"


def adam_effective_lr(opt_state: Any) -> Any | None:
    r"""Adam's per-parameter step :math:`\eta/(\sqrt{\hat\nu}+\epsilon)` (a pytree like the
    params), or ``None`` without an Adam ``nu`` or an injected learning rate."""
    nu = state_value(opt_state, "nu", "ScaleByAdamState")
    count = state_value(opt_state, "count", "ScaleByAdamState")
    lr = learning_rate_in_force(opt_state)
    if nu is None or count is None or lr is None:
        return None
    b2 = _array(state_value(opt_state, "b2"))
    eps = _array(state_value(opt_state, "eps"))
    b2 = jnp.asarray(0.999) if b2 is None else b2
    eps = jnp.asarray(1e-8) if eps is None else eps
    bias = 1.0 - b2 ** jnp.maximum(count, 1).astype(b2.dtype)
    return jax.tree_util.tree_map(lambda v: lr / (jnp.sqrt(v / bias) + eps), nu)


def optimizer_update(opt_state: Any, updates: Any) -> Any:
    """The optimizer's own update of the step: ``updates``, except for narrow (bfloat16)
    parameters optimized on a float32 master copy
    (:class:`gatezoo.training.optimizers.Float32MasterState`), whose parameters move by the
    rounded change of the copy; there the copy's float32 update (``last_step``), since the
    rounding (up to an ulp, often more than the step itself) would swamp the effective step."""
    step = state_value(opt_state, "last_step", "Float32MasterState")
    return updates if step is None else step


def _kernels(tree: Any, hidden: int) -> list[jax.Array]:
    """The cell's kernels as ``(fan_in, hidden)`` matrices; a fused kernel ``(fan_in, k hidden)``
    (Flax's GRUCell and OptimizedLSTMCell concatenate their gates' blocks) gives ``k`` of them."""
    out = []
    for leaf in jax.tree_util.tree_leaves(tree):
        if leaf.ndim == 2 and leaf.shape[-1] % hidden == 0:
            blocks = leaf.reshape(leaf.shape[0], leaf.shape[-1] // hidden, hidden)
            out.extend(blocks[:, i] for i in range(blocks.shape[1]))
    return out


def per_neuron_rows(tree: Any, hidden: int) -> jax.Array | None:
    """Mean over incoming weights of each neuron, averaged over the kernels ``(fan_in, hidden)``
    of ``tree`` (Flax orientation: the theory's row ``i`` is column ``i``); ``None`` if none."""
    rows = [jnp.mean(leaf, axis=0) for leaf in _kernels(tree, hidden)]
    return None if not rows else jnp.mean(jnp.stack(rows), axis=0)


def adam_rows(fns: LayerFns, opt_state: Any) -> jax.Array | None:
    """Adam's per-neuron preconditioner of the cell, ``(hidden,)``, or ``None`` without Adam."""
    eff = adam_effective_lr(opt_state)
    return None if eff is None else per_neuron_rows(fns.cell_params(eff), fns.hidden)


def effective_step_rows(fns: LayerFns, grads: Any, updates: Any) -> jax.Array | None:
    r"""Per neuron :math:`s_q = -\sum u g / \sum g^2` over the cell kernels' rows, ``(hidden,)``
    (``None`` for a cell without ``(fan_in, hidden)`` kernels)."""
    g = _kernels(fns.cell_params(grads), fns.hidden)
    u = _kernels(fns.cell_params(updates), fns.hidden)
    if not g:
        return None
    num = sum(jnp.sum(a * b, axis=0) for a, b in zip(u, g, strict=True))
    den = sum(jnp.sum(b * b, axis=0) for b in g)
    return -num / den


def _norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def _read_state(ctx, out: dict) -> None:
    lr = learning_rate_in_force(ctx.opt_state)
    beta, kind = momentum_beta(ctx.opt_state)
    rows = adam_rows(ctx.fns, ctx.opt_state)
    one = jnp.ones((), ctx.loss.dtype)
    out["found_lr"] = one * (lr is not None)
    out["found_momentum"] = one * (kind != "none")
    out["found_nu"] = one * (rows is not None)
    out["beta"] = beta
    out["momentum_factor"] = (
        1.0 / (1.0 - beta) if kind == "heavy-ball" else jnp.ones_like(beta)
    )
    if lr is not None:
        out["lr"] = lr
        out["step_gain"] = out["update_norm"] / (
            lr * out["grad_norm"]
        )
    if rows is not None:
        out["adam_row_mean"] = jnp.mean(rows)
        out["adam_row_min"] = jnp.min(rows)
        out["adam_row_max"] = jnp.max(rows)
        out["adam_row_anisotropy"] = jnp.max(rows) / jnp.min(rows)


def optimizer(fns, *, every: int | None = None) -> Measure:
    """The ``optimizer`` instrument (any cell, any Optax optimizer).

    Metrics, always: ``optimizer/grad_norm``, ``optimizer/update_norm``, the effective step per
    neuron ``optimizer/step_{mean,cv,anisotropy}`` (mean over neurons, std/mean and max/min
    across neurons), with gates ``optimizer/step_gate_corr`` (Pearson across neurons with the
    mean gate); what was found in the state: ``optimizer/found_{lr,momentum,nu}`` (1 or 0),
    ``optimizer/beta`` and ``optimizer/momentum_factor`` (``1/(1-beta)`` for heavy-ball
    momentum, else 1); with an injected rate ``optimizer/lr`` and ``optimizer/step_gain``
    (``||update|| / (lr ||grad||)``); with Adam ``optimizer/adam_row_{mean,min,max,anisotropy}``.
    """

    def measure(ctx, state, views: StepViews):
        updates = optimizer_update(ctx.opt_state, ctx.updates)
        out = {
            "grad_norm": _norm(ctx.grads),
            "update_norm": _norm(updates),
        }
        steps = effective_step_rows(ctx.fns, ctx.grads, updates)
        if steps is not None:
            mean = jnp.mean(steps)
            out["step_mean"] = mean
            out["step_cv"] = jnp.std(steps) / jnp.abs(mean)
            out["step_anisotropy"] = jnp.max(steps) / jnp.min(steps)
            if ctx.fns.gated:
                out["step_gate_corr"] = pearson(
                    steps, views.alpha_neuron_mean.astype(steps.dtype)
                )
        _read_state(ctx, out)
        return out, state

    return Measure("optimizer", lambda p: (), measure, every=every)
