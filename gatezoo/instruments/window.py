r"""The follow-up's learnability measurement on a recurrent layer (probe tier), any optimizer.

On the probe batch, for every neuron :math:`q` (every coordinate of the flattened carry), step
:math:`t` and lag :math:`\ell` of the lag grid, the ``learnability`` instrument computes the
generalised effective learning rate :math:`\mu = \Lambda\,\Gamma` of
:mod:`gatezoo.instruments.learnability`:

* :math:`\Gamma` in first-order diagonal form from the gate trace, with
  :math:`\mathrm{leak} = 1-\alpha_t` and :math:`\mathrm{rdiag} = \mathrm{diag}(J_t) -
  \mathrm{leak}` (the step Jacobian's diagonal by forward-mode autodiff: any cell), and, at a
  few end times, the **exact** diagonal of the transport :math:`J_t \cdots J_{t-\ell+1}` beside
  it (the follow-up has only the first-order form);
* :math:`\Lambda` from the optimizer's state for any optax Adam-family optimizer
  (:math:`\mathrm{lr}/(\sqrt{\hat v}+\epsilon)` on the cell's recurrent kernels, weighted by the
  squared pre-synaptic output), else the learning rate in force (SGD, momentum: the follow-up's
  convention), else 1 (no rate found: :math:`\mu = \Gamma`);
* the matched statistic :math:`\psi` of each probe sequence from the direct error
  :math:`\delta_t` (the loss's own derivative at step :math:`t`, the total adjoint minus what
  step :math:`t+1` carries back) and the states' forward-mode derivatives along
  ``projections`` fixed random unit directions in parameter space.

Metrics: ``rate`` (mean :math:`\Lambda`), ``envelope@l`` (:math:`f(\ell)`),
``envelope_gates@l`` (:math:`f_{gates}(\ell) = \mathrm{lr}\, E\sum_q|\Gamma_0|`),
``envelope_ratio@l`` (:math:`f/f_{gates}`), ``first_order_ratio@l`` (the envelope from the
first-order :math:`\Gamma` over the one from the exact diagonal, at the end times),
``psi_mean@l``, ``psi_std@l`` over the probe sequences. The tail index, signal-to-noise ratio,
:math:`N_{req}` and the window :math:`H_N` need thousands of sequences, more than a probe:
:func:`learnability_window_of` computes them from :func:`psi_samples` over a diagnostic set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo import tail_index as tails
from gatezoo.instruments import learnability as lrn
from gatezoo.instruments import steps
from gatezoo.instruments.optimizer import (
    adam_effective_lr,
    learning_rate_in_force,
    per_neuron_rows,
)
from gatezoo.instruments.products import probe_states
from gatezoo.instruments.protocol import LayerFns
from gatezoo.instruments.stats import lag_grid
from gatezoo.instruments.views import Measure, StepViews
from gatezoo.models.protocol import flatten_carry, unflatten_carry

__all__ = ["Window", "psi_samples", "learnability_window_of", "learnability"]


class _Trace(NamedTuple):
    """Batch-major arrays of one forward pass: ``(B, T, n)`` unless noted."""

    leak: jax.Array
    rdiag: jax.Array
    rate: jax.Array
    delta: jax.Array
    flat_prev: jax.Array
    lam_scale: jax.Array  # the learning rate in force (1 when none is found), scalar


def _rate_matrix(fns: LayerFns, opt_state: Any, y_dim: int) -> tuple[Any, jax.Array]:
    """``(lam, lr)``: Adam's rate averaged over the ``(y_dim, hidden)`` kernels of the cell, or
    the scalar rate in force (1.0 when the state holds none)."""
    lr = learning_rate_in_force(opt_state)
    lr = jnp.asarray(1.0 if lr is None else lr, jnp.float32)
    eff = adam_effective_lr(opt_state)
    if eff is None:
        return lr, lr
    cell_eff = fns.cell_params(eff)
    kernels = [leaf for leaf in jax.tree_util.tree_leaves(cell_eff)
               if leaf.ndim == 2 and leaf.shape == (y_dim, fns.hidden)]
    if kernels:
        return sum(kernels) / len(kernels), lr
    rows = per_neuron_rows(cell_eff, fns.hidden)  # no kernel reads the output: row means
    if rows is None:
        return lr, lr
    return jnp.broadcast_to(rows, (y_dim, fns.hidden)), lr


def _trace(fns: LayerFns, params: Any, xs: jax.Array, ys: Any, opt_state: Any,
           states: tuple | None = None) -> _Trace:
    """``states``: :func:`probe_states` of the same batch, when the caller has them."""
    cell_params, prev, xs_t = states or probe_states(fns, params, xs, ys)
    flat_prev = steps.flat_states(prev)  # (T, B, n)
    n = flat_prev.shape[-1]
    alpha = steps.gate_trace(fns, cell_params, prev, xs_t)
    leak = 1.0 - jnp.tile(alpha, (1, 1, n // alpha.shape[-1]))

    def step_flat(h_flat, h_like, x):
        return flatten_carry(steps.plain_step(fns, cell_params, unflatten_carry(h_flat, h_like), x))

    def diag_one(h, x):
        h_flat = flatten_carry(h)
        return jnp.diagonal(jax.jacfwd(step_flat)(h_flat, h, x))

    per_step = jax.vmap(diag_one)  # over the batch; lax.map goes over time
    diag = jax.lax.map(lambda a: per_step(*a), (prev, xs_t))
    _, ys_out = jax.vmap(lambda h, x: fns.step(cell_params, h, x))(prev, xs_t)
    pre = jnp.concatenate([jnp.zeros_like(ys_out[:1]), ys_out[:-1]], axis=0)  # output of t-1
    lam, lr = _rate_matrix(fns, opt_state, pre.shape[-1])
    if jnp.ndim(lam) == 0:
        rate = jnp.full(flat_prev.shape, lam, flat_prev.dtype)
    else:  # per neuron of the cell's output, repeated over the carry's leaves
        rate = lrn.adaptive_rate(lam.astype(pre.dtype), pre)
        rate = jnp.tile(rate, (1, 1, n // rate.shape[-1]))
    delta = _direct_error(fns, params, xs, ys, cell_params, prev, xs_t)
    bm = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731 - time-major to batch-major
    return _Trace(bm(leak), bm(diag - leak), bm(rate), bm(delta), bm(flat_prev), lr)


def _direct_error(fns, params, xs, ys, cell_params, prev, xs_t) -> jax.Array:
    """:math:`\\delta_t = \\lambda_t - J_{t+1}^\\top \\lambda_{t+1}` ``(T, B, n)``: the loss's
    own derivative at step ``t``, the total adjoint minus what the next step carries back."""
    _, carries = fns.loss(params, xs, ys)
    offsets = jax.tree_util.tree_map(jnp.zeros_like, carries)
    adjoints = jax.grad(lambda o: fns.loss(params, xs, ys, offsets=o)[0])(offsets)

    def carried_back(h, x, lam_next):
        _, vjp = jax.vjp(lambda u: steps.plain_step(fns, cell_params, u, x), h)
        return vjp(lam_next)[0]

    nxt = jax.tree_util.tree_map(lambda a: a[1:], (prev, adjoints))
    back = jax.vmap(jax.vmap(carried_back))(nxt[0], xs_t[1:], nxt[1])
    back = jax.tree_util.tree_map(
        lambda b: jnp.concatenate([b, jnp.zeros_like(b[:1])], axis=0), back)
    return steps.flat_states(adjoints) - steps.flat_states(back)


def _tangents(fns: LayerFns, params: Any, xs: jax.Array, ys: Any, key: jax.Array,
              projections: int) -> jax.Array:
    r"""The states' derivatives along ``projections`` unit directions ``(K, B, T, n)``.

    Forward mode by way of reverse mode, :math:`Jw = \nabla_u \langle J^\top u, w\rangle`:
    a layer's fused sequence may define only a reverse-mode rule (``jax.custom_vjp``), which
    ``jax.jvp`` refuses."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    states, vjp = jax.vjp(lambda p: fns.loss(p, xs, ys)[1], params)

    def forward(w):
        def paired(u):
            cot = vjp(u)[0]
            return sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(cot),
                                                       jax.tree_util.tree_leaves(w),
                                                       strict=True))

        return jax.grad(paired)(jax.tree_util.tree_map(jnp.zeros_like, states))

    def one(k):
        keys = jax.random.split(k, len(leaves))
        w = [jax.random.normal(kk, leaf.shape, leaf.dtype) for kk, leaf in zip(keys, leaves,
                                                                             strict=True)]
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in w))
        w = jax.tree_util.tree_unflatten(treedef, [a / norm for a in w])
        dc = forward(w)
        return jnp.swapaxes(steps.flat_states(dc), 0, 1)

    return jax.lax.map(one, jax.random.split(key, projections))


