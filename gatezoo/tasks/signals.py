r"""The sinusoid-mixture task of docs/theory.md §6.3 (``sinmix``) and its baseline by quadrature."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo.tasks.options import check_int
from gatezoo.tasks.protocol import Task
from gatezoo.tasks.synthetic import synthetic_task

__all__ = ["sinmix", "sinmix_variance", "FREQ_RANGE", "NOISE_STD"]

FREQ_RANGE = (1.0, 7.0)
NOISE_STD = 0.1
sinmix_description = "late-minus-early mean of two random sinusoids (s1 up, s2 down); T=80"


def sinmix_variance(seq_len: int, nodes: int = 512) -> float:
    r"""Variance of the sinmix target, by Gauss-Legendre quadrature over the frequency.

    For a fixed frequency and a uniform phase, :math:`E[\sin(a+p)\sin(b+p)] = \tfrac12\cos(a-b)`,
    so the late-minus-early mean :math:`D = c^\top s` of one channel has
    :math:`\mathrm{Var}(D \mid f) = \tfrac12 |\sum_j c_j e^{2\pi i f t_j}|^2` and mean 0. The
    target adds two independent channels, hence
    :math:`\mathrm{Var}\,y = E_{f \sim U[1,7]} |\sum_j c_j e^{2\pi i f t_j}|^2`.
    """
    T = seq_len
    n = T // 4
    t = np.linspace(0.0, 1.0, T)
    c = np.zeros(T)
    c[:n] -= 1.0 / n
    c[T - n:] += 1.0 / n
    lo, hi = FREQ_RANGE
    z, w = np.polynomial.legendre.leggauss(nodes)
    f = 0.5 * (hi - lo) * z + 0.5 * (hi + lo)
    amp = np.abs(np.exp(2j * np.pi * f[:, None] * t[None, :]) @ c) ** 2
    return float(0.5 * np.sum(w * amp))  # the mean over [lo, hi] of amp: (1/2) sum w amp


def sinmix(seq_len: int | None = None, *, channels: int = 4) -> Task:
    r"""Two sinusoids :math:`s_k(t) = \sin(2\pi f_k t + p_k)` on ``t = linspace(0, 1, T)``, with
    :math:`f_k \sim U[1, 7]`, :math:`p_k \sim U[0, 2\pi)`, in channels 0 and 1; the other content
    channels carry N(0, 0.1^2) noise and the marker channel (the last) is zero. With ``n = T // 4``
    early/late steps:

    .. math:: y = (\bar s_1^{late} - \bar s_1^{early}) + (\bar s_2^{early} - \bar s_2^{late}).

    Default ``T = 80``; needs ``T >= 4`` and ``channels >= 3``.
    """
    T = check_int("sinmix", "seq_len", 80 if seq_len is None else seq_len, 4,
                  "early and late quarters must be non-empty")
    channels = check_int("sinmix", "channels", channels, 3, "two sinusoids + marker")
    n = T // 4
    t = np.linspace(0.0, 1.0, T, dtype=np.float32)

    def generate(key, batch_size):
        k_f, k_p, k_n = jax.random.split(key, 3)
        f = jax.random.uniform(k_f, (batch_size, 1, 2), jnp.float32, *FREQ_RANGE)
        p = jax.random.uniform(k_p, (batch_size, 1, 2), jnp.float32, 0.0, 2 * np.pi)
        s = jnp.sin(2 * np.pi * f * t[None, :, None] + p)
        noise = NOISE_STD * jax.random.normal(k_n, (batch_size, T, channels - 3), jnp.float32)
        marker = jnp.zeros((batch_size, T, 1), jnp.float32)
        early = jnp.mean(s[:, :n], axis=1)
        late = jnp.mean(s[:, T - n:], axis=1)
        y = (late[:, 0] - early[:, 0]) + (early[:, 1] - late[:, 1])
        return jnp.concatenate([s, noise, marker], axis=-1), y[:, None]

    return synthetic_task(
        generate, name="sinmix", description=sinmix_description, input_dim=channels,
        output_dim=1, seq_len=T, baseline=sinmix_variance(T),
        baseline_note="analytic (quadrature over f): MSE of predicting the mean 0 = Var(y)",
        options={"channels": channels},
    )
