r"""Selective copying (Gu & Dao 2023, "Mamba", §3.1 and §4.1.1).

The copy task with the symbols scattered: ``M`` symbols (from ``K`` kinds) sit at random, sorted
positions among blanks in the first ``T - M`` steps; ``M`` delimiter steps follow, during which
the model must emit the symbols in their order of appearance. Unlike the copy task the spacing
changes from sequence to sequence, so a fixed delay line cannot solve it: the model has to
*select* what to keep from the input's content, the job of an input-dependent time scale.

Tokens: 0 = blank, 1..K = symbols, K + 1 = delimiter, one-hot inputs of ``K + 2`` features.
Targets are ``K + 1`` classes (blank + symbols) at every step: blank for the first ``T - M``
steps, the symbols in order for the last ``M``, scored by the per-step cross-entropy averaged
over all ``T`` steps. A memoryless predictor (blank until the delimiters, which it sees, then
uniform over the ``K`` symbols) scores :math:`M \log K / T`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gatezoo.tasks.options import check_int
from gatezoo.tasks.protocol import Task
from gatezoo.tasks.synthetic import synthetic_task

__all__ = ["selective_copy", "selective_copy_baseline", "scatter_positions"]

selective_copy_description = (
    "emit 16 symbols (16 kinds) scattered at random among blanks, after T - 16 steps; T=256"
)


def selective_copy_baseline(seq_len: int, tokens: int, vocab: int) -> float:
    """The memoryless cross-entropy ``M log K / T`` (nats per step)."""
    return tokens * math.log(vocab) / seq_len


def scatter_positions(key: jax.Array, batch_size: int, span: int, count: int) -> jax.Array:
    """``count`` distinct positions in ``[0, span)`` per row, uniformly, sorted: ``(batch, count)``.

    The first ``count`` of a uniformly random ordering of the span (``argsort`` of uniforms).
    """
    order = jnp.argsort(jax.random.uniform(key, (batch_size, span)), axis=1)
    return jnp.sort(order[:, :count], axis=1).astype(jnp.int32)


def _recall_accuracy(tokens: int):
    def metric(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        hits = jnp.argmax(logits[:, -tokens:], axis=-1) == labels[:, -tokens:]
        return {"recall_accuracy": jnp.mean(hits.astype(jnp.float32))}

    return metric


def selective_copy(seq_len: int | None = None, *, tokens: int = 16, vocab: int = 16) -> Task:
    """Selective copying of ``tokens`` symbols of ``vocab`` kinds in ``seq_len`` steps.

    Defaults: ``T = 256``, ``M = 16``, ``K = 16`` (the Mamba paper uses ``T = 4096``); needs
    ``T >= 2 M``. Metrics add ``recall_accuracy``: the accuracy on the ``M`` recalled steps.
    """
    tokens = check_int("selective-copy", "tokens", tokens, 1)
    vocab = check_int("selective-copy", "vocab", vocab, 2)
    T = check_int("selective-copy", "seq_len", 256 if seq_len is None else seq_len, 2 * tokens,
                  f"the first T - {tokens} steps must hold the {tokens} symbols")
    span = T - tokens

    def generate(key, batch_size):
        k_pos, k_sym = jax.random.split(key)
        where = scatter_positions(k_pos, batch_size, span, tokens)  # (B, M)
        symbols = jax.random.randint(k_sym, (batch_size, tokens), 1, vocab + 1, jnp.int32)
        hit = jnp.arange(span)[None, :, None] == where[:, None, :]  # (B, span, M)
        body = jnp.sum(jnp.where(hit, symbols[:, None, :], 0), axis=-1)
        tail = jnp.full((batch_size, tokens), vocab + 1, jnp.int32)
        x = jax.nn.one_hot(jnp.concatenate([body, tail], axis=1), vocab + 2, dtype=jnp.float32)
        y = jnp.concatenate([jnp.zeros((batch_size, span), jnp.int32), symbols], axis=1)
        return x, y

    return synthetic_task(
        generate, name="selective-copy", description=selective_copy_description,
        input_dim=vocab + 2, output_dim=vocab + 1, seq_len=T, readout="all", loss_kind="xent",
        baseline=selective_copy_baseline(T, tokens, vocab),
        baseline_note=f"analytic: memoryless cross-entropy M log K / T = {tokens} log {vocab} / "
        f"{T} (blank, then uniform over the {vocab} symbols at the delimiters)",
        options={"tokens": tokens, "vocab": vocab}, metric_fn=_recall_accuracy(tokens),
    )
