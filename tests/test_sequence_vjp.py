"""The hand-written sequence backward passes (LSTM, GRU) against autodiff, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatezoo as gz
from gatezoo.models.gru_scan import gru_sequence
from gatezoo.models.lstm_scan import lstm_sequence


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _autodiff_sequence(U, W, b, xs, c0, h0):
    """Reference: a plain scan of the textbook LSTM step, differentiated by JAX."""
    n = h0.shape[-1]

    def step(carry, x):
        c, h = carry
        a = x @ U + h @ W + (0.0 if b is None else b)
        i, f, o = (jax.nn.sigmoid(a[:, k * n : (k + 1) * n]) for k in range(3))
        c = f * c + i * jnp.tanh(a[:, 3 * n :])
        h = o * jnp.tanh(c)
        return (c, h), (h, c)

    return jax.lax.scan(step, (c0, h0), xs)[1]


@pytest.mark.parametrize("use_bias", [True, False])
def test_vjp_equals_autodiff_of_the_scan(use_bias, x64):
    T, B, D, n = 6, 3, 2, 4
    k = jax.random.split(jax.random.key(0), 8)
    U, W = jax.random.normal(k[0], (D, 4 * n)), jax.random.normal(k[1], (n, 4 * n))
    b = jax.random.normal(k[2], (4 * n,)) if use_bias else None
    xs = jax.random.normal(k[3], (T, B, D))
    c0, h0 = jax.random.normal(k[4], (B, n)), jax.random.normal(k[5], (B, n))
    wh, wc = jax.random.normal(k[6], (T, B, n)), jax.random.normal(k[7], (T, B, n))

    def loss(f, *args):  # both outputs and every argument get a non-trivial cotangent
        hs, cs = f(*args)
        return jnp.sum(jnp.sin(hs) * wh) + jnp.sum(cs**2 * wc)

    args = (U, W, b, xs, c0, h0)
    out = lstm_sequence(*args)
    ref = _autodiff_sequence(*args)
    for a, r in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-13)
    got = jax.grad(lambda *a: loss(lstm_sequence, *a), argnums=range(6))(*args)
    want = jax.grad(lambda *a: loss(_autodiff_sequence, *a), argnums=range(6))(*args)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
        else:
            assert _rel(g, w) <= 1e-12


def _autodiff_gru(U, W_zr, W, b, xs, h0):
    n = h0.shape[-1]

    def step(h, x):
        a = x @ U + (0.0 if b is None else b)
        z = jax.nn.sigmoid(a[:, :n] + h @ W_zr[:, :n])
        r = jax.nn.sigmoid(a[:, n : 2 * n] + h @ W_zr[:, n:])
        g = jnp.tanh(a[:, 2 * n :] + (r * h) @ W)
        h = (1 - z) * h + z * g
        return h, h

    return jax.lax.scan(step, h0, xs)[1]


@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_vjp_equals_autodiff_of_the_scan(use_bias, x64):
    T, B, D, n = 6, 3, 2, 4
    k = jax.random.split(jax.random.key(1), 7)
    U, W_zr = jax.random.normal(k[0], (D, 3 * n)), jax.random.normal(k[1], (n, 2 * n))
    W = jax.random.normal(k[2], (n, n))
    b = jax.random.normal(k[3], (3 * n,)) if use_bias else None
    xs, h0 = jax.random.normal(k[4], (T, B, D)), jax.random.normal(k[5], (B, n))
    wh = jax.random.normal(k[6], (T, B, n))
    args = (U, W_zr, W, b, xs, h0)
    np.testing.assert_allclose(gru_sequence(*args), _autodiff_gru(*args), rtol=1e-13)
    got = jax.grad(lambda *a: jnp.sum(jnp.sin(gru_sequence(*a)) * wh), argnums=range(6))(*args)
    want = jax.grad(lambda *a: jnp.sum(jnp.sin(_autodiff_gru(*a)) * wh), argnums=range(6))(*args)
    for g, w in zip(got, want, strict=True):
        assert (g is None) if w is None else _rel(g, w) <= 1e-12


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("readout", ["last", "all"])
def test_sequence_model_fast_path_matches_the_generic_path(name, readout, x64):
    """eps=1 takes the generic autodiff path with the same values and derivatives."""
    cell = gz.make_cell(name, 3, 5, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    model = gz.SequenceModel(cell, 2, readout=readout, rngs=nnx.Rngs(1))
    xs = jax.random.normal(jax.random.key(2), (4, 7, 3), jnp.float64)
    c0 = jax.tree_util.tree_map(
        lambda c: jax.random.normal(jax.random.key(3), c.shape, c.dtype),
        cell.initialize_carry((4, 3)),
    )
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p, carry0, eps):
        m = nnx.merge(graphdef, p)
        ys, carries = m.unroll_states(xs, eps=eps, carry0=carry0)
        out = m.read(ys[-1] if readout == "last" else ys)
        last_c = jax.tree_util.tree_leaves(carries)[0][2]
        return jnp.sum(out**2) + jnp.sum(jnp.cos(last_c))

    assert "custom_vjp_call" in str(jax.make_jaxpr(lambda p: loss(p, c0, None))(params))
    assert "custom_vjp_call" not in str(jax.make_jaxpr(lambda p: loss(p, c0, 1.0))(params))
    fast = jax.grad(lambda p, c: loss(p, c, None), argnums=(0, 1))(params, c0)
    slow = jax.grad(lambda p, c: loss(p, c, 1.0), argnums=(0, 1))(params, c0)
    for g, w in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(slow), strict=True):
        assert _rel(g, w) <= 1e-12
    np.testing.assert_allclose(loss(params, c0, None), loss(params, c0, 1.0), rtol=1e-13)
