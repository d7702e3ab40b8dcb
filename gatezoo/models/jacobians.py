r"""Closed-form Jacobians of one step, and the ε-deformed Jacobian product (docs/theory.md §2-§3).

State Jacobians (docs/theory.md §2.1). For a step ``h_t = f(h_{t-1}, x_t)`` the Jacobian
``J_t = ∂h_t/∂h_{t-1}`` splits as ``J_t = A_t + B_t``: ``A_t`` is the *gate-frozen* part (the gates
treated as constants) and ``B_t`` the *gate-induced* part (everything that flows through the gates'
dependence on ``h_{t-1}``). :func:`state_jacobians` gives both in closed form for the built-in
cells; :func:`autodiff_split` gives them for any cell that follows the gate protocol, by
differentiating the deformed step of :mod:`gatezoo.models.protocol`.

Parameter Jacobians (docs/theory.md §2.2). :func:`param_jacobians` gives the immediate derivatives
``∂⁺h_t/∂θ`` with ``h_{t-1}`` held fixed, e.g. ``(Γ_t D_t) ⊗ h_{t-1}^T`` for a recurrent matrix.

Products (theory §3.2). For factors ``A_j, B_j``, ``j = k+1..t`` (stacked with the earliest step
first), the deformed product ``F(ε) = ∏_{j=t}^{k+1} (A_j + ε B_j)`` expands as
``F(ε) = F(0) + ε L₁ + O(ε²)`` with the Fréchet derivative
``L₁ = Σ_i (A_t ⋯ A_{i+1}) B_i (A_{i-1} ⋯ A_{k+1})``.

All matrices act on the *flattened* carry (:func:`gatezoo.models.protocol.flatten_carry`); for
the LSTM that is the joint state ``[c, h]`` of size ``2 d_h``. Parameters are stored in Flax's
``(fan_in, fan_out)`` orientation, so the theory page's matrix ``W`` is ``cell.W[...].T``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> import gatezoo as gz
  >>> cell = gz.VectorGate(3, 4, rngs=nnx.Rngs(0))
  >>> A, B = gz.jacobians.state_jacobians(cell, jnp.zeros(4) + 0.1, jnp.ones(3))
  >>> F0, L1 = gz.jacobians.product_first_order(jnp.stack([A, A]), jnp.stack([B, B]))
  >>> L1.shape
  (4, 4)
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from gatezoo.fits import line_fit
from gatezoo.linalg import singular_values
from gatezoo.models.gates import ScalarGate, VectorGate
from gatezoo.models.gru import GRU
from gatezoo.models.leaky import Leaky
from gatezoo.models.linear_cell import InputGatedCell
from gatezoo.models.lstm import LSTM
from gatezoo.models.protocol import flatten_carry, unflatten_carry
from gatezoo.models.slstm import SLSTM, forget_cap

__all__ = [
    "CONVENTIONS",
    "ORDERS",
    "state_jacobians",
    "param_jacobians",
    "register_state_jacobians",
    "register_param_jacobians",
    "has_closed_form",
    "autodiff_split",
    "extend_product",
    "transport",
    "deformed_product",
    "product_first_order",
    "first_order",
    "frechet_l1",
    "truncation_error",
    "loglog_slope",
]

CONVENTIONS = ("exact", "paper-code")
ORDERS = ("temporal", "reversed")

Array = jax.Array


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown compat {convention!r}; choose one of {CONVENTIONS}")


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"unknown product order {order!r}; choose one of {ORDERS}")


def _order_of(compat: str, order: str | None, where: str) -> str:
    """The product order of ``compat`` ("exact": temporal, "paper-code": reversed); ``order``
    is the old name of the same switch, accepted with a DeprecationWarning for one release."""
    if order is not None:
        warnings.warn(f"{where}(order=...) is deprecated: use compat='exact' (order "
                      "'temporal') or compat='paper-code' (order 'reversed')",
                      DeprecationWarning, stacklevel=3)
        _check_order(order)
        return order
    _check_convention(compat)
    return "temporal" if compat == "exact" else "reversed"


def _dsigmoid(s: Array) -> Array:
    sig = jax.nn.sigmoid(s)
    return sig * (1.0 - sig)


def _param(cell: Any, name: str) -> Array | None:
    p = getattr(cell, name, None)
    return None if p is None else p[...]


def _affine(cell: Any, v: Array, x: Array, w: str, u: str, b: str) -> Array:
    """``v @ cell.w + x @ cell.u (+ cell.b)``: a pre-activation, computed from the parameters."""
    out = v @ _param(cell, w) + x @ _param(cell, u)
    bias = _param(cell, b)
    return out if bias is None else out + bias


def _eye_like(v: Array) -> Array:
    return jnp.eye(v.shape[-1], dtype=v.dtype)


def _check_single(carry: Any, x: Array) -> None:
    leaves = jax.tree_util.tree_leaves(carry)
    if x.ndim != 1 or any(leaf.ndim != 1 for leaf in leaves):
        raise ValueError(
            "state_jacobians/param_jacobians take one unbatched example (carry leaves (hidden,), "
            f"x (in,)); got carry shapes {[leaf.shape for leaf in leaves]} and x shape {x.shape}"
            " (use jax.vmap for a batch)"
        )


# ----------------------------------------------------------------------------------------------
# State Jacobians, closed form
# ----------------------------------------------------------------------------------------------


@functools.singledispatch
def _state_rule(cell: Any, carry: Any, x: Array, convention: str) -> tuple[Array, Array]:
    raise ValueError(
        f"no closed-form state Jacobian for {type(cell).__name__}; register one with "
        "register_state_jacobians or use autodiff_split(cell_fn(cell).step, ...)"
    )


@functools.singledispatch
def _param_rule(cell: Any, carry: Any, x: Array) -> dict[str, Array]:
    raise ValueError(
        f"no closed-form parameter Jacobian for {type(cell).__name__}; register one with "
        "register_param_jacobians or differentiate the step with jax.jacrev"
    )


def register_state_jacobians(cls: type) -> Callable:
    """Decorator registering ``rule(cell, carry, x, convention) -> (A, B)`` for ``cls``.

    Dispatch follows the class hierarchy (``functools.singledispatch``), so a subclass that
    changes the step must register its own rule.
    """
    return _state_rule.register(cls)


def register_param_jacobians(cls: type) -> Callable:
    """Decorator registering ``rule(cell, carry, x) -> {name: ∂⁺h/∂param}`` for ``cls``."""
    return _param_rule.register(cls)


def has_closed_form(cell: Any) -> bool:
    """True if :func:`state_jacobians` has a closed form for ``cell``'s class."""
    return _state_rule.dispatch(type(cell)) is not _state_rule.dispatch(object)


