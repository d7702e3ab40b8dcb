r"""The theory's predictions of the error signal by lag, and what carries its persistence.

The error signal of the last step's loss reaches the state ``ell`` steps earlier as

.. math:: \lambda_{T-\ell}^\top = \lambda_T^\top J_T J_{T-1}\cdots J_{T-\ell+1},
   \qquad J_t = A_t + B_t,

with :math:`\lambda_T = \partial L/\partial h_T`, :math:`A_t` the gate-frozen Jacobian (gates held
at their values) and :math:`B_t` the part that flows through the gates' recurrent input. At zeroth
order in the gate path the theory predicts the *gate-frozen transport*
:math:`\|\lambda_T^\top A_T\cdots A_{T-\ell+1}\|`. Two cheaper predictors approximate it:

* the *adjoint-weighted retention* :math:`\|\lambda_T^{(r)}\odot\prod_j(1-\alpha_j)\|`, the
  diagonal of :math:`A` that the gates set (:math:`1-z` for a GRU, :math:`f` on an LSTM's cell
  state). :math:`\lambda^{(r)}_T` is the error signal of the state the gate retains, the first
  ``alpha.shape[-1]`` entries of the flattened carry: :math:`\lambda_T` itself for a one-array
  carry; for a carry of several leaves (the LSTM's ``(c, h)``), where the loss reads the retained
  leaf through the others (:math:`h_T = o_T\tanh c_T`), the retained block of
  :math:`A_T^\top\lambda_T` over the last step's retention (for the LSTM exactly
  :math:`\partial L/\partial c_T` with :math:`h_T` a function of :math:`c_T`);
* the *neuron mean* :math:`\frac1{d_h}\sum_i\prod_j(1-\alpha^{(i)}_j)` (and of
  :math:`\prod_j\alpha^{(i)}_j`, the S1 code's candidate weights). It weighs every neuron alike,
  so once training makes the gates heterogeneous (a few slow neurons carry the error signal, many
  fast ones forget within steps) it falls far below the transport the slow neurons keep.

Each, relative to the example's lag-0 signal :math:`\|\lambda_T\|`, is fitted as a power law
against the *propagated* profile :math:`\|\lambda_T^\top J_T\cdots J_{T-\ell+1}\|/\|\lambda_T\|`
over all examples and lags :math:`\ell\ge1`
(equal to the training error signal :math:`\|\partial L/\partial h_{T-\ell}\|` when the loss
has only a last-step term; with a loss at every step the total also holds each later step's own
term, which no product from the last step predicts: ``lags/ratio@{lag}`` is that total).

Attribution: per example and lag, the log-gain of the propagated signal splits exactly into

.. math:: \log\frac{\|\lambda_T^\top\prod J\|}{\|\lambda_T\|}
   = \underbrace{\log\frac{\|\lambda^{(r)}_T\odot\prod(1-\alpha)\|}{\|\lambda_T\|}}_{
     \text{diagonal}}
   + \underbrace{\log\frac{\|\lambda_T^\top\prod A\|}{\|\lambda^{(r)}_T\odot\prod(1-\alpha)\|}}_{
     \text{mixing}}
   + \underbrace{\log\frac{\|\lambda_T^\top\prod J\|}{\|\lambda_T^\top\prod A\|}}_{\text{gates }B}

(diagonal retention; recurrent mixing, the candidate path of :math:`A` beyond its gate diagonal;
the gate-induced part :math:`B`). Means over the examples keep the sum, so the three shares of
the window's total log-gain add to 1 (a negative share: that part sustains the signal against
the others' decay).

Cost: one reverse scan of two vector-Jacobian products per step (frozen and full) on the gate
trace's examples, one for a cell whose gates do not read the state (``B = 0``); the training
backward pass cannot supply them (it carries the full adjoint of every step's loss, not the
frozen transport of the last one).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gatezoo.instruments import steps
from gatezoo.instruments.lags import batch_median, window_products
from gatezoo.instruments.stats import lag_grid, power_fit
from gatezoo.instruments.views import Measure, StepViews

__all__ = ["TransportProfiles", "transport_profiles", "transport_metrics", "gate_transport",
           "PREDICTORS", "PARTS"]

#: the fitted predictors, in the order of :class:`TransportProfiles`' fields after ``log_last``
PREDICTORS = ("frozen", "weighted", "retention", "candidate")
#: the additive parts of the propagated log-gain
PARTS = ("diagonal", "mixing", "gate")


class TransportProfiles(NamedTuple):
    """Log norms per lag ``ell = 1..T-1`` (rows) and example (columns), ``(T-1, b)``.

    Attributes:
      log_last: ``log ||lambda_T||``, ``(b,)``.
      frozen: ``log ||lambda_T^T A_T ... A_{T-ell+1}||``, the gate-frozen transport.
      weighted: ``log ||lambda_T^(r) * prod (1 - alpha_j)||``, the adjoint-weighted retention.
      retention: ``log mean_i prod (1 - alpha_j^(i))``, the neuron mean of the retentions.
      candidate: ``log mean_i prod alpha_j^(i)``, the neuron mean of the candidate weights.
      propagated: ``log ||lambda_T^T J_T ... J_{T-ell+1}||``, the last step's error signal.
      valid: lags each example has (its sequence is longer than ``ell``).
    """

    log_last: jax.Array
    frozen: jax.Array
    weighted: jax.Array
    retention: jax.Array
    candidate: jax.Array
    propagated: jax.Array
    valid: jax.Array


def _pullbacks(fns, cell_params: Any, h: Any, x: jax.Array):
    """``(v_a, v_j) -> (A^T v_a, J^T v_j)`` at one step: one linearisation and one batched
    transpose for both vectors when the cell gives ``split_step`` (``J^T = A^T + B^T``)."""
    tm = jax.tree_util.tree_map
    if fns.split_step is not None and fns.gates_read_state:
        _, pull = jax.vjp(lambda u, g: fns.split_step(cell_params, u, x, g)[0], h, h)

        def both(va, vj):
            a, b = jax.vmap(pull)(tm(lambda p, q: jnp.stack([p, q]), va, vj))
            return tm(lambda t: t[0], a), tm(lambda t, u: t[1] + u[1], a, b)

        return both
    a_t = steps.transpose_a(fns, cell_params, h, x)
    if not fns.gates_read_state:
        return lambda va, vj: (a_t(va), a_t(vj))
    _, full = jax.vjp(lambda u: steps.plain_step(fns, cell_params, u, x), h)
    return lambda va, vj: (a_t(va), full(vj)[0])


def _log_norm(v: Any) -> jax.Array:
    flat = steps.flat_states(v)
    return 0.5 * jnp.log(jnp.sum(flat * flat, axis=-1))


def transport_profiles(
    fns, cell_params: Any, prev: Any, xs_t: jax.Array, last_adjoint: Any, alpha: jax.Array,
    valid: jax.Array | None = None,
) -> TransportProfiles:
    """The predictors and the propagated profile of one window, by one reverse scan.

    Args:
      fns: the layer's :class:`~gatezoo.instruments.protocol.LayerFns` (a gated cell).
      cell_params: ``fns.cell_params(params)``.
      prev: the state before each step, leaves ``(T, b, ...)``, each sequence's last valid step
        in row ``T - 1``.
      xs_t: the layer's inputs ``(T, b, in)``, aligned alike.
      last_adjoint: ``lambda_T = dL/dh_T`` at that step, a carry ``(b, ...)``.
      alpha: the gate trace ``(T, b, n)`` (``1 - alpha`` retains the first ``n`` entries of the
        flattened carry).
      valid: ``(T, b)`` bools of real steps (padding first), or ``None``.

    Returns:
      :class:`TransportProfiles`.
    """
    n = alpha.shape[-1]
    lam = steps.flat_states(last_adjoint)
    retention = 1.0 - alpha
    if valid is not None:  # padding multiplies by 1; its lags are masked below
        retention = jnp.where(valid[..., None], retention, 1.0)
    # a carry of several leaves (the LSTM's (c, h)): the loss may read the retained leaf only
    # through the others (h = o tanh(c)), so its lag-0 adjoint is the retained block of the
    # first frozen pullback, which already holds the last step's retention
    several = len(jax.tree_util.tree_leaves(last_adjoint)) > 1

    def back(carry, inp):
        va, vj, weight, kept = carry
        h, x, r, first = inp
        va, vj = _pullbacks(fns, cell_params, h, x)(va, vj)
        if several:
            weight = jnp.where(first, steps.flat_states(va)[:, :n], weight)
            kept = jnp.where(first, kept, kept * r)
        else:
            kept = kept * r
        logs = (_log_norm(va), 0.5 * jnp.log(jnp.sum((weight * kept) ** 2, -1)),
                _log_norm(vj))
        return (va, vj, weight, kept), logs

    rev = lambda a: a[1:][::-1]  # noqa: E731 (steps T-1 .. 1: lags 1 .. T-1)
    first = jnp.arange(xs_t.shape[0] - 1) == 0
    init = (last_adjoint, last_adjoint, lam[:, :n], jnp.ones_like(retention[0]))
    _, (frozen, weighted, propagated) = jax.lax.scan(
        back, init, (jax.tree_util.tree_map(rev, prev), rev(xs_t), rev(retention), first))
    factors = jnp.stack([retention, jnp.where(valid[..., None], alpha, 1.0)
                         if valid is not None else alpha])
    means = jnp.log(window_products(factors))  # (2, T-1, b)
    mask = (jnp.ones(frozen.shape, bool) if valid is None else valid[::-1][1:])
    return TransportProfiles(_log_norm(last_adjoint), frozen, weighted, means[0], means[1],
                             propagated, mask)


def _lag_means(x: jax.Array, ok: jax.Array) -> jax.Array:
    """Mean over examples (last axis) where ``ok``; NaN for a lag without any."""
    count = jnp.sum(ok, axis=-1)
    return jnp.where(count > 0, jnp.sum(jnp.where(ok, x, 0.0), -1) / jnp.maximum(count, 1),
                     jnp.nan)


def attribution(p: TransportProfiles) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The parts of the propagated log-gain, in the order of :data:`PARTS` (module docstring):
    ``(per-lag means (3, T-1), window shares (3,), window means per lag (3,))``."""
    parts = jnp.stack([p.weighted - p.log_last, p.frozen - p.weighted,
                       p.propagated - p.frozen])
    ok = p.valid & jnp.all(jnp.isfinite(parts), axis=0)
    means = jax.vmap(lambda x: _lag_means(x, ok))(parts)  # (3, T-1)
    have = jnp.all(jnp.isfinite(means), axis=0)
    sums = jnp.sum(jnp.where(have, means, 0.0), axis=-1)
    return means, sums / jnp.sum(sums), sums / jnp.sum(have)


