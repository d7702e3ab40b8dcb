"""The learnability instrument on a user-style model against an independent computation:
closed-form Jacobians, Adam's rate read by hand from optax's state, the readout's error written
out, and brute-force loops over steps, lags and neurons (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gatezoo as gz
from gatezoo.instruments import window
from gatezoo.instruments.model_fns import model_fns

B, T, D, H = 3, 7, 2, 4
LAGS = (1, 2, 4)


def loss_fn(model, xs, ys):
    return jnp.mean((model(xs) - ys) ** 2)


def setup():
    cell = gz.make_cell("vector", D, H, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    model = gz.SequenceModel(cell, 1, readout="all", rngs=nnx.Rngs(1))
    xs = jax.random.normal(jax.random.key(2), (B, T, D), jnp.float64)
    ys = jax.random.normal(jax.random.key(3), (B, T, 1), jnp.float64)
    fns, params = model_fns(model, loss_fn)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    state = opt.init(params)
    grads = jax.grad(lambda p: fns.loss(p, xs, ys)[0])(params)
    _, state = opt.update(grads, state, params)
    return model, fns, params, xs, ys, state


def brute_force(model, xs, ys, state):
    cell = model.cell
    W_o = np.asarray(model.W_o[...])[:, 0]
    adam = state.inner_state[0]
    lr = 1e-2
    rates = [lr / (np.sqrt(np.asarray(adam.nu["cell"][k]) / (1 - 0.999 ** int(adam.count)))
                   + 1e-8) for k in ("W", "W_g")]
    lam = (rates[0] + rates[1]) / 2  # (fan_in, hidden)
    out = {}
    for b in range(B):
        hs, leak, rdiag = [np.zeros(H)], [], []
        for t in range(T):
            h, x = jnp.asarray(hs[-1]), xs[b, t]
            A, Bm = gz.jacobians.state_jacobians(cell, h, x)
            alpha = np.asarray(cell.time_scale(h, x))
            leak.append(1 - alpha)
            rdiag.append(np.diag(np.asarray(A + Bm)) - (1 - alpha))
            hs.append(np.asarray(cell(h, x)[0]))
        hs = np.stack(hs)  # hs[t] is the state before step t
        pred = hs[1:] @ W_o + float(model.b_o[...][0])
        direct = 2.0 / (B * T) * (pred - np.asarray(ys[b, :, 0]))[:, None] * W_o[None, :]
        for ell in LAGS:
            for t in range(ell, T):
                k, window_ = t - ell, range(t - ell + 1, t + 1)
                pre = hs[k]
                rate = (lam.mean(0) if not pre.any() else (pre**2) @ lam / np.sum(pre**2))
                gamma = np.prod([leak[j] for j in window_], 0) * (
                    1 + np.sum([rdiag[j] / leak[j] for j in window_], 0))
                out[b, t, ell] = (rate * gamma, direct[t])
    return out


def test_mu_envelope_and_the_direct_error_match_an_independent_computation(x64):
    model, fns, params, xs, ys, state = setup()
    ref = brute_force(model, xs, ys, state)
    tr = window._trace(fns, params, xs, ys, state)
    gamma = gz.instruments.learnability.diagonal_transport(tr.leak, tr.rdiag, LAGS)
    mu = gz.instruments.learnability.effective_rate(tr.rate, gamma, LAGS)
    f = gz.instruments.learnability.envelope(mu, LAGS)
    for i, ell in enumerate(LAGS):
        want = np.mean([np.abs(ref[b, t, ell][0]).sum() for b in range(B)
                        for t in range(ell, T)])
        np.testing.assert_allclose(f[i], want, rtol=1e-9)
        for b in range(B):
            for t in range(ell, T):
                np.testing.assert_allclose(mu[i, b, t], ref[b, t, ell][0], rtol=1e-9)
                np.testing.assert_allclose(tr.delta[b, t], ref[b, t, ell][1], rtol=1e-9,
                                           atol=1e-15)


def test_the_tangents_are_the_states_directional_derivatives(x64):
    model, fns, params, xs, ys, state = setup()
    key = jax.random.key(5)
    v = window._tangents(fns, params, xs, ys, key, 2)
    eps = 1e-6
    leaves, treedef = jax.tree_util.tree_flatten(params)
    for i, k in enumerate(jax.random.split(key, 2)):
        keys = jax.random.split(k, len(leaves))
        w = [jax.random.normal(kk, a.shape, a.dtype) for kk, a in zip(keys, leaves, strict=True)]
        norm = np.sqrt(sum(float(jnp.sum(a * a)) for a in w))
        shift = lambda s: jax.tree_util.tree_unflatten(  # noqa: E731
            treedef, [a + s * d / norm for a, d in zip(leaves, w, strict=True)])
        plus, minus = (fns.loss(shift(s), xs, ys)[1] for s in (eps, -eps))
        fd = (plus - minus) / (2 * eps)  # (T, B, H)
        np.testing.assert_allclose(v[i], np.swapaxes(np.asarray(fd), 0, 1), rtol=1e-6,
                                   atol=1e-9)


@pytest.mark.slow
def test_the_instrument_runs_inside_training_on_gated_cells():
    result = gz.train(gz.TrainConfig(
        cell="gru", hidden=4, task="multilag", seq_len=10, steps=2, batch_size=8,
        task_options={"dim": 2, "lags": "1,3", "coeffs": "0.6,0.3", "noise": 0.1},
        instruments=("learnability",), every={"probe": 1}, eval_every=2, seeds=(0,)),
        progress=False)
    line = [ln for ln in result.history if ln["split"] == "train"][0]
    names = [gz.metric_name("learnability", None, q) for q in
             ("rate", "envelope@1", "envelope_gates@8", "first_order_ratio@4", "psi_std@2")]
    assert all(np.isfinite(line[n]) for n in names)
    assert line[names[2]] > 0
