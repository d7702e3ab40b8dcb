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


def _autodiff_sequence(U, W, b, xs, c0, h0, offsets=None):
    """Reference: a plain scan of the textbook LSTM step, differentiated by JAX.

    With ``offsets = (dc, dh)`` the new carry is shifted after the step: ``h`` reads the
    unshifted cell state, the next step reads the shifted carry.
    """
    n = h0.shape[-1]

    def step(carry, inp):
        (c, h), off = carry, inp[1]
        a = inp[0] @ U + h @ W + (0.0 if b is None else b)
        i, f, o = (jax.nn.sigmoid(a[:, k * n : (k + 1) * n]) for k in range(3))
        c = f * c + i * jnp.tanh(a[:, 3 * n :])
        h = o * jnp.tanh(c)
        if off is not None:
            c, h = c + off[0], h + off[1]
        return (c, h), (h, c)

    return jax.lax.scan(step, (c0, h0), (xs, offsets))[1]


@pytest.mark.slow
@pytest.mark.parametrize("with_offsets", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_vjp_equals_autodiff_of_the_scan(use_bias, with_offsets, x64):
    T, B, D, n = 6, 3, 2, 4
    k = jax.random.split(jax.random.key(0), 10)
    U, W = jax.random.normal(k[0], (D, 4 * n)), jax.random.normal(k[1], (n, 4 * n))
    b = jax.random.normal(k[2], (4 * n,)) if use_bias else None
    xs = jax.random.normal(k[3], (T, B, D))
    c0, h0 = jax.random.normal(k[4], (B, n)), jax.random.normal(k[5], (B, n))
    wh, wc = jax.random.normal(k[6], (T, B, n)), jax.random.normal(k[7], (T, B, n))
    # non-zero offsets, so that reading the shifted for the unshifted cell state would show
    offsets = (
        (0.5 * jax.random.normal(k[8], (T, B, n)), 0.5 * jax.random.normal(k[9], (T, B, n)))
        if with_offsets
        else None
    )

    def loss(f, *args):  # both outputs and every argument get a non-trivial cotangent
        hs, cs = f(*args)
        return jnp.sum(jnp.sin(hs) * wh) + jnp.sum(cs**2 * wc)

    args = (U, W, b, xs, c0, h0, offsets)
    out = lstm_sequence(*args)
    ref = _autodiff_sequence(*args)
    for a, r in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-13)
    got = jax.grad(lambda *a: loss(lstm_sequence, *a), argnums=range(7))(*args)
    want = jax.grad(lambda *a: loss(_autodiff_sequence, *a), argnums=range(7))(*args)
    got, want = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    assert len(got) == len(want) == 5 + use_bias + 2 * with_offsets
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) <= 1e-12


def _autodiff_gru(U, W_zr, W, b, xs, h0, offsets=None):
    n = h0.shape[-1]

    def step(h, inp):
        x, off = inp
        a = x @ U + (0.0 if b is None else b)
        z = jax.nn.sigmoid(a[:, :n] + h @ W_zr[:, :n])
        r = jax.nn.sigmoid(a[:, n : 2 * n] + h @ W_zr[:, n:])
        g = jnp.tanh(a[:, 2 * n :] + (r * h) @ W)
        h = (1 - z) * h + z * g
        h = h if off is None else h + off
        return h, h

    return jax.lax.scan(step, h0, (xs, offsets))[1]