def transport_metrics(p: TransportProfiles) -> dict[str, jax.Array]:
    """The ``transport`` instrument's metrics from :func:`transport_profiles`' output."""
    T = p.frozen.shape[0] + 1
    # each example's decay from its own lag-0 signal: the per-example scale of lambda_T, which
    # the norms share, would otherwise count as explained
    target, mask = p.propagated - p.log_last, p.valid
    preds = jnp.stack([p.frozen - p.log_last, p.weighted - p.log_last, p.retention,
                       p.candidate])
    s, r2 = jax.vmap(lambda lp: power_fit(lp, target, mask))(preds)
    rel = jnp.exp(jnp.stack([p.frozen - p.log_last, p.weighted - p.log_last, p.retention,
                             p.candidate, p.propagated - p.log_last]))
    med = jax.vmap(lambda q: batch_median(q, mask))(rel)
    parts, shares, gains = attribution(p)
    out = {}
    for i, tag in enumerate(PREDICTORS):
        out[f"{tag}_s"], out[f"{tag}_r2"] = s[i], r2[i]
    for i, tag in enumerate(PARTS):
        out[f"{tag}_share"], out[f"{tag}_gain"] = shares[i], gains[i]
    for ell in lag_grid(T):
        for i, tag in enumerate((*PREDICTORS, "propagated")):
            out[f"{tag}@{ell}"] = med[i, ell - 1]
        for i, tag in enumerate(PARTS):
            out[f"{tag}_part@{ell}"] = parts[i, ell - 1]
    return out


