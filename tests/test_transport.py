"""The transport instrument's predictors, fits and attribution against an independent
computation: ``jax.grad`` through the unrolled model, one lag at a time, gates frozen with
``stop_gradient`` (float64, 1e-10), on models with heterogeneous gates (a third of the neurons
slow, the rest fast), where the neuron mean of the gate products and the adjoint-weighted
retention visibly disagree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import MGU, mse

import gatezoo as gz
from gatezoo.metric_schema import metric_name

T, B, H, D = 10, 4, 6, 2
GRID = (1, 2, 4, 8)
SLOW = H // 3


def _half_slow(kind):
    """A model whose first third of neurons keep ~97 % of their state per step, the rest ~8 %."""
    bias = jnp.concatenate([jnp.full(SLOW, -3.5), jnp.full(H - SLOW, 2.5)])
    if kind == "mgu":  # a user's cell, written outside the package (tests/helpers.py)
        cell = MGU(D, H, rngs=nnx.Rngs(3), param_dtype=jnp.float64, scale=0.6)
        cell.b_f[...] = bias
    elif kind == "gru":
        cell = gz.make_cell("gru", D, H, rngs=nnx.Rngs(3), param_dtype=jnp.float64)
        cell.b_z[...] = bias
    else:
        cell = gz.make_cell("lstm", D, H, rngs=nnx.Rngs(3), param_dtype=jnp.float64)
        cell.b_f[...] = -bias  # the LSTM retains f = 1 - alpha
    return gz.SequenceModel(cell, 1, rngs=nnx.Rngs(4))


def _flat(carry):
    return jnp.concatenate([jnp.reshape(c, (B, -1)) for c in jax.tree_util.tree_leaves(carry)],
                           axis=-1)


def _independent(model, xs, ys):
    """Per example and lag 1..T-1: norms of the propagated and gate-frozen signals and of the
    adjoint-weighted retention, and the gate trace, from Python loops and jax.grad."""
    cell = model.cell
    x_t = [xs[:, t] for t in range(T)]
    states = [cell.initialize_carry((B, D))]
    alphas = []
    for t in range(T):
        alphas.append(cell.time_scale(states[-1], x_t[t]))
        states.append(cell(states[-1], x_t[t])[0])
    last = states[-1]
    h_of = (lambda c: c[1]) if isinstance(last, tuple) else (lambda c: c)
    loss = lambda c: mse(h_of(c) @ model.W_o[...] + model.b_o[...], ys)  # noqa: E731
    lam = jax.grad(loss)(last)

    def pulled(ell, frozen):
        def f(u):
            for t in range(T - ell, T):
                gate = jax.lax.stop_gradient(u) if frozen else u
                u = cell.split_call(u, x_t[t], gate)[0]
            return sum(jnp.sum(a * b) for a, b in zip(jax.tree_util.tree_leaves(u),
                                                      jax.tree_util.tree_leaves(lam),
                                                      strict=True))

        return np.linalg.norm(_flat(jax.grad(f)(states[T - ell])), axis=-1)

    lam_flat = np.asarray(_flat(lam))
    lam_norm = np.linalg.norm(lam_flat, axis=-1)
    if isinstance(last, tuple):  # LSTM: dL/dc_T with h_T = o_T tanh(c_T) read through c_T
        c, h = (np.asarray(a) for a in last)
        dc, dh = (np.asarray(a) for a in lam)
        lam_flat = dc + dh * (h / np.tanh(c)) * (1 - np.tanh(c) ** 2)
    alpha = np.stack([np.asarray(a) for a in alphas])  # (T, B, H)
    out = {"last": lam_norm, "alpha": alpha}
    out["propagated"] = np.stack([pulled(ell, False) for ell in range(1, T)])
    out["frozen"] = np.stack([pulled(ell, True) for ell in range(1, T)])
    out["weighted"] = np.stack([
        np.linalg.norm(lam_flat[:, :H] * np.prod(1 - alpha[T - ell:], axis=0), axis=-1)
        for ell in range(1, T)])
    for tag, f in (("retention", 1 - alpha), ("candidate", alpha)):
        out[tag] = np.stack([np.mean(np.prod(f[T - ell:], axis=0), axis=-1)
                             for ell in range(1, T)])
    return out


def _fit(pred, target):
    logp, logs = np.log(pred).ravel(), np.log(target).ravel()
    lo, hi = np.quantile(logp, [0.01, 0.99])
    keep = (logp >= lo) & (logp <= hi)
    return np.polyfit(logp[keep], logs[keep], 1)[0], np.corrcoef(logp[keep], logs[keep])[0, 1] ** 2


@pytest.fixture(params=["mgu", "gru", "lstm"])
def measured(request, x64):
    model = _half_slow(request.param)
    k1, k2 = jax.random.split(jax.random.key(0))
    xs = jax.random.normal(k1, (B, T, D), jnp.float64)
    ys = jax.random.normal(k2, (B, 1), jnp.float64)
    att = gz.attach(model, lambda m, x, y: mse(m(x), y), ["transport", "lags"])
    params = nnx.state(model, nnx.Param)
    metrics = att.update(params, att.init(params), xs, ys, step=0).metrics
    return request.param, metrics, _independent(model, xs, ys)


def test_predictors_fits_and_attribution_equal_unrolled_autodiff(measured):
    kind, m, ind = measured
    name = lambda q: metric_name("transport", None, q)  # noqa: E731
    rel = {"frozen": ind["frozen"] / ind["last"], "weighted": ind["weighted"] / ind["last"],
           "propagated": ind["propagated"] / ind["last"], "retention": ind["retention"],
           "candidate": ind["candidate"]}
    for ell in GRID:
        for tag, v in rel.items():
            np.testing.assert_allclose(m[name(f"{tag}@{ell}")], np.median(v[ell - 1]),
                                       rtol=1e-10, err_msg=f"{kind} {tag}@{ell}")
        # the loss has only a last-step term: the propagated signal is the training one
        np.testing.assert_allclose(np.median(ind["propagated"][ell - 1]) / np.median(ind["last"]),
                                   m[metric_name("lags", None, f"ratio@{ell}")], rtol=1e-10)
    for tag in ("frozen", "weighted", "retention", "candidate"):
        s, r2 = _fit(rel[tag], rel["propagated"])
        np.testing.assert_allclose(m[name(f"{tag}_s")], s, rtol=1e-9, err_msg=f"{kind} {tag}")
        np.testing.assert_allclose(m[name(f"{tag}_r2")], r2, rtol=1e-9, err_msg=f"{kind} {tag}")
    logs = {k: np.log(ind[k]) for k in ("weighted", "frozen", "propagated")}
    parts = {"diagonal": logs["weighted"] - np.log(ind["last"]),
             "mixing": logs["frozen"] - logs["weighted"],
             "gate": logs["propagated"] - logs["frozen"]}
    for ell in GRID:
        for tag, v in parts.items():
            np.testing.assert_allclose(m[name(f"{tag}_part@{ell}")], np.mean(v[ell - 1]),
                                       rtol=1e-10, atol=1e-12)
    total = sum(np.sum(np.mean(v, axis=1)) for v in parts.values())
    shares = [m[name(f"{tag}_share")] for tag in parts]
    for tag, got in zip(parts, shares, strict=True):
        np.testing.assert_allclose(got, np.sum(np.mean(parts[tag], axis=1)) / total, rtol=1e-9)
        np.testing.assert_allclose(m[name(f"{tag}_gain")], np.mean(np.mean(parts[tag], axis=1)),
                                   rtol=1e-9)
    np.testing.assert_allclose(sum(shares), 1.0, rtol=1e-12)


def test_heterogeneous_gates_separate_the_neuron_mean_from_the_transport(measured):
    """A third of the neurons slow: the neuron mean of prod(1 - alpha) falls with the fast ones,
    while the adjoint-weighted retention follows the slow ones and the gate-frozen transport."""
    kind, m, ind = measured
    name = lambda q: metric_name("transport", None, q)  # noqa: E731
    mean8, weighted8 = m[name("retention@8")], m[name("weighted@8")]
    frozen8 = m[name("frozen@8")]
    assert abs(np.log(weighted8 / mean8)) > np.log(1.3), (kind, mean8, weighted8)
    assert abs(np.log(frozen8 / mean8)) > abs(np.log(frozen8 / weighted8)), kind
    assert ind["alpha"][:, :, :SLOW].mean() < 0.1 and ind["alpha"][:, :, SLOW:].mean() > 0.8


def test_a_padded_batch_counts_lags_from_each_sequence_end_and_ignores_the_padding():
    """Variable-length adding: what the padding holds changes no transport metric, and a batch
    of one length-L sequence measures the same as that sequence alone, unpadded."""
    task = gz.make_task("adding", 8, min_len=3)
    xs, ys = task.sample(jax.random.key(7), 6)
    model = gz.SequenceModel(gz.VectorGate(task.input_dim, H, rngs=nnx.Rngs(0)), 1,
                             rngs=nnx.Rngs(1))
    att = gz.attach(model, task, ["transport"])
    params = nnx.state(model, nnx.Param)
    padding = jnp.arange(8)[None, :, None] >= ys.lengths[:, None, None]
    noisy = jnp.where(padding, jax.random.normal(jax.random.key(8), xs.shape), xs)
    run = jax.jit(lambda x, y: att.update(params, att.init(params), x, y, step=0).metrics)
    clean, dirty = run(xs, ys), run(noisy, ys)
    for k, v in clean.items():
        np.testing.assert_allclose(dirty[k], v, rtol=1e-5, err_msg=k)
    assert np.isfinite(clean[metric_name("transport", None, "frozen_r2")])
    # one sequence of length L, padded to 8, against the same L steps alone
    b = int(np.argmin(np.asarray(ys.lengths)))
    L = int(ys.lengths[b])
    one = gz.tasks.Padded(ys.target[b:b + 1], ys.lengths[b:b + 1])
    short = run(xs[b:b + 1, :L], one)
    padded = run(xs[b:b + 1], one)
    for ell in (1, 2):
        for tag in ("frozen", "weighted", "propagated"):
            key = metric_name("transport", None, f"{tag}@{ell}")
            np.testing.assert_allclose(padded[key], short[key], rtol=1e-5, err_msg=key)