@pytest.mark.slow
@pytest.mark.parametrize("with_offsets", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_vjp_equals_autodiff_of_the_scan(use_bias, with_offsets, x64):
    T, B, D, n = 6, 3, 2, 4
    k = jax.random.split(jax.random.key(1), 8)
    U, W_zr = jax.random.normal(k[0], (D, 3 * n)), jax.random.normal(k[1], (n, 2 * n))
    W = jax.random.normal(k[2], (n, n))
    b = jax.random.normal(k[3], (3 * n,)) if use_bias else None
    xs, h0 = jax.random.normal(k[4], (T, B, D)), jax.random.normal(k[5], (B, n))
    wh = jax.random.normal(k[6], (T, B, n))
    offsets = 0.5 * jax.random.normal(k[7], (T, B, n)) if with_offsets else None
    args = (U, W_zr, W, b, xs, h0, offsets)
    np.testing.assert_allclose(gru_sequence(*args), _autodiff_gru(*args), rtol=1e-13)
    got = jax.grad(lambda *a: jnp.sum(jnp.sin(gru_sequence(*a)) * wh), argnums=range(7))(*args)
    want = jax.grad(lambda *a: jnp.sum(jnp.sin(_autodiff_gru(*a)) * wh), argnums=range(7))(*args)
    for g, w in zip(got, want, strict=True):
        assert (g is None) if w is None else _rel(g, w) <= 1e-12


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("readout", ["last", "all"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fast_path_with_offsets_matches_the_generic_path(name, readout, use_bias, x64):
    """With ``offsets`` the fast path gives the generic path's values, carries and gradients
    with respect to the parameters and the offsets (the adjoints ``dL/dh_t`` the trainer reads).
    """
    cell = gz.make_cell(name, 3, 5, use_bias=use_bias, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    model = gz.SequenceModel(cell, 2, readout=readout, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model, nnx.Param)
    # random biases too: the cells initialise them at zero, which would hide their gradient
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef,
        [0.6 * jax.random.normal(kk, p.shape, p.dtype) for kk, p in zip(keys, leaves, strict=True)],
    )
    xs = jax.random.normal(jax.random.key(2), (4, 7, 3), jnp.float64)
    _, carries = model.unroll_states(xs)
    off_keys = iter(jax.random.split(jax.random.key(5), 2))
    offsets = jax.tree_util.tree_map(
        lambda c: 0.4 * jax.random.normal(next(off_keys), c.shape, c.dtype), carries
    )
    n_carry = len(jax.tree_util.tree_leaves(offsets))
    assert n_carry == (2 if name == "lstm" else 1)

    def loss(p, off, eps):
        m = nnx.merge(graphdef, p)
        ys, carries = m.unroll_states(xs, eps=eps, offsets=off)
        out = m.read(ys[-1] if readout == "last" else ys)
        weights = jnp.arange(1, n_carry + 1, dtype=jnp.float64)
        tail = sum(
            w * jnp.sum(jnp.cos(c[3:]))
            for w, c in zip(weights, jax.tree_util.tree_leaves(carries), strict=True)
        )
        return jnp.sum(out**2) + tail, (ys, carries)

    fast_jaxpr = str(jax.make_jaxpr(lambda p, o: loss(p, o, None))(params, offsets))
    assert "custom_vjp_call" in fast_jaxpr
    assert "custom_vjp_call" not in str(
        jax.make_jaxpr(lambda p, o: loss(p, o, 1.0))(params, offsets)
    )
    grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    (v_fast, aux_fast), g_fast = grad(params, offsets, None)
    (v_slow, aux_slow), g_slow = grad(params, offsets, 1.0)
    np.testing.assert_allclose(v_fast, v_slow, rtol=1e-13)
    for a, b in zip(
        jax.tree_util.tree_leaves(aux_fast), jax.tree_util.tree_leaves(aux_slow), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    fast, slow = jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_slow)
    assert len(fast) == len(slow) == len(jax.tree_util.tree_leaves(params)) + n_carry
    for g, w in zip(fast, slow, strict=True):
        assert g.shape == w.shape
        assert _rel(g, w) <= 1e-12
    # the offsets' gradient is the adjoint of every stacked carry, including the last step's
    for g in jax.tree_util.tree_leaves(g_fast[1]):
        assert float(jnp.min(jnp.max(jnp.abs(g), axis=(1, 2)))) > 0