def state_jacobians(
    cell: Any, carry: Any, x: Array, *, compat: str = "exact", convention: str | None = None
) -> tuple[Array, Array]:
    r"""Gate-frozen and gate-induced state Jacobians ``(A_t, B_t)`` in closed form (theory §2.1).

    * Leaky/Elman: ``A = (1-α) I + α D W``, ``B = 0``.
    * ScalarGate: ``A = (1-α_t) I + α_t D W``, ``B = σ'(s_t) Δ_t w_g^T`` (rank one).
    * VectorGate: ``A = diag(1-α_t) + diag(α_t) D W``, ``B = diag(Δ_t σ'(s_t)) W_g``.
    * GRU: ``A = diag(1-z) + diag(z g') W diag(r)``,
      ``B = diag((g-h) z') W_z + diag(z g') W diag(h r') W_r`` (update and reset gates).
    * LSTM on ``[c, h]``: ``A`` holds ``i, f, o`` fixed, ``B`` collects the terms through them.
    * sLSTM on ``[c, n, m, h]``: ``A`` holds ``i', f', o`` fixed (its ``m`` row is zero), ``B``
      the terms through the gate pre-activations and the stabiliser ``m_{t-1}``.
    * minGRU, minLSTM, RG-LRU, S6 (gates read only ``x``): ``A = diag(1 - α_t)``, ``B = 0``.

    with ``D = diag(1 - φ_t²)``, ``Δ_t = φ_t - h_{t-1}``, ``g' = 1 - g²``, ``z' = z(1-z)``.

    Args:
      cell: a built-in cell (or a class registered with :func:`register_state_jacobians`).
      carry: one example's carry, ``(hidden,)``, or ``(c, h)`` each ``(hidden,)`` for the LSTM.
      x: one input ``(in,)``.
      compat: ``"exact"``, or ``"paper-code"`` for the authors' release (theory §2.3 item 1):
        the gate term built from the post-update increment ``φ_t - h_t = (1-α_t) Δ_t``, i.e.
        ``B_code = (I - Γ_t) B_exact`` for the leaky cells. For the GRU only the update-gate term
        changes (``g - h_t = (1-z)(g - h_{t-1})``); the reset-gate term has no increment in it.
        It is not defined for the LSTM (its cell update is not a convex combination), which raises
        ``ValueError``. (``convention=`` is its deprecated name.)

    Returns:
      ``(A, B)``, each ``(n, n)`` with ``n`` the flattened carry size (``2 hidden`` for the LSTM,
      rows and columns ordered ``[c, h]``); ``A + B`` is the exact Jacobian for ``"exact"``.
    """
    if convention is not None:
        warnings.warn("state_jacobians(convention=...) is deprecated: use compat=...",
                      DeprecationWarning, stacklevel=2)
        compat = convention
    _check_convention(compat)
    _check_single(carry, x)
    return _state_rule(cell, carry, x, compat)


