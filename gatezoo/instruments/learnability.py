r"""The follow-up's generalised effective learning rate, as pure array functions.

Livi's follow-up (arXiv 2512.05790) joins the two things gatezoo measures separately, the gates'
transport and the optimizer's per-weight rate, into one effective learning rate per neuron
:math:`q`, lag :math:`\ell` and time :math:`t`:

.. math::
  \mu^{(q)}_{t,\ell} = \Lambda^{(q)}_{t-\ell}\; \Gamma^{(q)}_{t,\ell}.

* :math:`\Gamma` is the gates' transport of neuron :math:`q` over the window
  :math:`j = t-\ell+1, \dots, t`. Its first-order diagonal form (:func:`diagonal_transport`) is
  :math:`\prod_j \mathrm{leak}_j \,[1 + \sum_j \mathrm{rdiag}_j / \mathrm{leak}_j]`, with
  :math:`\mathrm{leak}_j` the retention :math:`1-\alpha_j` and :math:`\mathrm{rdiag}_j` the rest
  of the step Jacobian's diagonal; the exact one (:func:`exact_diagonal_transport`) is the
  diagonal of the product of the full step Jacobians, :math:`[J_t \cdots J_{t-\ell+1}]_{qq}`.
* :math:`\Lambda` is the optimizer's rate on the recurrent weights at the perturbation time
  :math:`k = t-\ell`, weighted by the squared pre-synaptic state (:func:`adaptive_rate`):
  :math:`\Lambda^{(q)}_k = \sum_j \lambda_{jq} h_{k-1,j}^2 / \sum_j h_{k-1,j}^2`, with
  :math:`\lambda = \mathrm{lr} / (\sqrt{\hat v} + \epsilon)` under Adam and
  :math:`\lambda = \mathrm{lr}` under SGD.

From :math:`\mu` come the envelope :math:`f(\ell) = E_{b,t} \sum_q |\mu^{(q)}_{t,\ell}|`
(:func:`envelope`) and the matched statistic
:math:`\psi_{t,\ell} = \sum_q \mu^{(q)}_{t,\ell}\, \delta^{(q)}_t\, v^{(q)}_{t-\ell}`
(:func:`matched_statistic`), whose tail index and signal-to-noise ratio give the learnability
window (:mod:`gatezoo.tail_index`).

Conventions (0-indexed arrays): ``leak[..., t, q]`` and ``rdiag[..., t, q]`` belong to step
``t`` (the map from the state after step ``t - 1`` to the state after step ``t``); a window of
lag ``ell`` ending at ``t`` holds steps ``t - ell + 1 .. t`` and is defined for ``t >= ell``, so
that its perturbation time ``k = t - ell`` has a state ``h_k`` and a pre-synaptic state
``h_{k-1}`` (``h_prev[..., k, :]``, zero for ``k = 0``). Values at ``t < ell`` are NaN. Weight
matrices are in Flax's ``(fan_in, fan_out)`` layout, so ``lam[j, q]`` is the rate of the weight
from neuron ``j`` into neuron ``q``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LEAK_FLOOR",
    "defined_windows",
    "diagonal_transport",
    "exact_diagonal_transport",
    "adam_rate_matrix",
    "adaptive_rate",
    "effective_rate",
    "envelope",
    "matched_statistic",
]

Array = jax.Array


#: leaks below this count as this (a window through a step that forgets everything has a
#: product of zero, and its first-order term ``rdiag_j / leak_j`` stays finite); the release
#: guards the same division with 1e-12
LEAK_FLOOR = 1e-12


def defined_windows(seq_len: int, lags: Sequence[int]) -> np.ndarray:
    """``(len(lags), seq_len)`` booleans: the window of lag ``ell`` ending at ``t`` exists
    (``t >= ell``)."""
    return np.arange(seq_len)[None, :] >= np.asarray(lags)[:, None]


def _windows(x: Array, lags: Sequence[int]) -> Array:
    """``out[i, ..., t, :] = x[..., t, :] - x[..., t - lags[i], :]`` for ``t >= lags[i]``, 0
    before: the sum over a window of a prefix-summed ``x``. No NaN is made here: XLA's CPU
    ``exp`` of NaN is 0, so undefined windows are masked at the end, not carried as NaN."""
    mask = defined_windows(x.shape[-2], lags)
    return jnp.stack([jnp.where(mask[i][:, None], x - jnp.roll(x, ell, axis=-2), 0.0)
                      for i, ell in enumerate(lags)])


def _undefined_to_nan(values: Array, lags: Sequence[int]) -> Array:
    mask = defined_windows(values.shape[-2], lags)
    mask = mask.reshape(mask.shape[:1] + (1,) * (values.ndim - 3) + mask.shape[1:] + (1,))
    return jnp.where(mask, values, jnp.nan)


def diagonal_transport(leak: Array, rdiag: Array | None, lags: Sequence[int]) -> Array:
    r"""The gates' diagonal transport :math:`\Gamma^{(q)}_{t,\ell}` over every window.

    .. math::
      \Gamma^{(q)}_{t,\ell} = \prod_{j=t-\ell+1}^{t} \mathrm{leak}^{(q)}_j
      \Big[1 + \sum_{j=t-\ell+1}^{t} \mathrm{rdiag}^{(q)}_j / \mathrm{leak}^{(q)}_j\Big],

    the product of the retentions with its first-order diagonal correction; ``rdiag=None``
    gives the zeroth order :math:`\Gamma_0 = \prod_j \mathrm{leak}_j`. Computed from prefix sums
    of :math:`\log \mathrm{leak}` and of :math:`\mathrm{rdiag}/\mathrm{leak}`, as the follow-up
    does, with leaks floored at :data:`LEAK_FLOOR`.

    Args:
      leak: ``(..., T, H)`` retentions, in ``[0, 1]``.
      rdiag: ``(..., T, H)`` the step Jacobian's diagonal minus ``leak``, or ``None``.
      lags: the lags :math:`\ell \ge 1`.

    Returns:
      ``(len(lags), ..., T, H)``; NaN where ``t < ell``.

    Example:
      >>> import jax.numpy as jnp
      >>> leak = jnp.full((4, 1), 0.5)
      >>> g = diagonal_transport(leak, jnp.full((4, 1), 0.1), [1, 2])
      >>> [round(float(v), 4) for v in g[:, 3, 0]]  # 0.5 (1 + 0.2), 0.25 (1 + 0.4)
      [0.6, 0.35]

    References:
      Livi, `Learnability Window in Gated RNNs <https://arxiv.org/abs/2512.05790>`__,
      arXiv:2512.05790, 2025.
    """
    leak = jnp.maximum(leak, LEAK_FLOOR)
    product = jnp.exp(_windows(jnp.cumsum(jnp.log(leak), axis=-2), lags))
    if rdiag is not None:
        product = product * (1.0 + _windows(jnp.cumsum(rdiag / leak, axis=-2), lags))
    return _undefined_to_nan(product, lags)


def exact_diagonal_transport(jacobians: Array, t: int, lags: Sequence[int]) -> Array:
    r"""The diagonal of the exact transport :math:`[J_t J_{t-1} \cdots J_{t-\ell+1}]_{qq}`.

    One backward sweep from step ``t``: :math:`M_\ell = M_{\ell-1} J_{t-\ell+1}` with
    :math:`M_0 = I`, and the diagonal kept at each lag of ``lags``. ``J`` is in the
    column-vector convention :math:`J_{ab} = \partial h_{t,a} / \partial h_{t-1,b}`.

    Args:
      jacobians: ``(..., T, H, H)`` step Jacobians.
      t: the window's last step (``t + 1 >= max(lags)``: the window holds steps ``0..t``).
      lags: the lags.

    Returns:
      ``(len(lags), ..., H)``.

    Example:
      >>> import jax.numpy as jnp
      >>> J = jnp.broadcast_to(jnp.array([[0.5, 0.2], [0.0, 0.8]]), (3, 2, 2))
      >>> [round(float(v), 3) for v in exact_diagonal_transport(J, 2, [2])[0]]
      [0.25, 0.64]
    """
    lags = list(lags)
    if not lags or min(lags) < 1 or max(lags) > t + 1:
        raise ValueError(f"lags must lie in 1..t+1 = {t + 1}, got {lags}")
    H = jacobians.shape[-1]
    M = jnp.broadcast_to(jnp.eye(H, dtype=jacobians.dtype), jacobians.shape[:-3] + (H, H))
    out = {}
    for ell in range(1, max(lags) + 1):
        M = M @ jacobians[..., t - ell + 1, :, :]
        if ell in lags:
            out[ell] = jnp.diagonal(M, axis1=-2, axis2=-1)
    return jnp.stack([out[ell] for ell in lags])


def adam_rate_matrix(nu: Array, count: Array, learning_rate: Array | float, *,
                     b2: float = 0.999, eps: float = 1e-8, bias_correction: bool = True) -> Array:
    r"""Adam's per-weight rate :math:`\lambda = \mathrm{lr} / (\sqrt{\hat v} + \epsilon)`.

    :math:`\hat v = v / (1 - \beta_2^{n})` after ``n = count`` updates (``bias_correction``;
    RMSprop has none). ``nu`` is optax's second-moment state of one weight matrix.

    Example:
      >>> import jax.numpy as jnp
      >>> lam = adam_rate_matrix(jnp.full((2, 2), 1e-9), 1, 1e-3, eps=0.0)  # v_hat = lr^2
      >>> round(float(lam[0, 0]), 4)
      1.0
    """
    v_hat = nu / (1.0 - b2 ** count) if bias_correction else nu
    return learning_rate / (jnp.sqrt(v_hat) + eps)


def adaptive_rate(lam: Array, h_prev: Array) -> Array:
    r"""The rate of each neuron's incoming weights seen by a perturbation at step ``k``:

    .. math::
      \Lambda^{(q)}_k = \frac{\sum_j \lambda_{jq}\, h_{k-1,j}^2}{\sum_j h_{k-1,j}^2},

    a Rayleigh quotient of the rate matrix on the pre-synaptic state (the column mean where
    :math:`h_{k-1} = 0`). A scalar ``lam`` (SGD) gives itself.

    Args:
      lam: ``(H, H)`` rates in ``(fan_in, fan_out)`` layout, or a scalar.
      h_prev: ``(..., H)`` pre-synaptic states.

    Returns:
      ``(..., H)``.

    Example:
      >>> import jax.numpy as jnp
      >>> lam = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> adaptive_rate(lam, jnp.array([1.0, 0.0])).tolist()  # only j = 0 is active
      [1.0, 2.0]
    """
    if jnp.ndim(lam) == 0:
        return jnp.broadcast_to(jnp.asarray(lam, h_prev.dtype), h_prev.shape)
    sq = jnp.square(h_prev)
    total = jnp.sum(sq, axis=-1, keepdims=True)
    weighted = sq @ lam / jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, weighted, jnp.mean(lam, axis=0))


def effective_rate(rate: Array, gamma: Array, lags: Sequence[int]) -> Array:
    r""":math:`\mu^{(q)}_{t,\ell} = \Lambda^{(q)}_{t-\ell}\,\Gamma^{(q)}_{t,\ell}`.

    Args:
      rate: ``(..., T, H)``, :math:`\Lambda_k` at each perturbation step ``k``.
      gamma: ``(len(lags), ..., T, H)`` from :func:`diagonal_transport`.
      lags: the lags of ``gamma``.

    Returns:
      ``(len(lags), ..., T, H)``, NaN where ``t < ell``.
    """
    shifted = jnp.stack([jnp.roll(rate, ell, axis=-2) for ell in lags])  # rate at t - ell
    return shifted * gamma


def envelope(mu: Array, lags: Sequence[int]) -> Array:
    r"""The envelope :math:`f(\ell) = E_{b,t} \sum_q |\mu^{(q)}_{t,\ell}|` over the defined
    windows (``t >= ell``), one value per lag: ``(len(lags),)``."""
    T = mu.shape[-2]
    mask = defined_windows(T, lags)
    mask = mask.reshape(mask.shape[:1] + (1,) * (mu.ndim - 3) + mask.shape[1:])
    mass = jnp.where(mask, jnp.sum(jnp.where(mask[..., None], jnp.abs(mu), 0.0), axis=-1), 0.0)
    count = np.sum(np.broadcast_to(mask, mass.shape).reshape(len(lags), -1), axis=-1)
    return jnp.sum(mass.reshape(len(lags), -1), axis=-1) / count


def matched_statistic(mu: Array, delta: Array, tangents: Array, lags: Sequence[int]) -> Array:
    r"""The per-sequence matched statistic :math:`\bar\psi^{(b)}(\ell)`.

    .. math::
      \psi^{(k)}_{t,\ell} = \sum_q \mu^{(q)}_{t,\ell}\, \delta^{(q)}_t\, v^{(k,q)}_{t-\ell},
      \qquad
      \bar\psi(\ell) = \frac{1}{K}\sum_k \operatorname{mean}_{t \ge \ell} \psi^{(k)}_{t,\ell},

    with :math:`\delta_t` the error through the readout (:math:`(\hat y_t - y_t) W_{out}`) and
    :math:`v^{(k)}` the forward-mode derivative of the states along the ``k``-th random
    direction in parameter space.

    Args:
      mu: ``(L, B, T, H)`` from :func:`effective_rate`.
      delta: ``(B, T, H)``.
      tangents: ``(K, B, T, H)``.
      lags: the ``L`` lags of ``mu``.

    Returns:
      ``(L, B)``.
    """
    v_lagged = jnp.stack([jnp.roll(tangents, ell, axis=-2) for ell in lags])  # v at t - ell
    defined = defined_windows(mu.shape[-2], lags)
    mu = jnp.where(defined[:, None, :, None], mu, 0.0)
    psi = jnp.einsum("lbtq,btq,lkbtq->lkbt", mu, delta, v_lagged)
    per_sequence = jnp.sum(psi, axis=-1) / np.sum(defined, axis=-1)[:, None, None]
    return jnp.mean(per_sequence, axis=1)
