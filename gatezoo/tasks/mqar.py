r"""Multi-query associative recall, MQAR (Arora et al. 2023, "Zoology", §3).

A sequence first lists ``N`` key-value pairs ``k_1 v_1 k_2 v_2 ... k_N v_N`` (distinct keys
from ``K`` kinds, values from ``V`` kinds, uniform), then, in the remaining ``T - 2N`` steps,
each key is queried once at a random position (blanks elsewhere). At a query the model must
emit the value that was paired with that key: ``N`` recalls from one state, the gap between
attention and fixed-state recurrences that Zoology measures.

Tokens are one-hot over ``K`` keys, ``V`` values, ``K`` *query* keys and the blank, ``2K + V
+ 1`` features; a query carries its own token (query ``j`` is the feature ``K + V + j``), so the
step itself says it is a query, as the query-phase position does in Zoology's single stream.
Targets are ``V + 1`` classes (0 = blank, ``1..V`` = values) at every step: the value at each
query, blank elsewhere; scored by the per-step cross-entropy averaged over all ``T`` steps.
A memoryless predictor (blank where no query is seen, uniform over the ``V`` values at a query)
scores :math:`N \log V / T`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gatezoo.tasks.options import check_int
from gatezoo.tasks.protocol import Task
from gatezoo.tasks.selective_copy import scatter_positions
from gatezoo.tasks.synthetic import synthetic_task

__all__ = ["mqar", "mqar_baseline"]

mqar_description = "recall the values of 8 keys queried after 8 key-value pairs; 16 kinds; T=64"


def mqar_baseline(seq_len: int, pairs: int, values: int) -> float:
    """The memoryless cross-entropy ``N log V / T`` (nats per step)."""
    return pairs * math.log(values) / seq_len


def _query_accuracy(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    at_query = labels > 0
    hits = (jnp.argmax(logits, axis=-1) == labels) & at_query
    return {"recall_accuracy": jnp.sum(hits) / jnp.maximum(jnp.sum(at_query), 1)}


def mqar(
    seq_len: int | None = None, *, pairs: int = 8, keys: int = 16, values: int = 16
) -> Task:
    """MQAR with ``pairs`` key-value pairs, ``keys`` key kinds and ``values`` value kinds.

    Defaults: ``T = 64``, ``N = 8``, ``K = V = 16``; needs ``K >= N`` (distinct keys) and
    ``T >= 3 N``. Metrics add ``recall_accuracy``: the accuracy at the ``N`` queries.
    """
    pairs = check_int("mqar", "pairs", pairs, 1)
    keys = check_int("mqar", "keys", keys, pairs, "the keys of a sequence are distinct")
    values = check_int("mqar", "values", values, 2)
    T = check_int("mqar", "seq_len", 64 if seq_len is None else seq_len, 3 * pairs,
                  f"{pairs} pairs take {2 * pairs} steps, then {pairs} queries")
    span = T - 2 * pairs
    blank = 2 * keys + values

    def generate(key, batch_size):
        k_key, k_val, k_pos, k_ord = jax.random.split(key, 4)
        key_ids = jnp.argsort(jax.random.uniform(k_key, (batch_size, keys)), axis=1)[:, :pairs]
        val_ids = jax.random.randint(k_val, (batch_size, pairs), 0, values, jnp.int32)
        kv = jnp.stack([key_ids, keys + val_ids], axis=-1).reshape(batch_size, 2 * pairs)
        # the pairs are queried in a random order, at sorted random positions
        order = jnp.argsort(jax.random.uniform(k_ord, (batch_size, pairs)), axis=1)
        asked = jnp.take_along_axis(key_ids, order, axis=1)
        answer = jnp.take_along_axis(val_ids, order, axis=1) + 1
        hit = jnp.arange(span)[None, :, None] == scatter_positions(
            k_pos, batch_size, span, pairs)[:, None, :]  # (B, span, N)
        any_hit = jnp.any(hit, axis=-1)
        q_tok = jnp.where(any_hit, jnp.sum(jnp.where(hit, asked[:, None, :], 0), -1)
                          + keys + values, blank)
        q_lab = jnp.sum(jnp.where(hit, answer[:, None, :], 0), axis=-1)
        x = jax.nn.one_hot(jnp.concatenate([kv, q_tok], axis=1).astype(jnp.int32), blank + 1,
                           dtype=jnp.float32)
        y = jnp.concatenate([jnp.zeros((batch_size, 2 * pairs), jnp.int32), q_lab], axis=1)
        return x, y.astype(jnp.int32)

    return synthetic_task(
        generate, name="mqar", description=mqar_description, input_dim=blank + 1,
        output_dim=values + 1, seq_len=T, readout="all", loss_kind="xent",
        baseline=mqar_baseline(T, pairs, values),
        baseline_note=f"analytic: memoryless cross-entropy N log V / T = {pairs} log {values} / "
        f"{T} (blank, then uniform over the {values} values at the {pairs} queries)",
        options={"pairs": pairs, "keys": keys, "values": values},
        metric_fn=_query_accuracy,
    )
