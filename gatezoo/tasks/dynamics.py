r"""Dynamical-system targets of docs/theory.md §6.4: ``ar2``, ``narma10``, ``narma20``.

The recursions run as a ``lax.scan`` over time inside the sampler, so they jit like the others.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo.tasks.options import check_int
from gatezoo.tasks.protocol import Task
from gatezoo.tasks.synthetic import synthetic_task

__all__ = [
    "ar2", "narma10", "narma20", "ar2_series", "ar2_variance", "narma_series", "NARMA",
    "AR2_COEFFS", "AR2_NOISE_STD", "NARMA_INPUT_MAX",
]

AR2_COEFFS = (1.6, -0.7)
AR2_NOISE_STD = 0.05
NARMA_INPUT_MAX = 0.5
# order n -> (a, b, c, d) of y_{t+1} = a y_t + b y_t sum_{i<n} y_{t-i} + c u_{t-n+1} u_t + d.
NARMA = {10: (0.3, 0.05, 1.5, 0.1), 20: (0.1, 0.04, 1.5, 0.2)}
# |y_T| above this (or non-finite) counts as diverged; such sequences are redrawn, at most
# NARMA_REDRAWS times per batch (narma10 at T = 120 diverges for ~2 in 10^4 sequences).
NARMA_DIVERGED = 100.0
NARMA_REDRAWS = 8
_BASELINE_SAMPLES = 32768
_BASELINE_SEED = 20_250_812

ar2_description = "final value of a latent AR(2) process (inputs are unrelated distractors); T=120"
narma10_description = "final output of the NARMA-10 system driven by channel 0 ~ U(0, 0.5); T=120"
narma20_description = "final output of NARMA-20 (no tanh) driven by channel 0 ~ U(0, 0.5); T=50"


def ar2_series(eps: jax.Array) -> jax.Array:
    r""":math:`x_t = 1.6 x_{t-1} - 0.7 x_{t-2} + \epsilon_t` for ``t = 1..T``, from rest
    (:math:`x_0 = x_{-1} = 0`). ``eps``: ``(B, T)``; returns ``(B, T)`` = ``x_1..x_T``."""
    a1, a2 = AR2_COEFFS

    def step(carry, e):
        x1, x2 = carry
        x = a1 * x1 + a2 * x2 + e
        return (x, x1), x

    zero = jnp.zeros(eps.shape[:1], eps.dtype)
    _, xs = jax.lax.scan(step, (zero, zero), eps.T)
    return xs.T


def ar2_variance(seq_len: int) -> float:
    r"""Exact :math:`\mathrm{Var}\,x_T` of :func:`ar2_series`: the covariance of
    :math:`s_t = (x_t, x_{t-1})` obeys
    :math:`\Sigma_t = A \Sigma_{t-1} A^\top + \sigma^2 e_1 e_1^\top` from :math:`\Sigma_0 = 0`."""
    a1, a2 = AR2_COEFFS
    A = np.array([[a1, a2], [1.0, 0.0]])
    Q = np.array([[AR2_NOISE_STD**2, 0.0], [0.0, 0.0]])
    S = np.zeros((2, 2))
    for _ in range(seq_len):  # host-side, once per task construction
        S = A @ S @ A.T + Q
    return float(S[0, 0])


def narma_series(u: jax.Array, order: int) -> jax.Array:
    r"""NARMA-``order``: :math:`y_{t+1} = a y_t + b y_t \sum_{i=0}^{n-1} y_{t-i}
    + c\, u_{t-n+1} u_t + d` for ``t = 0..T-1`` from :math:`y_{\le 0} = 0`, with
    :math:`u_{t-n+1} = 0` for ``t < n - 1``. ``u``: ``(B, T)``; returns ``(B, T)`` =
    ``y_1..y_T``."""
    a, b, c, d = NARMA[order]
    lagged = jnp.pad(u, ((0, 0), (order - 1, 0)))[:, : u.shape[1]]

    def step(history, inputs):
        u_t, u_lag = inputs
        y_t = history[:, 0]
        y_next = a * y_t + b * y_t * jnp.sum(history, axis=1) + c * u_lag * u_t + d
        history = jnp.concatenate([y_next[:, None], history[:, :-1]], axis=1)
        return history, y_next

    history = jnp.zeros((u.shape[0], order), u.dtype)
    _, ys = jax.lax.scan(step, history, (u.T, lagged.T))
    return ys.T


def ar2(seq_len: int | None = None, *, channels: int = 6) -> Task:
    r"""Target :math:`x_T` of :func:`ar2_series` with :math:`\epsilon \sim N(0, 0.05^2)`; every
    input channel is an independent U(0, 1) distractor, so the target does NOT depend on the inputs
    (as in the authors' code) and nothing beats the baseline. Default ``T = 120``.
    """
    T = check_int("ar2", "seq_len", 120 if seq_len is None else seq_len, 2)
    channels = check_int("ar2", "channels", channels, 1)

    def generate(key, batch_size):
        k_x, k_e = jax.random.split(key)
        x = jax.random.uniform(k_x, (batch_size, T, channels), jnp.float32)
        eps = AR2_NOISE_STD * jax.random.normal(k_e, (batch_size, T), jnp.float32)
        return x, ar2_series(eps)[:, -1:]

    return synthetic_task(
        generate, name="ar2", description=ar2_description, input_dim=channels, output_dim=1,
        seq_len=T, baseline=ar2_variance(T),
        baseline_note="analytic: MSE of predicting the mean 0 = exact Var(x_T) (covariance "
        "recursion); the target ignores the inputs, so this is also the best achievable",
        options={"channels": channels},
    )


def _narma_task(name: str, order: int, description: str, seq_len, channels, default_T) -> Task:
    T = check_int(name, "seq_len", default_T if seq_len is None else seq_len, order + 1,
                  f"the u_(t-{order - 1}) term needs more than {order} steps")
    channels = check_int(name, "channels", channels, 1)

    def draw(key, batch_size):
        u = jax.random.uniform(key, (batch_size, T), jnp.float32, 0.0, NARMA_INPUT_MAX)
        return u, narma_series(u, order)[:, -1]

    def bounded(y):
        return jnp.isfinite(y) & (jnp.abs(y) <= NARMA_DIVERGED)

    def generate(key, batch_size):
        # NARMA without a squashing function diverges on rare input sequences; those rows are
        # redrawn (fresh keys folded from `key`) so that a batch stays finite.
        def redraw(state):
            i, u, y = state
            u_new, y_new = draw(jax.random.fold_in(key, i), batch_size)
            keep = bounded(y)
            return i + 1, jnp.where(keep[:, None], u, u_new), jnp.where(keep, y, y_new)

        def some_diverged(state):
            i, _, y = state
            return jnp.any(~bounded(y)) & (i <= NARMA_REDRAWS)

        u, y = draw(jax.random.fold_in(key, 0), batch_size)
        _, u, y = jax.lax.while_loop(some_diverged, redraw, (1, u, y))
        pad = jnp.zeros((batch_size, T, channels - 1), jnp.float32)
        return jnp.concatenate([u[..., None], pad], axis=-1), y[:, None]

    return synthetic_task(
        generate, name=name, description=description, input_dim=channels, output_dim=1,
        seq_len=T, baseline=_estimated_variance(name, T, generate),
        baseline_note=f"estimated: Var(y_T) over {_BASELINE_SAMPLES} sequences from a fixed "
        "key (MSE of predicting the mean)",
        options={"channels": channels},
    )


def narma10(seq_len: int | None = None, *, channels: int = 6) -> Task:
    r"""NARMA-10 (:func:`narma_series`, ``(a, b, c, d) = (0.3, 0.05, 1.5, 0.1)``) driven by
    :math:`u_t \sim U(0, 0.5)` in channel 0 (others zero); target: the final :math:`y_T`.
    The rare sequences that diverge (:math:`|y_T| > 100`) are redrawn. Default ``T = 120``;
    needs ``T > 10``."""
    return _narma_task("narma10", 10, narma10_description, seq_len, channels, 120)


def narma20(seq_len: int | None = None, *, channels: int = 6) -> Task:
    r"""NARMA-20 without the usual tanh wrapper, ``(a, b, c, d) = (0.1, 0.04, 1.5, 0.2)``; as
    :func:`narma10` otherwise. Needs ``T > 20``.

    Default ``T = 50``, not S2's 120: without tanh the mean recursion
    :math:`y = 0.1 y + 0.8 y^2 + 1.5/16 + 0.2` has no fixed point, and at ``T = 120`` about 90%
    of sequences blow up (at ``T = 50`` none did in 2 x 10^5 draws). Longer ``T`` raises a
    ValueError once the baseline sample cannot be kept finite."""
    return _narma_task("narma20", 20, narma20_description, seq_len, channels, 50)


_VARIANCES: dict[tuple[str, int], float] = {}


def _estimated_variance(name: str, seq_len: int, generate) -> float:
    """Var of the target over a fixed large sample; depends only on (task, T), so cached."""
    if (name, seq_len) not in _VARIANCES:
        _, y = jax.jit(generate, static_argnums=1)(
            jax.random.key(_BASELINE_SEED), _BASELINE_SAMPLES
        )
        y = np.asarray(y, np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError(
                f"task {name!r} diverges for most sequences at seq_len={seq_len}; "
                "use a shorter seq_len (narma20 without tanh is bounded up to about 60)"
            )
        _VARIANCES[(name, seq_len)] = float(np.var(y))
    return _VARIANCES[(name, seq_len)]
