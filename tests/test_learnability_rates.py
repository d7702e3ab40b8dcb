"""The follow-up's effective learning rate (gatezoo.instruments.learnability) against brute-force
loops, jax.jacrev through the unrolled cell and optax's own Adam step, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gatezoo as gz
from gatezoo.instruments import learnability as lr_mod

LAGS = (1, 2, 3, 5)


def brute_diagonal_transport(leak, rdiag, lags):
    L, (T, H) = len(lags), leak.shape
    out = np.full((L, T, H), np.nan)
    for i, ell in enumerate(lags):
        for t in range(ell, T):
            window = range(t - ell + 1, t + 1)
            prod = np.prod([leak[j] for j in window], axis=0)
            corr = 0 if rdiag is None else np.sum([rdiag[j] / leak[j] for j in window], axis=0)
            out[i, t] = prod * (1 + corr)
    return out


def test_diagonal_transport_is_the_windowed_product_with_its_first_order_correction(x64):
    rng = np.random.default_rng(0)
    leak = rng.uniform(0.3, 0.99, (9, 4))
    rdiag = rng.normal(0, 0.05, (9, 4))
    for r in (None, rdiag):
        got = np.asarray(lr_mod.diagonal_transport(jnp.asarray(leak),
                                                   None if r is None else jnp.asarray(r), LAGS))
        np.testing.assert_allclose(got, brute_diagonal_transport(leak, r, LAGS), rtol=1e-12)


def gru_steps(hidden=5, T=8, seed=0):
    cell = gz.GRU(3, hidden, rngs=nnx.Rngs(seed), param_dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(seed + 1), (T, 3), jnp.float64)
    h0 = jax.random.normal(jax.random.key(seed + 2), (hidden,), jnp.float64) * 0.5

    def step(h, x):
        return cell(h, x)[0]

    hs = [h0]
    for t in range(T):
        hs.append(step(hs[-1], xs[t]))
    return step, xs, hs


def test_exact_diagonal_transport_is_the_diagonal_of_d_h_t_d_h_t_minus_ell(x64):
    step, xs, hs = gru_steps()
    T = xs.shape[0]
    # J[t] maps the state after step t-1 (hs[t]) to the state after step t (hs[t+1])
    Js = jnp.stack([jax.jacrev(step)(hs[t], xs[t]) for t in range(T)])
    t = T - 1
    got = lr_mod.exact_diagonal_transport(Js, t, LAGS)
    for i, ell in enumerate(LAGS):
        def unrolled(h, ell=ell):
            for j in range(t - ell + 1, t + 1):
                h = step(h, xs[j])
            return h

        full = jax.jacrev(unrolled)(hs[t - ell + 1])
        np.testing.assert_allclose(got[i], jnp.diagonal(full), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match=r"lags must lie in 1..t\+1 = 3"):
        lr_mod.exact_diagonal_transport(Js, 2, [4])


def test_the_first_order_diagonal_misses_only_second_order_terms(x64):
    """Leaky cell h' = (1 - a) h + a tanh(h W + x U): leak = 1 - a, rdiag = a (1 - phi^2) W_qq.
    With W scaled by s the first-order Gamma differs from the exact diagonal by O(s^2)."""
    a, H, T, ell = 0.3, 4, 10, 5
    rng = np.random.default_rng(1)
    W0, U = rng.normal(0, 1, (H, H)), rng.normal(0, 1, (2, H))
    xs = rng.normal(0, 1, (T, 2))
    errors = []
    for s in (1e-2, 5e-3, 2.5e-3):
        W = s * W0

        def step(h, x, W=W):
            return (1 - a) * h + a * jnp.tanh(h @ W + x @ U)

        hs = [jnp.zeros(H)]
        for t in range(T):
            hs.append(step(hs[-1], xs[t]))
        Js = jnp.stack([jax.jacrev(step)(hs[t], xs[t]) for t in range(T)])
        phi = jnp.stack([jnp.tanh(hs[t] @ W + xs[t] @ U) for t in range(T)])
        leak = jnp.full((T, H), 1 - a)
        rdiag = a * (1 - phi**2) * jnp.diag(W)
        first = lr_mod.diagonal_transport(leak, rdiag, [ell])[0, T - 1]
        exact = lr_mod.exact_diagonal_transport(Js, T - 1, [ell])[0]
        np.testing.assert_allclose(jnp.diagonal(Js, axis1=-2, axis2=-1), leak + rdiag,
                                   rtol=1e-12)
        errors.append(float(jnp.max(jnp.abs(first - exact))))
    slopes = np.diff(np.log(errors)) / np.diff(np.log([1e-2, 5e-3, 2.5e-3]))
    assert np.all(np.abs(slopes - 2) < 0.1), slopes


def test_adams_rate_matrix_is_optaxs_own_step(x64):
    params = {"W": jnp.asarray(np.random.default_rng(2).normal(size=(3, 3)))}
    opt = optax.adam(1e-2)
    state = opt.init(params)
    for i in range(4):
        grads = {"W": jnp.sin(params["W"] * (i + 1))}
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    adam = state[0]
    lam = lr_mod.adam_rate_matrix(adam.nu["W"], adam.count, 1e-2)
    m_hat = adam.mu["W"] / (1 - 0.9 ** adam.count)
    np.testing.assert_allclose(lam * m_hat, -updates["W"], rtol=1e-12)


def test_adaptive_rate_is_the_rayleigh_quotient_on_the_presynaptic_state(x64):
    rng = np.random.default_rng(3)
    lam, h = rng.uniform(0.1, 2, (4, 4)), rng.normal(size=(6, 4))
    h[2] = 0
    got = np.asarray(lr_mod.adaptive_rate(jnp.asarray(lam), jnp.asarray(h)))
    for b in range(6):
        for q in range(4):
            want = (lam[:, q].mean() if not h[b].any() else
                    sum(lam[j, q] * h[b, j] ** 2 for j in range(4)) / np.sum(h[b] ** 2))
            assert got[b, q] == pytest.approx(want, rel=1e-12)
    assert np.all(np.asarray(lr_mod.adaptive_rate(jnp.asarray(0.1), jnp.asarray(h))) == 0.1)


def test_envelope_and_matched_statistic_against_loops(x64):
    rng = np.random.default_rng(4)
    B, T, H, K = 3, 9, 4, 2
    leak = rng.uniform(0.5, 0.99, (B, T, H))
    rdiag = rng.normal(0, 0.05, (B, T, H))
    rate = rng.uniform(0.1, 1, (B, T, H))
    delta, v = rng.normal(size=(B, T, H)), rng.normal(size=(K, B, T, H))
    gamma = lr_mod.diagonal_transport(jnp.asarray(leak), jnp.asarray(rdiag), LAGS)
    mu = lr_mod.effective_rate(jnp.asarray(rate), gamma, LAGS)
    f = np.asarray(lr_mod.envelope(mu, LAGS))
    psi = np.asarray(lr_mod.matched_statistic(mu, jnp.asarray(delta), jnp.asarray(v), LAGS))
    for i, ell in enumerate(LAGS):
        mus = {(b, t): rate[b, t - ell] * brute_diagonal_transport(leak[b], rdiag[b], [ell])[0, t]
               for b in range(B) for t in range(ell, T)}
        assert f[i] == pytest.approx(np.mean([np.abs(m).sum() for m in mus.values()]), rel=1e-12)
        for b in range(B):
            want = np.mean([np.mean([np.sum(mus[b, t] * delta[b, t] * v[k, b, t - ell])
                                     for t in range(ell, T)]) for k in range(K)])
            assert psi[i, b] == pytest.approx(want, rel=1e-10)


def test_compiled_and_eager_agree_and_a_zero_leak_gives_a_finite_window():
    # XLA's CPU exp of NaN is 0: undefined windows must never pass through exp as NaN
    rng = np.random.default_rng(5)
    leak = rng.uniform(0.05, 0.96, (6, 10, 4)).astype(np.float32)
    leak[:, 3] = 0.0  # a step that forgets everything (sLSTM from its empty state)
    rdiag = rng.normal(0, 0.05, leak.shape).astype(np.float32)

    def f(leak, rdiag):
        gamma = lr_mod.diagonal_transport(leak, rdiag, LAGS)
        return gamma, lr_mod.envelope(gamma, LAGS)

    (g, e), (gj, ej) = f(leak, rdiag), jax.jit(f)(leak, rdiag)
    np.testing.assert_allclose(np.asarray(gj), np.asarray(g), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(ej), np.asarray(e), rtol=1e-5)
    mask = lr_mod.defined_windows(10, LAGS)[:, None, :, None]
    assert np.all(np.isfinite(np.asarray(gj))[np.broadcast_to(mask, gj.shape)])
    assert np.all(np.isnan(np.asarray(gj))[~np.broadcast_to(mask, gj.shape)])
    # through the zero leak the first-order term is rdiag_j times the other leaks
    t, ell = 4, 2
    want = leak[:, 4] * 0.0 + rdiag[:, 3] * leak[:, 4]
    np.testing.assert_allclose(np.asarray(g)[LAGS.index(ell), :, t], want, rtol=1e-4,
                               atol=1e-9)