@_state_rule.register(Leaky)
def _leaky_state(cell: Leaky, h: Array, x: Array, convention: str):
    phi = jnp.tanh(_affine(cell, h, x, "W", "U", "b"))
    alpha = cell.alpha
    A = (1.0 - alpha) * _eye_like(phi) + (alpha * (1.0 - phi**2))[:, None] * _param(cell, "W").T
    return A, jnp.zeros_like(A)


def _gated_leaky_state(cell: Any, h: Array, x: Array, convention: str):
    phi = jnp.tanh(_affine(cell, h, x, "W", "U", "b"))
    s = _affine(cell, h, x, "W_g", "U_g", "b_g")  # (1,) scalar gate, (hidden,) vector gate
    alpha = jnp.broadcast_to(jax.nn.sigmoid(s), phi.shape)
    A = jnp.diag(1.0 - alpha) + (alpha * (1.0 - phi**2))[:, None] * _param(cell, "W").T
    incr = phi - h
    if convention == "paper-code":
        incr = (1.0 - alpha) * incr  # φ_t - h_t, the post-update increment
    # (incr * σ'(s))[:, None] * W_g^T: rank one (W_g^T is (1, hidden)) for the scalar gate
    B = (incr * _dsigmoid(s))[:, None] * _param(cell, "W_g").T
    return A, B


_state_rule.register(ScalarGate)(_gated_leaky_state)
_state_rule.register(VectorGate)(_gated_leaky_state)


@_state_rule.register(GRU)
def _gru_state(cell: GRU, h: Array, x: Array, convention: str):
    z_pre = _affine(cell, h, x, "W_z", "U_z", "b_z")
    r_pre = _affine(cell, h, x, "W_r", "U_r", "b_r")
    z, r = jax.nn.sigmoid(z_pre), jax.nn.sigmoid(r_pre)
    g = jnp.tanh(_affine(cell, r * h, x, "W", "U", "b"))
    zg = z * (1.0 - g**2)
    Wt = _param(cell, "W").T
    A = jnp.diag(1.0 - z) + zg[:, None] * Wt * r[None, :]
    incr = g - h
    if convention == "paper-code":
        incr = (1.0 - z) * incr  # g - h_t
    B_update = (incr * _dsigmoid(z_pre))[:, None] * _param(cell, "W_z").T
    B_reset = (zg[:, None] * Wt * (h * _dsigmoid(r_pre))[None, :]) @ _param(cell, "W_r").T
    return A, B_update + B_reset


@_state_rule.register(InputGatedCell)
def _input_gated_state(cell: InputGatedCell, h: Array, x: Array, convention: str):
    # B = 0 under both conventions: (I - Γ) B_exact is zero too
    A = jnp.diag(1.0 - cell.time_scale(h, x))
    return A, jnp.zeros_like(A)


