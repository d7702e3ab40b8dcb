r"""Memory tasks of docs/theory.md §6.3-§6.4: adding, recall, short, movingavg, delaysum.

Inputs are U(0, 1). The S1 tasks (adding, recall, short) have ``channels - 1`` content channels
and a final marker channel (S1: ``channels = 4``; S2's adding: ``channels = 6``, five noise
channels + marker). The S2 filters (movingavg, delaysum) drive only channel 0; the other
channels are zero. Every target is a scalar, read at the last step, scored by MSE.

The adding task also comes in a variable-length form (``min_len``): each sequence has its own
length, is zero-padded to ``T`` and is scored at its own last valid step (see
:class:`gatezoo.tasks.Padded`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo.tasks.options import check_int
from gatezoo.tasks.protocol import Padded, Task
from gatezoo.tasks.synthetic import Generator, synthetic_task

__all__ = ["adding", "recall", "short", "movingavg", "delaysum", "DELAYS", "RECALL_K"]

RECALL_K = 5
DELAYS = (4, 12, 24, 36)
DELAY_WEIGHT = 0.25
_UNIFORM_VAR = 1.0 / 12.0  # Var U(0, 1)

adding_description = (
    "sum of the two marked values of channel 0 (markers in each half); T=80; "
    "min_len: lengths uniform in [min_len, T], padded"
)
recall_description = "sum of 5 marked values of channel 0 in the first max(3, T/3) steps; T=80"
short_description = "sum of the last 6 values of channel 0 (short-memory control); T=80"
movingavg_description = "mean of the last 8 values of channel 0; T=120, 6 channels"
delaysum_description = "mean of channel 0 at delays 4, 12, 24, 36 before the end; T=120"


def _with_marker(content: jax.Array, marker: jax.Array) -> jax.Array:
    """(B, T, C) content and a (B, T) boolean marker -> (B, T, C + 1) float32 input."""
    return jnp.concatenate([content, marker[..., None].astype(jnp.float32)], axis=-1)


def _channel0_only(u: jax.Array, channels: int) -> jax.Array:
    """(B, T) signal in channel 0 of a (B, T, channels) input whose other channels are zero."""
    pad = jnp.zeros((*u.shape, channels - 1), jnp.float32)
    return jnp.concatenate([u[..., None], pad], axis=-1)


def adding(seq_len: int | None = None, *, channels: int = 4, min_len: int | None = None) -> Task:
    r"""The adding problem: :math:`y = x_{i_1,0} + x_{i_2,0}`, with one marker
    :math:`i_1 \in [0, \lfloor T/2 \rfloor)` and one :math:`i_2 \in [\lfloor T/2 \rfloor, T)`.

    Default ``T = 80`` (S1). Baseline: predicting the mean 1 gives MSE ``Var = 2/12``.

    ``min_len`` (default None: every sequence has ``T`` steps) makes the task variable-length:
    each example's length :math:`L` is uniform in ``[min_len, T]``, its markers follow the rule
    above with :math:`L` in place of ``T``, its inputs are zero at steps ``t >= L``, and
    ``sample`` returns ``(x, Padded(y, lengths))``. The baseline is unchanged (the two marked
    values are still two U(0, 1) draws).
    """
    T = check_int("adding", "seq_len", 80 if seq_len is None else seq_len, 2)
    channels = check_int("adding", "channels", channels, 2, "one content channel + marker")
    options = {"channels": channels}
    if min_len is None:
        generate = _adding_generator(T, channels)
    else:
        min_len = check_int("adding", "min_len", min_len, 2, "each half holds a marker",
                            maximum=T, max_why=f"seq_len is {T}")
        # Only set when given, so a fixed-length task compares and hashes as it always did.
        options["min_len"] = min_len
        generate = _padded_adding_generator(T, channels, min_len)

    return synthetic_task(
        generate, name="adding", description=adding_description, input_dim=channels,
        output_dim=1, seq_len=T, baseline=2 * _UNIFORM_VAR,
        baseline_note="analytic: MSE of predicting the mean 1 = Var(u1 + u2) = 2/12",
        options=options, variable_length=min_len is not None,
    )


def _adding_generator(T: int, channels: int) -> Generator:
    """The fixed-length draw: ``(B, T, channels)`` inputs, ``(B, 1)`` targets."""

    def generate(key, batch_size):
        k_u, k_1, k_2 = jax.random.split(key, 3)
        content = jax.random.uniform(k_u, (batch_size, T, channels - 1), jnp.float32)
        i1 = jax.random.randint(k_1, (batch_size, 1), 0, T // 2)
        i2 = jax.random.randint(k_2, (batch_size, 1), T // 2, T)
        steps = jnp.arange(T)[None, :]
        marker = (steps == i1) | (steps == i2)
        y = jnp.sum(jnp.where(marker, content[..., 0], 0.0), axis=1, keepdims=True)
        return _with_marker(content, marker), y

    return generate


def _padded_adding_generator(T: int, channels: int, min_len: int) -> Generator:
    """The variable-length draw: ``(B, T, channels)`` inputs zero past each length,
    ``Padded((B, 1) targets, (B,) lengths)``."""

    def generate(key, batch_size):
        k_u, k_1, k_2, k_len = jax.random.split(key, 4)
        lengths = jax.random.randint(k_len, (batch_size, 1), min_len, T + 1)
        half = lengths // 2
        content = jax.random.uniform(k_u, (batch_size, T, channels - 1), jnp.float32)
        # Per-example bounds: i1 in [0, L//2), i2 in [L//2, L), both non-empty as L >= 2.
        i1 = jax.random.randint(k_1, (batch_size, 1), 0, half)
        i2 = jax.random.randint(k_2, (batch_size, 1), half, lengths)
        steps = jnp.arange(T)[None, :]
        valid = steps < lengths
        content = jnp.where(valid[..., None], content, 0.0)
        marker = (steps == i1) | (steps == i2)
        y = jnp.sum(jnp.where(marker, content[..., 0], 0.0), axis=1, keepdims=True)
        return _with_marker(content, marker), Padded(y, lengths[:, 0].astype(jnp.int32))

    return generate


def recall(seq_len: int | None = None, *, channels: int = 4) -> Task:
    r"""Sum of the K = 5 values of channel 0 at distinct marked steps drawn in the first
    :math:`\max(3, \lfloor T/3 \rfloor)` steps. Default ``T = 80``; needs ``T >= 15``.
    Baseline: ``Var = 5/12``.
    """
    T = check_int("recall", "seq_len", 80 if seq_len is None else seq_len, 15,
                  f"the first max(3, T//3) steps must hold {RECALL_K} markers")
    channels = check_int("recall", "channels", channels, 2, "one content channel + marker")
    window = max(3, T // 3)

    def generate(key, batch_size):
        k_u, k_p = jax.random.split(key)
        content = jax.random.uniform(k_u, (batch_size, T, channels - 1), jnp.float32)
        # The first K of a random ordering of the window: K distinct positions, uniformly.
        order = jnp.argsort(jax.random.uniform(k_p, (batch_size, window)), axis=1)
        picks = order[:, :RECALL_K]
        marker = jnp.any(jnp.arange(T)[None, :, None] == picks[:, None, :], axis=-1)
        y = jnp.sum(jnp.where(marker, content[..., 0], 0.0), axis=1, keepdims=True)
        return _with_marker(content, marker), y

    return synthetic_task(
        generate, name="recall", description=recall_description, input_dim=channels,
        output_dim=1, seq_len=T, baseline=RECALL_K * _UNIFORM_VAR,
        baseline_note="analytic: MSE of predicting the mean 2.5 = Var(sum of 5 U(0,1)) = 5/12",
        options={"channels": channels},
    )


def short(seq_len: int | None = None, *, channels: int = 4, window: int = 6) -> Task:
    r"""Short-memory control: :math:`y = \sum_{t=T-L}^{T-1} x_{t,0}` with ``L = window = 6``.
    The marker channel stays zero. Default ``T = 80``. Baseline: ``Var = L/12``.
    """
    window = check_int("short", "window", window, 1)
    T = check_int("short", "seq_len", 80 if seq_len is None else seq_len, window,
                  "at least window steps")
    channels = check_int("short", "channels", channels, 2, "one content channel + marker")

    def generate(key, batch_size):
        content = jax.random.uniform(key, (batch_size, T, channels - 1), jnp.float32)
        y = jnp.sum(content[:, T - window:, 0], axis=1, keepdims=True)
        return _with_marker(content, jnp.zeros((batch_size, T), bool)), y

    return synthetic_task(
        generate, name="short", description=short_description, input_dim=channels,
        output_dim=1, seq_len=T, baseline=window * _UNIFORM_VAR,
        baseline_note=f"analytic: MSE of predicting the mean {window / 2:g} = Var = {window}/12",
        options={"channels": channels, "window": window},
    )


def movingavg(seq_len: int | None = None, *, channels: int = 6, window: int = 8) -> Task:
    r"""Moving average: :math:`y = \frac1W \sum_{t=T-W}^{T-1} u_t` of channel 0 (others zero),
    ``W = window = 8``. Default ``T = 120`` (S2). Baseline: ``Var = 1/(12 W)``.
    """
    window = check_int("movingavg", "window", window, 1)
    T = check_int("movingavg", "seq_len", 120 if seq_len is None else seq_len, window,
                  "at least window steps")
    channels = check_int("movingavg", "channels", channels, 1)

    def generate(key, batch_size):
        u = jax.random.uniform(key, (batch_size, T), jnp.float32)
        y = jnp.mean(u[:, T - window:], axis=1, keepdims=True)
        return _channel0_only(u, channels), y

    return synthetic_task(
        generate, name="movingavg", description=movingavg_description, input_dim=channels,
        output_dim=1, seq_len=T, baseline=_UNIFORM_VAR / window,
        baseline_note=f"analytic: MSE of predicting the mean 0.5 = Var = 1/(12*{window})",
        options={"channels": channels, "window": window},
    )


def delaysum(seq_len: int | None = None, *, channels: int = 6) -> Task:
    r"""Delayed sum: :math:`y = \sum_i w_i u_{T-1-d_i}`, ``d = (4, 12, 24, 36)``, ``w_i = 1/4``,
    on channel 0 (others zero). Default ``T = 120``; needs ``T > 36``.
    Baseline: ``Var = 4 (1/4)^2 / 12 = 1/48``.
    """
    T = check_int("delaysum", "seq_len", 120 if seq_len is None else seq_len, max(DELAYS) + 1,
                  f"the longest delay is {max(DELAYS)}")
    channels = check_int("delaysum", "channels", channels, 1)
    taps = np.array([T - 1 - d for d in DELAYS])

    def generate(key, batch_size):
        u = jax.random.uniform(key, (batch_size, T), jnp.float32)
        y = DELAY_WEIGHT * jnp.sum(u[:, taps], axis=1, keepdims=True)
        return _channel0_only(u, channels), y

    return synthetic_task(
        generate, name="delaysum", description=delaysum_description, input_dim=channels,
        output_dim=1, seq_len=T, baseline=len(DELAYS) * DELAY_WEIGHT**2 * _UNIFORM_VAR,
        baseline_note="analytic: MSE of predicting the mean 0.5 = Var = 4 (1/4)^2 / 12 = 1/48",
        options={"channels": channels},
    )