def _exact_gamma(fns: LayerFns, states: tuple, ends: np.ndarray,
                 lags: Sequence[int]) -> jax.Array:
    """The exact diagonal transport ``(L, n_ends, B, n)`` at the end times ``ends``, from the
    :func:`probe_states` ``states``."""
    cell_params, prev, xs_t = states
    h_like = jax.tree_util.tree_map(lambda a: a[0, 0], prev)

    def jacobian(h_flat, x):
        f = lambda u: flatten_carry(  # noqa: E731
            steps.plain_step(fns, cell_params, unflatten_carry(u, h_like), x))
        return jax.jacfwd(f)(h_flat)

    flat = steps.flat_states(prev)  # (T, B, n)
    lo = int(min(ends)) - max(lags) + 1
    window = jax.vmap(jax.vmap(jacobian))(flat[lo:], xs_t[lo:])  # (T', B, n, n)
    window = jnp.swapaxes(window, 0, 1)
    return jnp.stack([lrn.exact_diagonal_transport(window, int(t) - lo, lags) for t in ends],
                     axis=1)


def psi_samples(fns: LayerFns, params: Any, xs: jax.Array, ys: Any, opt_state: Any, *,
                lags: Sequence[int], projections: int = 8, direction_seed: int = 0) -> jax.Array:
    r"""The matched statistic :math:`\bar\psi^{(b)}(\ell)` of every sequence of ``xs``,
    ``(len(lags), batch)``: run it over a diagnostic set (in batches) and hand the result to
    :func:`learnability_window_of`."""
    args = (fns, params, xs, ys)
    return _psi(args, _trace(*args, opt_state), lags, projections, direction_seed)