def _lstm_parts(cell: LSTM, carry: Any, x: Array):
    c, h = carry
    pre = {k: _affine(cell, h, x, f"W_{k}", f"U_{k}", f"b_{k}") for k in "ifo"}
    i, f, o = (jax.nn.sigmoid(pre[k]) for k in "ifo")
    g = jnp.tanh(_affine(cell, h, x, "W", "U", "b"))
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    return c, h, pre, i, f, o, g, tc


@_state_rule.register(LSTM)
def _lstm_state(cell: LSTM, carry: Any, x: Array, convention: str):
    if convention == "paper-code":
        raise ValueError(
            "convention 'paper-code' (B from the post-update increment) is defined only for "
            "cells of the form h + alpha (phi - h): leaky, scalar, vector, gru; not for LSTM"
        )
    c, h, pre, i, f, o, g, tc = _lstm_parts(cell, carry, x)
    read = o * (1.0 - tc**2)  # ∂h_t/∂c_t
    # A: gates frozen; only the candidate g depends on h
    dc_dh_A = (i * (1.0 - g**2))[:, None] * _param(cell, "W").T
    dc_dc = jnp.diag(f)
    A = jnp.block([[dc_dc, dc_dh_A], [read[:, None] * dc_dc, read[:, None] * dc_dh_A]])
    # B: the derivatives of i, f, o with respect to h
    dc_dh_B = (c * _dsigmoid(pre["f"]))[:, None] * _param(cell, "W_f").T + (
        g * _dsigmoid(pre["i"])
    )[:, None] * _param(cell, "W_i").T
    dh_dh_B = (tc * _dsigmoid(pre["o"]))[:, None] * _param(cell, "W_o").T + read[
        :, None
    ] * dc_dh_B
    zero = jnp.zeros_like(dc_dc)
    B = jnp.block([[zero, dc_dh_B], [zero, dh_dh_B]])
    return A, B


def _block_dense(R: Array) -> Array:
    """The ``(hidden, hidden)`` block-diagonal matrix of the blocks ``R (heads, d, d)``."""
    heads, d, _ = R.shape
    return jnp.einsum("hij,hg->higj", R, jnp.eye(heads, dtype=R.dtype)).reshape(
        heads * d, heads * d)


