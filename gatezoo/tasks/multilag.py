r"""Multi-lag linear regression, the task of the learnability-window follow-up (arXiv 2512.05790).

Each step's target is a weighted sum of one fixed projection of the input at several lags, plus
noise, and the model is scored at every step: a model that learns the lag-:math:`\ell_k` term
has carried an error signal :math:`\ell_k` steps back. The longest lag it learns is its
learnability window, in the sense the follow-up measures.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo.tasks.options import check_int
from gatezoo.tasks.protocol import Task
from gatezoo.tasks.synthetic import synthetic_task

__all__ = ["multilag", "multilag_baseline", "PAPER_LAGS", "PAPER_COEFFS"]

#: the follow-up's lags and coefficients (``launch_learnability.sh`` at the paper's commit)
PAPER_LAGS = (64, 128, 256, 384, 512, 768)
PAPER_COEFFS = (0.60, 0.50, 0.40, 0.30, 0.22, 0.16)

multilag_description = ("y_t = sum_k c_k u.x_{t-l_k} + noise, Gaussian x, fixed unit u, "
                        "scored every step; T=1536, lags 64-768")


def _numbers(name: str, value: str | Sequence, kind: type) -> tuple:
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = tuple(kind(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"task 'multilag': {name} must be a list of {kind.__name__}s, "
                         f"got {value!r}") from None
    if not out:
        raise ValueError(f"task 'multilag': {name} must not be empty")
    return out


def multilag_baseline(seq_len: int, lags: Sequence[int], coeffs: Sequence[float],
                      noise: float) -> float:
    r"""The MSE of predicting 0 at every step: the target's mean square over the steps,

    .. math::
      \frac{1}{T}\sum_{t=0}^{T-1}\Big(\sigma_n^2 + \sum_{k:\ t \ge \ell_k} c_k^2\Big),

    since :math:`u^\top x_{t-\ell}` is standard normal for a unit :math:`u`. The noise floor
    :math:`\sigma_n^2` is the best any model can reach.

    Example:
      >>> round(multilag_baseline(4, (1, 2), (1.0, 1.0), 0.0), 3)
      1.25
    """
    steps = np.arange(seq_len)[:, None]
    active = steps >= np.asarray(lags)[None, :]
    return float(np.mean(noise**2 + active @ np.square(np.asarray(coeffs, dtype=np.float64))))


def multilag(
    seq_len: int | None = None,
    *,
    dim: int = 16,
    lags: str | Sequence[int] = PAPER_LAGS,
    coeffs: str | Sequence[float] = PAPER_COEFFS,
    noise: float = 0.4,
    direction_seed: int = 0,
) -> Task:
    r"""Multi-lag linear regression with a readout at every step.

    .. math::
      x_t \sim \mathcal N(0, I_D), \qquad
      y_t = \sum_{k:\ t \ge \ell_k} c_k\, u^\top x_{t-\ell_k} + \sigma_n \varepsilon_t,
      \qquad \varepsilon_t \sim \mathcal N(0, 1),

    with one unit vector :math:`u \in \mathbb R^D` fixed by ``direction_seed`` (the same for
    every split, as the follow-up shares it between its training, validation and diagnostic
    sets). The loss is the MSE over every step and sequence. Defaults are the follow-up's paper
    setting: ``T = 1536``, ``D = 16``, lags 64-768 with coefficients 0.60-0.16, noise 0.4.
    Baseline: :func:`multilag_baseline` (predict 0).

    Args:
      seq_len: ``T`` (default 1536); must exceed the longest lag.
      dim: the input size ``D``.
      lags: the lags :math:`\ell_k` (a sequence or a comma-separated string), each >= 1.
      coeffs: the coefficients :math:`c_k`, one per lag.
      noise: the noise standard deviation :math:`\sigma_n` (>= 0).
      direction_seed: the seed of :math:`u`.

    Example:
      >>> import jax
      >>> task = multilag(12, dim=3, lags="2,5", coeffs="0.6,0.3", noise=0.1)
      >>> x, y = task.sample(jax.random.key(0), 4)
      >>> x.shape, y.shape, task.readout, round(task.baseline, 4)
      ((4, 12, 3), (4, 12, 1), 'all', 0.3625)

    References:
      Livi, `Learnability Window in Gated RNNs <https://arxiv.org/abs/2512.05790>`__,
      arXiv:2512.05790, 2025 (the task and its settings).
    """
    lags = _numbers("lags", lags, int)
    coeffs = _numbers("coeffs", coeffs, float)
    if len(lags) != len(coeffs):
        raise ValueError(f"task 'multilag': {len(lags)} lags but {len(coeffs)} coeffs; give "
                         "one coefficient per lag")
    for lag in lags:
        check_int("multilag", "each lag", lag, 1)
    T = check_int("multilag", "seq_len", 1536 if seq_len is None else seq_len, max(lags) + 1,
                  f"the longest lag is {max(lags)}")
    dim = check_int("multilag", "dim", dim, 1)
    direction_seed = check_int("multilag", "direction_seed", direction_seed, 0)
    noise = float(noise)
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"task 'multilag': noise must be a finite number >= 0, got {noise!r}")
    u = np.random.default_rng(direction_seed).standard_normal(dim)
    u = jnp.asarray(u / np.linalg.norm(u), jnp.float32)
    weights = jnp.asarray(coeffs, jnp.float32)

    def generate(key, batch_size):
        k_x, k_noise = jax.random.split(key)
        x = jax.random.normal(k_x, (batch_size, T, dim), jnp.float32)
        s = x @ u  # (B, T): the projection every term reads
        y = noise * jax.random.normal(k_noise, (batch_size, T), jnp.float32)
        for lag, c in zip(lags, weights, strict=True):
            shifted = jnp.pad(s[:, : T - lag], ((0, 0), (lag, 0)))  # zero where t < lag
            y = y + c * shifted
        return x, y[..., None]

    return synthetic_task(
        generate, name="multilag", description=multilag_description, input_dim=dim,
        output_dim=1, seq_len=T, readout="all",
        baseline=multilag_baseline(T, lags, coeffs, noise),
        baseline_note="analytic: MSE of predicting 0, mean over steps of noise^2 + the "
                      "squared coefficients of the lags already in reach",
        options={"dim": dim, "lags": ",".join(map(str, lags)),
                 "coeffs": ",".join(map(str, coeffs)), "noise": noise,
                 "direction_seed": direction_seed},
    )