def _psi(args: tuple, tr: _Trace, lags: Sequence[int], projections: int,
         direction_seed: int) -> jax.Array:
    gamma = lrn.diagonal_transport(tr.leak, tr.rdiag, lags)
    mu = lrn.effective_rate(tr.rate, gamma, lags)
    v = _tangents(*args, jax.random.key(direction_seed), projections)
    return lrn.matched_statistic(mu, tr.delta, v, lags)


class Window(NamedTuple):
    """The learnability window of :func:`learnability_window_of`.

    Attributes:
      lags: the lags.
      alpha, sigma, mean_abs: per lag, the tail index, scale and :math:`|\\bar\\psi|`.
      method: per lag, ``"ecf"``, ``"mcculloch"`` or ``"default"``.
      n_req: per lag, the fewest sequences of ``n_grid`` whose SNR exceeds the threshold (-1).
      window: :math:`H_N`, the largest lag with :math:`0 < N_{req} \\le N` (0: none).
    """

    lags: tuple[int, ...]
    alpha: np.ndarray
    sigma: np.ndarray
    mean_abs: np.ndarray
    method: tuple[str, ...]
    n_req: np.ndarray
    window: int


def learnability_window_of(psi: Any, lags: Sequence[int], n: int, *,
                           n_grid: Sequence[int] | None = None, threshold: float = 20.0,
                           min_samples: int = 1000, n_boot: int = 500) -> Window:
    r"""The tail index of :math:`\bar\psi(\ell)` over sequences, its SNR and the window

    .. math::
      \mathrm{SNR}(\ell, N) = \bar m(\ell)\, N^{1-1/\hat\alpha(\ell)} / \hat\sigma(\ell), \qquad
      H_N = \max\{\ell : N_{req}(\ell) \le N\},

    with :math:`N_{req}(\ell)` the first :math:`N` of ``n_grid`` (default: powers of two from
    25 to 25600) where the SNR exceeds ``threshold`` (the follow-up's 20).

    Args:
      psi: ``(len(lags), N_diag)`` from :func:`psi_samples`.
      lags: the lags of ``psi``'s rows.
      n: the sequences available for learning.
      n_grid, threshold, min_samples, n_boot: the rule's settings.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> psi = np.stack([1.0 + rng.standard_normal(4000), 0.01 + rng.standard_normal(4000)])
      >>> w = learnability_window_of(psi, [4, 64], n=8000, n_boot=50)
      >>> w.n_req.tolist(), w.window
      ([400, -1], 4)
    """
    psi = np.asarray(psi, dtype=np.float64)
    grid = np.asarray(n_grid if n_grid is not None else 25 * 2 ** np.arange(11))
    fits = [tails.tail_index(row, min_samples, n_boot=n_boot) for row in psi]
    alpha = np.array([f.alpha for f in fits])
    sigma = np.array([f.sigma for f in fits])
    mean_abs = np.abs(np.nanmean(psi, axis=1))
    n_req = np.asarray(tails.required_samples(mean_abs, sigma, alpha, grid, threshold))
    window = tails.learnability_window(list(lags), n_req, n)
    return Window(tuple(int(ell) for ell in lags), alpha, sigma, mean_abs,
                  tuple(f.method for f in fits), n_req, int(window))