@_state_rule.register(SLSTM)
def _slstm_state(cell: SLSTM, carry: Any, x: Array, convention: str):
    """sLSTM on ``[c, n, m, h]``: ``A`` holds ``i', f', o`` and ``m_t`` fixed (the candidate
    path and the read ``o c / n``), ``B`` the terms through ``i~, f~, o~`` and ``m_{t-1}``."""
    if convention == "paper-code":
        raise ValueError(
            "convention 'paper-code' (B from the post-update increment) is defined only for "
            "cells of the form h + alpha (phi - h): leaky, scalar, vector, gru; not for SLSTM"
        )
    c, n, m, h = carry
    RT = {k: _block_dense(_param(cell, f"R_{k}")).T for k in "zifo"}  # theory orientation
    pre = {}
    for k in "zifo":
        bias = _param(cell, f"b_{k}")
        pre[k] = x @ _param(cell, f"U_{k}") + RT[k] @ h + (0.0 if bias is None else bias)
    z, o = jnp.tanh(pre["z"]), jax.nn.sigmoid(pre["o"])
    sig = cell.forget == "sigmoid"
    log_f = jax.nn.log_sigmoid(pre["f"]) if sig else pre["f"]
    dlog_f = jax.nn.sigmoid(-pre["f"]) if sig else jnp.ones_like(pre["f"])
    kept = log_f + m
    empty = n == 0  # an empty memory starts the stabiliser at log i (see SLSTM)
    m_new = jnp.where(empty, pre["i"], jnp.maximum(kept, pre["i"]))
    # d m_t / d kept: the branch of the maximum, 1/2 at a tie (jnp.maximum's convention)
    w = jnp.where(empty, 0.0, jnp.where(kept > pre["i"], 1.0,
                                        jnp.where(kept == pre["i"], 0.5, 0.0)))
    bound = forget_cap(kept.dtype)
    capped = empty & (kept - m_new > bound)  # f' held at its cap: no derivative
    i, f = jnp.exp(pre["i"] - m_new), jnp.exp(jnp.where(capped, bound, kept - m_new))
    c_new, n_new = f * c + i * z, f * n + i
    read, r = o / n_new, c_new / n_new  # ∂h_t/∂c_t and the read memory c_t / n_t
    dr = read * r  # -∂h_t/∂n_t
    diag, zero = jnp.diag, jnp.zeros((h.shape[0], h.shape[0]), h.dtype)
    # A: gates frozen; only the candidate z reads h, and c, n enter linearly
    dc_dh = (i * (1.0 - z**2))[:, None] * RT["z"]
    A = jnp.block([
        [diag(f), zero, zero, dc_dh],
        [zero, diag(f), zero, zero],
        [zero, zero, zero, zero],
        [diag(read * f), diag(-dr * f), zero, read[:, None] * dc_dh],
    ])
    # B: through m_{t-1} (columns of m) and the gate pre-activations (columns of h)
    dm = {"m": diag(w), "h": (w * dlog_f)[:, None] * RT["f"] + (1.0 - w)[:, None] * RT["i"]}
    live = jnp.where(capped, 0.0, 1.0)[:, None]
    dlf = {"m": live * diag(1.0 - w), "h": live * (dlog_f[:, None] * RT["f"] - dm["h"])}
    dli = {"m": -diag(w), "h": RT["i"] - dm["h"]}
    cols = {}
    for v in ("m", "h"):
        dc = (f * c)[:, None] * dlf[v] + (i * z)[:, None] * dli[v]
        dn = (f * n)[:, None] * dlf[v] + i[:, None] * dli[v]
        dh = read[:, None] * dc - dr[:, None] * dn
        if v == "h":
            dh = dh + (o * (1.0 - o) * r)[:, None] * RT["o"]
        cols[v] = (dc, dn, dm[v], dh)
    B = jnp.block([[zero, zero, cols["m"][k], cols["h"][k]] for k in range(4)])
    return A, B


# ----------------------------------------------------------------------------------------------
# Immediate parameter Jacobians, closed form
# ----------------------------------------------------------------------------------------------


def _through(
    cell: Any, M: Array, v: Array, x: Array, names: tuple[str, str, str]
) -> dict[str, Array]:
    """Jacobians of the parameters of one pre-activation ``s = v @ W + x @ U + b``.

    ``M = ∂h_t/∂s`` (state_size, fan_out) with everything else fixed; then
    ``∂h_q/∂W[m, k] = M[q, k] v_m``, ``∂h_q/∂U[m, k] = M[q, k] x_m`` and ``∂h_q/∂b[k] = M[q, k]``.
    """
    w, u, b = names
    out = {w: M[:, None, :] * v[None, :, None], u: M[:, None, :] * x[None, :, None]}
    if _param(cell, b) is not None:
        out[b] = M
    return out


def param_jacobians(cell: Any, carry: Any, x: Array) -> dict[str, Array]:
    r"""Immediate parameter Jacobians ``∂⁺h_t/∂θ`` with ``h_{t-1}`` held fixed (theory §2.2).

    For a candidate parameter the result is ``Γ_t D_t ∂a_t/∂θ``; for the recurrent matrix this is
    ``(Γ_t D_t) ⊗ h_{t-1}^T`` (row-major ``vec`` of the theory's ``W = cell.W.T``). For gate
    parameters it is ``diag(Δ_t σ'(s_t)) ∂s_t/∂θ_g`` (scalar gate: ``Δ_t σ'(s_t) ∂s_t/∂θ_g``).

    Args:
      cell: a built-in cell (or a class registered with :func:`register_param_jacobians`).
      carry: one example's carry (as in :func:`state_jacobians`).
      x: one input ``(in,)``.

    Returns:
      ``{name: J}`` for every parameter of the step (biases only when present), with
      ``J`` of shape ``(state_size, *param.shape)``, ``state_size`` the flattened carry size.
    """
    _check_single(carry, x)
    return _param_rule(cell, carry, x)


@_param_rule.register(Leaky)
def _leaky_params(cell: Leaky, h: Array, x: Array):
    phi = jnp.tanh(_affine(cell, h, x, "W", "U", "b"))
    return _through(cell, jnp.diag(cell.alpha * (1.0 - phi**2)), h, x, ("W", "U", "b"))