def _profiles_of(views: StepViews) -> TransportProfiles:
    alpha = views.end_aligned(views.alpha)
    b = alpha.shape[1]

    def align(a):
        return views.end_aligned(a[:, :b])

    prev = jax.tree_util.tree_map(align, views.prev)
    last = jax.tree_util.tree_map(lambda a: align(a)[-1], views.ctx.adjoints)
    return transport_profiles(views.fns, views.cell_params, prev, align(views.xs_t), last,
                              alpha, views.end_valid(b))


def gate_transport(fns, *, every: int | None = None) -> Measure:
    """The ``transport`` instrument (gated cells): the theory's predictors of the error signal
    by lag, their power fits, and the attribution of its persistence.

    Metrics (``transport/...``): ``{frozen,weighted,retention,candidate}_s`` and ``_r2``, the
    power and :math:`R^2` of each predictor against the propagated profile (gate-frozen
    transport, adjoint-weighted retention, neuron means of the retentions and of the candidate
    weights); ``{...}@{lag}`` and ``propagated@{lag}``, their batch medians relative to lag 0;
    ``{diagonal,mixing,gate}_part@{lag}``, the mean log-gain of each part, ``..._gain`` its
    mean over the window's lags and ``..._share`` its share of the window's total (module
    docstring). The fit uses the
    examples of the gate trace (:class:`StepViews`: the first 16 of the batch); lags of a
    padded batch count from each sequence's own last valid step.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import gatezoo as gz
      >>> task = gz.make_task("adding", seq_len=12)
      >>> model = gz.SequenceModel(gz.VectorGate(task.input_dim, 8, rngs=nnx.Rngs(0)),
      ...                          task.output_dim, rngs=nnx.Rngs(1))
      >>> att = gz.attach(model, task, ["transport"])
      >>> params = nnx.state(model, nnx.Param)
      >>> xs, ys = task.sample(jax.random.key(0), 8)
      >>> m = att.update(params, att.init(params), xs, ys, step=0).metrics
      >>> bool(m["transport/frozen_r2"] > 0.9), float(m["transport/propagated@1"]) > 0
      (True, True)
    """

    def measure(ctx, state, views: StepViews):
        return transport_metrics(_profiles_of(views)), state

    return Measure("transport", lambda p: (), measure, every=every)
