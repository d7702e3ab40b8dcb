r"""Gates beside the optimizer, as numbers (docs/theory.md §3.5 and §5).

* ``effective_lr``: the per-neuron, per-lag effective learning rate
  :math:`\mu^{(q)}_\ell = \Lambda^{(q)}\,\bar\Gamma^{(q)}_\ell`, the optimizer's base rate per
  neuron (Adam's per-row step, else the learning rate in force times the momentum factor) times
  the gate transport :math:`\bar\Gamma^{(q)}_\ell = E_{b,t}\prod_{j=t-\ell+1}^{t}(1-\alpha^{(q)}_j)`
  (the zeroth-order retention factor of §3.5; the diagonal first-order correction is left out).
* ``analogies``: the leak as momentum, :math:`\beta_{gate} = 1 - E[\alpha]` beside the
  optimizer's :math:`\beta`; the gate as a schedule, :math:`\eta E[\alpha]` beside :math:`\eta`;
  the vector gate as a diagonal preconditioner, the per-neuron mean gate beside Adam's per-row
  step (Pearson correlation across neurons and the max/min anisotropy of each).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo.instruments.optimizer import adam_rows, learning_rate_in_force, momentum_beta
from gatezoo.instruments.stats import lag_grid, pearson, window_products_at
from gatezoo.instruments.views import Measure, StepViews

__all__ = ["retention_transport", "effective_lr", "analogies"]


def retention_transport(alpha: jax.Array, lags, max_ends: int = 32,
                        valid: jax.Array | None = None) -> jax.Array:
    r"""``(len(lags), hidden)``: :math:`E_{b,t}\prod_{j=t-\ell+1}^{t}(1-\alpha_j)` per neuron.

    Windows must fit in the sequence (``t >= ell``); the expectation over ``t`` uses at most
    ``max_ends`` end times evenly strided over the sequence. ``lags`` are concrete integers
    (a tuple, list or array). The window products are built by doubling with multiplications
    only (:func:`~gatezoo.instruments.stats.window_products_at`): no logs or exponentials, which
    cost more than the rest of the instrument on CPU; memory ``O(log(max lag) T batch hidden)``.
    With ``valid`` (``(T, batch)``, False on padded steps) a window counts only where it lies
    inside its sequence.
    """
    lags = tuple(int(v) for v in np.asarray(lags).reshape(-1))
    T = alpha.shape[0]
    t = np.arange(1, T + 1)[:: max(1, -(-T // max_ends))]  # 1-indexed end times
    g = window_products_at(1.0 - alpha, jnp.asarray(t - 1), lags)  # (L, n_ends, b, hidden)
    fits = jnp.asarray(t[None, :] >= np.asarray(lags)[:, None])  # (L, n_ends)
    inside = jnp.broadcast_to(fits[:, :, None], g.shape[:3])  # (L, n_ends, b)
    if valid is not None:
        inside = inside & valid[jnp.asarray(t - 1)][None]
    g = jnp.where(inside[..., None], g, 0.0)
    count = jnp.sum(inside, axis=(1, 2)).astype(alpha.dtype)
    return jnp.sum(g, axis=(1, 2)) / count[:, None]


def _base_rate(ctx, views: StepViews) -> jax.Array:
    rows = adam_rows(ctx.fns, ctx.opt_state)
    if rows is not None:
        return rows
    lr = learning_rate_in_force(ctx.opt_state)
    beta, kind = momentum_beta(ctx.opt_state)
    base = jnp.asarray(1.0) if lr is None else lr
    if kind == "heavy-ball":
        base = base / (1.0 - beta)
    return jnp.full((ctx.fns.hidden,), base, views.alpha.dtype)


def effective_lr(fns, *, every: int | None = None) -> Measure:
    """The ``effective_lr`` instrument (gated cells; see module docstring).

    Metrics: ``effective_lr/base`` (mean over neurons of the base rate), and on the lag grid
    ``effective_lr/envelope@ell`` (:math:`\\|\\mu_\\ell\\|_1`, sum over neurons) and
    ``effective_lr/anisotropy@ell`` (max/min over neurons of :math:`\\mu^{(q)}_\\ell`). The
    expectation is over the examples of the gate trace (:class:`StepViews`).
    """

    def measure(ctx, state, views: StepViews):
        base = _base_rate(ctx, views)
        grid = lag_grid(views.seq_len)
        out = {"base": jnp.mean(base)}
        if grid:
            gamma = retention_transport(views.alpha, grid, valid=views.valid)
            mu = base[None, :] * gamma
            for i, ell in enumerate(grid):
                out[f"envelope@{ell}"] = jnp.sum(mu[i])
                out[f"anisotropy@{ell}"] = jnp.max(mu[i]) / jnp.min(mu[i])
        return out, state

    return Measure("effective_lr", lambda p: (), measure, every=every)


def analogies(fns, *, every: int | None = None) -> Measure:
    """The ``analogies`` instrument (gated cells; see module docstring).

    Metrics: ``analogies/beta_gate``, ``analogies/beta_optimizer``, ``analogies/lr``,
    ``analogies/gate_step`` (``lr * E[alpha]``), ``analogies/gate_anisotropy`` (max/min over
    neurons of the mean gate), and with Adam ``analogies/adam_anisotropy`` and
    ``analogies/precond_corr``.
    """

    def measure(ctx, state, views: StepViews):
        mean_alpha = views.alpha_mean
        beta, _ = momentum_beta(ctx.opt_state)
        p_gate = views.alpha_neuron_mean
        out = {
            "beta_gate": 1.0 - mean_alpha,
            "beta_optimizer": beta,
            "gate_anisotropy": jnp.max(p_gate) / jnp.min(p_gate),
        }
        lr = learning_rate_in_force(ctx.opt_state)
        if lr is not None:
            out["lr"] = lr
            out["gate_step"] = lr * mean_alpha
        rows = adam_rows(ctx.fns, ctx.opt_state)
        if rows is not None:
            out["adam_anisotropy"] = jnp.max(rows) / jnp.min(rows)
            out["precond_corr"] = pearson(p_gate, rows.astype(p_gate.dtype))
        return out, state

    return Measure("analogies", lambda p: (), measure, every=every)