def _gated_leaky_params(cell: Any, h: Array, x: Array):
    phi = jnp.tanh(_affine(cell, h, x, "W", "U", "b"))
    s = _affine(cell, h, x, "W_g", "U_g", "b_g")
    alpha = jnp.broadcast_to(jax.nn.sigmoid(s), phi.shape)
    out = _through(cell, jnp.diag(alpha * (1.0 - phi**2)), h, x, ("W", "U", "b"))
    incr_ds = (phi - h) * _dsigmoid(s)  # (hidden,)
    # ∂h/∂s_g: a column (hidden, 1) for the scalar gate, a diagonal for the vector gate
    M_g = incr_ds[:, None] if s.shape[-1] == 1 else jnp.diag(incr_ds)
    out.update(_through(cell, M_g, h, x, ("W_g", "U_g", "b_g")))
    return out


_param_rule.register(ScalarGate)(_gated_leaky_params)
_param_rule.register(VectorGate)(_gated_leaky_params)


@_param_rule.register(GRU)
def _gru_params(cell: GRU, h: Array, x: Array):
    z_pre = _affine(cell, h, x, "W_z", "U_z", "b_z")
    r_pre = _affine(cell, h, x, "W_r", "U_r", "b_r")
    z, r = jax.nn.sigmoid(z_pre), jax.nn.sigmoid(r_pre)
    g = jnp.tanh(_affine(cell, r * h, x, "W", "U", "b"))
    zg = z * (1.0 - g**2)
    out = _through(cell, jnp.diag(zg), r * h, x, ("W", "U", "b"))
    out.update(_through(cell, jnp.diag((g - h) * _dsigmoid(z_pre)), h, x, ("W_z", "U_z", "b_z")))
    # a_q = Σ_m (r_m h_m) W[m, q], so ∂h_q/∂s_r[k] = z_q g'_q W[k, q] h_k r'_k
    M_r = zg[:, None] * _param(cell, "W").T * (h * _dsigmoid(r_pre))[None, :]
    out.update(_through(cell, M_r, h, x, ("W_r", "U_r", "b_r")))
    return out


@_param_rule.register(LSTM)
def _lstm_params(cell: LSTM, carry: Any, x: Array):
    c, h, pre, i, f, o, g, tc = _lstm_parts(cell, carry, x)
    read = o * (1.0 - tc**2)
    # per block: ∂c_t/∂s (a diagonal) and then ∂h_t/∂s = read ⊙ ∂c_t/∂s, except o
    dc = {
        "i": g * _dsigmoid(pre["i"]),
        "f": c * _dsigmoid(pre["f"]),
        "o": jnp.zeros_like(c),
        "": i * (1.0 - g**2),
    }
    dh = {k: read * v for k, v in dc.items()}
    dh["o"] = tc * _dsigmoid(pre["o"])
    out = {}
    for k in dc:
        names = (f"W_{k}", f"U_{k}", f"b_{k}") if k else ("W", "U", "b")
        M = jnp.concatenate([jnp.diag(dc[k]), jnp.diag(dh[k])], axis=0)  # rows [c, h]
        out.update(_through(cell, M, h, x, names))
    return out


# ----------------------------------------------------------------------------------------------
# The split by automatic differentiation, for any gated cell
# ----------------------------------------------------------------------------------------------


