"""Selective copying and MQAR: structure (numpy re-derivation), baselines, determinism, T = 4096."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gatezoo.tasks import make_task


def _draw(task, batch, seed=0, split="train"):
    x, y = jax.jit(task.sample, static_argnums=(1, 2))(jax.random.key(seed), batch, split)
    return np.asarray(x), np.asarray(y)


def _ce(task, x, y, recall):
    """Cross-entropy of the memoryless predictor: one-hot blank off ``recall``, uniform over
    classes 1..C on it."""
    C = task.output_dim
    logits = np.where(recall[..., None], np.r_[-1e9, np.zeros(C - 1)], np.r_[0.0, -1e9 *
                      np.ones(C - 1)])
    return float(task.loss(jnp.asarray(logits, jnp.float32), jnp.asarray(y)))


@pytest.mark.slow
def test_selective_copy_structure_and_baseline():
    M, K, T = 4, 5, 20
    task = make_task("selective-copy", T, tokens=M, vocab=K)
    assert (task.input_dim, task.output_dim, task.seq_len) == (K + 2, K + 1, T)
    x, y = _draw(task, 64)
    tok = x.argmax(-1)
    assert np.all(x.sum(-1) == 1)
    for b in range(64):
        body, tail = tok[b, : T - M], tok[b, T - M:]
        symbols = body[body > 0]
        assert len(symbols) == M and np.all(symbols <= K)  # M symbols, in order of appearance
        assert np.all(tail == K + 1)
        np.testing.assert_array_equal(y[b, T - M:], symbols)
        assert np.all(y[b, : T - M] == 0)
    # positions vary between sequences (the point of the task)
    assert len({tuple(np.flatnonzero(tok[b, : T - M])) for b in range(64)}) > 32
    assert task.baseline == pytest.approx(M * math.log(K) / T)
    assert _ce(task, x, y, tok == K + 1) == pytest.approx(task.baseline, rel=1e-5)
    perfect = jax.nn.one_hot(y, K + 1) * 50.0
    metrics = task.metrics(perfect, jnp.asarray(y))
    assert float(metrics["recall_accuracy"]) == 1.0 and float(metrics["baseline_ratio"]) < 1e-6


@pytest.mark.slow
def test_mqar_structure_and_baseline():
    N, K, V, T = 3, 5, 4, 15
    task = make_task("mqar", T, pairs=N, keys=K, values=V)
    assert (task.input_dim, task.output_dim) == (2 * K + V + 1, V + 1)
    x, y = _draw(task, 64)
    tok = x.argmax(-1)
    assert np.all(x.sum(-1) == 1)
    blank = 2 * K + V
    for b in range(64):
        kv = tok[b, : 2 * N].reshape(N, 2)
        keys, vals = kv[:, 0], kv[:, 1] - K
        assert np.all(keys < K) and len(set(keys)) == N and np.all((vals >= 0) & (vals < V))
        table = dict(zip(keys.tolist(), vals.tolist(), strict=True))
        rest = tok[b, 2 * N:]
        q = np.flatnonzero(rest != blank)
        assert len(q) == N
        asked = rest[q] - (K + V)
        assert sorted(asked.tolist()) == sorted(keys.tolist())  # each key asked once
        labels = y[b, 2 * N:]
        np.testing.assert_array_equal(labels[q], [table[k] + 1 for k in asked])
        assert np.all(np.delete(labels, q) == 0) and np.all(y[b, : 2 * N] == 0)
    assert task.baseline == pytest.approx(N * math.log(V) / T)
    is_query = (tok >= K + V) & (tok < blank)
    assert _ce(task, x, y, is_query) == pytest.approx(task.baseline, rel=1e-5)
    metrics = task.metrics(jax.nn.one_hot(y, V + 1) * 50.0, jnp.asarray(y))
    assert float(metrics["recall_accuracy"]) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["selective-copy", "mqar"])
def test_deterministic_from_the_key_and_long_sequences(name):
    task = make_task(name, 4096)
    assert task.seq_len == 4096
    x, y = _draw(task, 2, seed=3)
    x2, y2 = _draw(task, 2, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert x.shape == (2, 4096, task.input_dim) and y.shape == (2, 4096)
    xt, _ = _draw(task, 2, seed=3, split="test")
    assert not np.array_equal(x, xt)
    recalls = (y > 0).sum(axis=1)
    want = task.option("tokens") if name == "selective-copy" else task.option("pairs")
    assert np.all(recalls == want)


@pytest.mark.parametrize(
    "name, seq_len, options, match",
    [("selective-copy", 31, {}, "seq_len must be >= 32"),
     ("selective-copy", 40, {"vocab": 1}, "vocab must be >= 2"),
     ("mqar", 23, {}, "seq_len must be >= 24"),
     ("mqar", 64, {"keys": 4}, "keys must be >= 8"),
     ("mqar", 64, {"pairs": 0}, "pairs must be >= 1")],
)
def test_bad_options_are_one_line_errors(name, seq_len, options, match):
    with pytest.raises(ValueError, match=match) as err:
        make_task(name, seq_len, **options)
    assert "\n" not in str(err.value)