def _window_metrics(tr: _Trace, exact: jax.Array, ends: np.ndarray, lags: Sequence[int],
                    psi: jax.Array) -> dict[str, jax.Array]:
    gamma = lrn.diagonal_transport(tr.leak, tr.rdiag, lags)
    mu = lrn.effective_rate(tr.rate, gamma, lags)
    f = lrn.envelope(mu, lags)
    f_gates = tr.lam_scale * lrn.envelope(lrn.diagonal_transport(tr.leak, None, lags), lags)
    rate_at = jnp.stack([tr.rate[:, int(t) - ell] for t in ends for ell in lags])
    rate_at = rate_at.reshape(len(ends), len(lags), *rate_at.shape[1:]).swapaxes(0, 1)
    first_at = jnp.stack([gamma[:, :, int(t)] for t in ends], axis=1)
    out = {"rate": jnp.mean(tr.rate)}
    for i, ell in enumerate(lags):
        out[f"envelope@{ell}"] = f[i]
        out[f"envelope_gates@{ell}"] = f_gates[i]
        out[f"envelope_ratio@{ell}"] = f[i] / f_gates[i]
        out[f"first_order_ratio@{ell}"] = (jnp.sum(jnp.abs(rate_at[i] * first_at[i]))
                                           / jnp.sum(jnp.abs(rate_at[i] * exact[i])))
        out[f"psi_mean@{ell}"] = jnp.mean(psi[i])
        out[f"psi_std@{ell}"] = jnp.std(psi[i])
    return out


def learnability(fns: LayerFns, *, every: int | None = None, projections: int = 4,
                 num_ends: int = 2, direction_seed: int = 0) -> Measure:
    """The ``learnability`` probe instrument (gated cells; see the module docstring).

    ``projections`` random directions for the matched statistic and ``num_ends`` end times for
    the exact transport bound the cost: ``T`` step Jacobians per probe example for the
    diagonals, ``num_ends * max_lag`` for the exact transport.
    """
    if num_ends < 1 or projections < 1:
        raise ValueError(f"learnability: num_ends and projections must be >= 1, got "
                         f"{num_ends} and {projections}")

    def measure(ctx, state, views: StepViews):
        T = ctx.probe_xs.shape[1]
        lags = lag_grid(T)
        if not lags:
            return {}, state
        ends = np.unique(np.round(np.linspace(max(lags), T - 1, num_ends)).astype(int))
        args = (ctx.fns, ctx.params, ctx.probe_xs, ctx.probe_ys)
        states = probe_states(*args)  # one forward pass for the trace and the exact transport
        tr = _trace(*args, ctx.opt_state, states)
        psi = _psi(args, tr, lags, projections, direction_seed)
        exact = _exact_gamma(ctx.fns, states, ends, lags)
        return _window_metrics(tr, exact, ends, lags, psi), state

    return Measure("learnability", lambda p: (), measure, every=every)