def autodiff_split(step: Callable, params: Any, carry: Any, x: Array) -> tuple[Array, Array]:
    """``(A, B)`` of any gated cell from its deformed step (docs/theory.md §3.4 recipe 2).

    ``step(params, carry, x, eps=eps)`` is :attr:`gatezoo.models.protocol.CellFn.step`; its
    Jacobian with respect to ``carry`` is ``J(ε) = A + ε B``. ``A = J(0)`` and ``B = dJ/dε``,
    taken by forward mode over ``jax.jacrev`` (exact, since ``J`` is affine in ``ε``, and free of
    the cancellation of ``J(1) - J(0)``).

    Args:
      step: the cell's pure step with an ``eps`` keyword (``cell_fn(cell).step``).
      params: its parameters (``cell_fn(cell).params``).
      carry: one example's carry (any pytree; Jacobians act on :func:`flatten_carry` of it).
      x: one input.

    Returns:
      ``(A, B)``, each ``(n, n)`` with ``n`` the flattened carry size.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatezoo as gz
      >>> fn = gz.models.cell_fn(gz.GRU(2, 3, rngs=nnx.Rngs(0)))
      >>> A, B = gz.jacobians.autodiff_split(fn.step, fn.params, jnp.ones(3), jnp.ones(2))
      >>> A.shape, B.shape
      ((3, 3), (3, 3))
    """
    flat = flatten_carry(carry)

    def jac(eps):
        def f(v):
            new, _ = step(params, unflatten_carry(v, carry), x, eps=eps)
            return flatten_carry(new)

        return jax.jacrev(f)(flat)

    zero = jnp.zeros((), flat.dtype)
    A, B = jax.jvp(jac, (zero,), (jnp.ones_like(zero),))
    return A, B


# ----------------------------------------------------------------------------------------------
# Products of Jacobians
# ----------------------------------------------------------------------------------------------


def _check_factors(*mats: Array) -> None:
    shape = mats[0].shape
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"factors must be stacked square matrices (n, d, d), got shape {shape}")
    for m in mats[1:]:
        if m.shape != shape:
            raise ValueError(f"A and B factors must have the same shape, got {shape} and {m.shape}")


def extend_product(product: Array, factor: Array, *, older: bool, reverse: bool = False) -> Array:
    r"""``product`` with one more Jacobian ``factor`` (both ``(..., d, d)``): the one place where
    a product of step Jacobians grows, for every instrument and reproduction.

    In the temporal order :math:`J_t \cdots J_{k+1} = \partial h_t/\partial h_k` an ``older``
    factor (:math:`J_k`) multiplies on the right and a newer one (:math:`J_{t+1}`) on the left;
    ``reverse=True``, the release's :math:`J_{k+1} \cdots J_t` (docs/theory.md §2.3 item 2), swaps
    the sides.
    """
    return product @ factor if older != reverse else factor @ product


@functools.partial(jax.jit, static_argnames="order")
def _transport(Js: Array, order: str) -> Array:
    def body(P, J):
        return extend_product(P, J, older=False, reverse=order == "reversed"), None

    P, _ = lax.scan(body, jnp.eye(Js.shape[-1], dtype=Js.dtype), Js)
    return P


def transport(Js: Array, *, compat: str = "exact", order: str | None = None) -> Array:
    """The product of stacked Jacobians ``Js (n, d, d)``, ``Js[0]`` the earliest step ``k+1``.

    ``compat="exact"``: ``J_t ⋯ J_{k+1} = ∂h_t/∂h_k`` (the chain rule).
    ``compat="paper-code"``: ``J_{k+1} ⋯ J_t``, the order of the authors' release (theory §2.3
    item 2). An empty stack gives the identity. (``order="temporal"/"reversed"`` is the
    deprecated name of the same switch.)
    """
    # jitted with a static order so that eager calls compile the scan once per shape
    order = _order_of(compat, order, "transport")
    _check_factors(Js)
    return _transport(Js, order)


def deformed_product(As: Array, Bs: Array, eps: Array | float, *, compat: str = "exact",
                     order: str | None = None):
    """``F(ε) = ∏_{j=t}^{k+1} (A_j + ε B_j)`` (theory §3.2); ``F(1)`` is the exact transport."""
    order = _order_of(compat, order, "deformed_product")
    _check_factors(As, Bs)
    return _transport(As + jnp.asarray(eps, As.dtype) * Bs, order)


