r"""The copy-memory task (Arjovsky, Shah & Bengio 2016, "Unitary evolution RNNs", §4.1).

Symbols: 0 = blank, 1..8 = the categories, 9 = the delimiter. For a delay ``T`` the sequence has
``T + 20`` steps::

    input : s_1 .. s_10 | blank x (T - 1) | delimiter | blank x 10
    target: blank x (T + 10)                          | s_1 .. s_10

Inputs are one-hot over the 10 symbols; the model emits logits over 9 classes (blank + 8
categories) at every step, scored by the per-step cross-entropy averaged over all ``T + 20``
steps. A memoryless strategy (blank until the end, then uniform over the 8 categories) scores
:math:`10 \log 8 / (T + 20)`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gatezoo.tasks.options import check_int
from gatezoo.tasks.protocol import Task
from gatezoo.tasks.synthetic import synthetic_task

__all__ = ["copy", "copy_baseline", "COPY_LENGTH", "CATEGORIES", "BLANK", "DELIMITER"]

COPY_LENGTH = 10
CATEGORIES = 8
BLANK = 0
DELIMITER = CATEGORIES + 1
copy_description = "reproduce 10 symbols (8 kinds) after a delay T + delimiter; length T+20; T=10"


def copy_baseline(delay: int) -> float:
    """The memoryless cross-entropy ``10 log 8 / (T + 20)`` (nats per step)."""
    return COPY_LENGTH * math.log(CATEGORIES) / (delay + 2 * COPY_LENGTH)


def _recall_accuracy(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    hits = jnp.argmax(logits[:, -COPY_LENGTH:], axis=-1) == labels[:, -COPY_LENGTH:]
    return {"copy_accuracy": jnp.mean(hits.astype(jnp.float32))}


def copy(seq_len: int | None = None) -> Task:
    """The copy task with delay ``T = seq_len`` (default 10); ``task.seq_len`` is ``T + 20``.

    ``seq_len`` here is the paper's T, the delay, not the sequence length. Metrics add
    ``copy_accuracy``: the accuracy on the 10 recalled steps alone.
    """
    delay = check_int("copy", "seq_len (the delay T)", 10 if seq_len is None else seq_len, 1)
    length = delay + 2 * COPY_LENGTH

    def generate(key, batch_size):
        symbols = jax.random.randint(key, (batch_size, COPY_LENGTH), 1, CATEGORIES + 1)
        blanks = jnp.full((batch_size, delay - 1), BLANK, jnp.int32)
        delimiter = jnp.full((batch_size, 1), DELIMITER, jnp.int32)
        tail = jnp.full((batch_size, COPY_LENGTH), BLANK, jnp.int32)
        tokens = jnp.concatenate([symbols, blanks, delimiter, tail], axis=1)
        lead = jnp.full((batch_size, delay + COPY_LENGTH), BLANK, jnp.int32)
        y = jnp.concatenate([lead, symbols.astype(jnp.int32)], axis=1)
        x = jax.nn.one_hot(tokens, CATEGORIES + 2, dtype=jnp.float32)
        return x, y

    return synthetic_task(
        generate, name="copy", description=copy_description, input_dim=CATEGORIES + 2,
        output_dim=CATEGORIES + 1, seq_len=length, readout="all", loss_kind="xent",
        baseline=copy_baseline(delay),
        baseline_note="analytic: memoryless cross-entropy 10 log 8 / (T + 20) (blank, then "
        "uniform over 8 categories)",
        options={"delay": delay}, metric_fn=_recall_accuracy,
    )