def product_first_order(As: Array, Bs: Array, *, compat: str = "exact",
                        order: str | None = None) -> tuple[Array, Array]:
    r"""``(F(0), L₁)``: the gate-frozen product and its Fréchet derivative along ``B``.

    ``L₁ = Σ_i S_{i+1} B_i P_{i-1}`` with prefix products ``P_i = A_i ⋯ A_{k+1}`` and suffix
    products ``S_i = A_t ⋯ A_i`` (empty ones are the identity). One ``lax.scan`` carries the
    prefix and the partial sum: ``P_j = A_j P_{j-1}`` and ``L_j = A_j L_{j-1} + B_j P_{j-1}``,
    which multiplies every earlier term by its suffix as the scan proceeds — three matrix
    products per factor, O(lag) in all, and no stored prefixes. (``compat="paper-code"``, the
    reversed order, mirrors it: ``P_j = P_{j-1} A_j``, ``L_j = L_{j-1} A_j + P_{j-1} B_j``.)
    """
    order = _order_of(compat, order, "product_first_order")
    _check_factors(As, Bs)
    return _first_order(As, Bs, order)


@functools.partial(jax.jit, static_argnames="order")
def _first_order(As: Array, Bs: Array, order: str) -> tuple[Array, Array]:
    eye = jnp.eye(As.shape[-1], dtype=As.dtype)

    def body(carry, AB):
        P, L = carry
        A, B = AB
        if order == "temporal":
            return (A @ P, A @ L + B @ P), None
        return (P @ A, L @ A + P @ B), None

    (P, L), _ = lax.scan(body, (eye, jnp.zeros_like(eye)), (As, Bs))
    return P, L


def first_order(As: Array, Bs: Array, **kwargs: Any) -> tuple[Array, Array]:
    """Deprecated name of :func:`product_first_order` (``gz.attach(...).first_order`` gives the
    first-order *gradients* ``G0, G1``; this gives a Jacobian product's ``F(0), L₁``)."""
    warnings.warn("gz.jacobians.first_order is deprecated: use "
                  "gz.jacobians.product_first_order (F(0) and L1 of a Jacobian product); "
                  "Attached.first_order gives the gradients G0, G1",
                  DeprecationWarning, stacklevel=2)
    return product_first_order(As, Bs, **kwargs)


def frechet_l1(As: Array, Bs: Array, *, compat: str = "exact",
               order: str | None = None) -> Array:
    """``L₁ = d/dε F(ε)`` at ``ε = 0`` (docs/theory.md §3.2); see :func:`product_first_order`."""
    order = _order_of(compat, order, "frechet_l1")
    _check_factors(As, Bs)
    return _first_order(As, Bs, order)[1]


def _norm(M: Array, norm: str) -> Array:
    if norm == "fro":
        return jnp.sqrt(jnp.sum(M * M, axis=(-2, -1)))
    return singular_values(M)[..., 0]  # "2", checked by the caller


def truncation_error(
    As: Array, Bs: Array, eps_grid: Array, *, compat: str = "exact", norm: str = "fro",
    order: str | None = None,
) -> Array:
    """``E(ε) = ‖F(ε) - F(0) - ε L₁‖`` for each ``ε`` of ``eps_grid`` (theory §3.2, §7 claim 9).

    ``norm`` is ``"fro"`` (Frobenius) or ``"2"`` (spectral). ``E(ε) = O(ε²)``, so its log-log slope
    (:func:`loglog_slope`) is 2 and ``E(ε)/ε²`` tends to a constant.
    """
    order = _order_of(compat, order, "truncation_error")
    _check_factors(As, Bs)
    if norm not in ("fro", "2"):
        raise ValueError(f"unknown norm {norm!r}; choose one of ('fro', '2')")
    return _truncation_error(As, Bs, jnp.asarray(eps_grid, As.dtype), order, norm)


@functools.partial(jax.jit, static_argnames=("order", "norm"))
def _truncation_error(As: Array, Bs: Array, eps_grid: Array, order: str, norm: str) -> Array:
    F0, L1 = _first_order(As, Bs, order)

    def one(e):
        return _norm(_transport(As + e * Bs, order) - F0 - e * L1, norm)

    return jax.vmap(one)(eps_grid)


def loglog_slope(eps: Array, E: Array) -> Array:
    """Ordinary-least-squares slope of ``log E`` on ``log ε``; NaN if a value is not positive."""
    eps, E = jnp.asarray(eps), jnp.asarray(E)
    slope, _ = line_fit(jnp.log(eps), jnp.log(E))
    return jnp.where(jnp.all(eps > 0) & jnp.all(E > 0), slope, jnp.nan)
