"""Lag profiles, predictors, sensitivities, anisotropy and truncation against brute force
(float64, Python loops over explicit Jacobian products, numpy SVDs)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import data, jit_update, make_context, make_model, model_fns

from gatezoo.instruments import lag_sensitivity, power_fit, spectrum_stats
from gatezoo.instruments.anisotropy import gradient_spectrum
from gatezoo.instruments.lags import lags
from gatezoo.instruments.products import lag_products, probe_states
from gatezoo.instruments.transport import gate_transport
from gatezoo.instruments.truncation import truncation, truncation_curve, window_factors
from gatezoo.instruments.views import StepViews

T, B, H, D = 7, 3, 4, 2


@pytest.fixture
def setup(x64):
    model = make_model("vector", d_in=D, hidden=H, dtype=jnp.float64, seed=7)
    fns, params = model_fns(model)
    xs, ys = data(3, B, T, D, dtype=jnp.float64)
    ctx = make_context(fns, params, xs, ys)
    cp = params["cell"]
    h = np.asarray(ctx.carries)  # (T, B, H): h_1..h_T
    prev = np.concatenate([np.zeros_like(h[:1]), h[:-1]])
    # explicit step Jacobians J[t-1, b] = dh_t/dh_{t-1} by reverse mode on the plain step
    jac = jax.jit(jax.vmap(jax.vmap(jax.jacrev(lambda hh, x: fns.step(cp, hh, x)[0]))))
    J = np.asarray(jac(prev, np.swapaxes(np.asarray(xs), 0, 1)))
    return dict(fns=fns, params=params, xs=xs, ys=ys, ctx=ctx, J=J, h=h, prev=prev)


def _product(J, b, t, k, reverse=False):
    """J_t ... J_{k+1} (1-indexed states) by a Python loop; reversed: J_{k+1} ... J_t."""
    m = np.eye(J.shape[-1])
    for j in range(k + 1, t + 1):
        m = m @ J[j - 1, b] if reverse else J[j - 1, b] @ m
    return m


@pytest.mark.slow
def test_adjoint_norms_by_lag_equal_explicit_products(setup):
    s = setup
    model_W_o = np.asarray(s["params"]["W_o"])
    pred = s["h"][-1] @ model_W_o + np.asarray(s["params"]["b_o"])
    delta = 2.0 * (pred - np.asarray(s["ys"])) @ model_W_o.T / pred.size  # dL/dh_T (MSE)
    brute = np.zeros((T, B))
    for b in range(B):
        for ell in range(T):
            m = _product(s["J"], b, T, T - ell)
            brute[T - 1 - ell, b] = np.linalg.norm(m.T @ delta[b])
    views = StepViews(s["ctx"])
    np.testing.assert_allclose(views.adjoint_norms, brute, rtol=1e-10)
    out, _ = lags(s["fns"]).measure(s["ctx"], (), views)
    prof = np.median(brute[::-1], axis=1)
    for ell in (1, 2, 4):
        np.testing.assert_allclose(out[f"ratio@{ell}"], prof[ell] / prof[0], rtol=1e-10)


@pytest.mark.slow
def test_gate_product_predictors_and_fit(setup):
    s = setup
    cp = s["params"]["cell"]
    alpha = np.asarray(jax.nn.sigmoid(
        np.asarray(s["xs"]).swapaxes(0, 1) @ np.asarray(cp["U_g"]) + s["prev"] @ np.asarray(
            cp["W_g"]) + np.asarray(cp["b_g"])))
    views = StepViews(s["ctx"])
    np.testing.assert_allclose(views.alpha, alpha, rtol=1e-12)
    out, _ = gate_transport(s["fns"]).measure(s["ctx"], (), views)
    norms = np.asarray(views.adjoint_norms)
    for tag, f in (("candidate", alpha), ("retention", 1.0 - alpha)):
        logp, logs = [], []
        for b in range(B):
            for ell in range(1, T):
                logp.append(np.log(np.mean(np.prod(f[T - ell:, b], axis=0))))
                logs.append(np.log(norms[T - 1 - ell, b] / norms[T - 1, b]))
        logp, logs = np.array(logp), np.array(logs)
        lo, hi = np.quantile(logp, [0.01, 0.99])
        keep = (logp >= lo) & (logp <= hi)
        slope = np.polyfit(logp[keep], logs[keep], 1)[0]
        r2 = np.corrcoef(logp[keep], logs[keep])[0, 1] ** 2
        np.testing.assert_allclose(out[f"{tag}_s"], slope, rtol=1e-9)
        np.testing.assert_allclose(out[f"{tag}_r2"], r2, rtol=1e-9)
        med2 = np.median([np.mean(np.prod(f[T - 2:, b], axis=0)) for b in range(B)])
        np.testing.assert_allclose(out[f"{tag}@2"], med2, rtol=1e-12)


def test_power_fit_and_spectrum_stats_match_numpy(x64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.7 * x + 0.3 * rng.normal(size=200)
    mask = rng.random(200) > 0.2
    s, r2 = power_fit(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), trim=0.0)
    np.testing.assert_allclose(s, np.polyfit(x[mask], y[mask], 1)[0], rtol=1e-10)
    np.testing.assert_allclose(r2, np.corrcoef(x[mask], y[mask])[0, 1] ** 2, rtol=1e-10)
    sv = np.sort(rng.random(20))[::-1]
    st = spectrum_stats(jnp.asarray(sv), r=10, top=16)
    e = sv**2
    np.testing.assert_allclose(st["ai"], sv[0] / sv[9])
    np.testing.assert_allclose(st["ce"], e[:10].sum() / e[:16].sum())
    p = e / e.sum()
    np.testing.assert_allclose(st["erank"], np.exp(-(p * np.log(p)).sum()))
    np.testing.assert_allclose(st["pr"], e.sum() ** 2 / (e**2).sum())


@pytest.mark.slow
def test_sensitivity_is_exact_spectral_norm_of_the_product(setup):
    s = setup
    sens = jax.jit(lambda p: lag_sensitivity(s["fns"], p, s["xs"], s["ys"]))(s["params"])
    got = np.asarray(sens.s)
    assert got.shape == (T, T, B)  # every pair 0 <= k < t <= T: lags 1..T, ends 1..T
    for b in range(B):
        for t in range(1, T + 1):
            for k in range(0, t):
                want = np.linalg.svd(_product(s["J"], b, t, k), compute_uv=False)[0]
                np.testing.assert_allclose(got[t - k - 1, t - 1, b], want, rtol=1e-10)
    assert np.isnan(got[T - 1, 0, 0])  # t = 1, lag T: no such pair
    # the candidate predictor of one pair, by a loop over the window
    alpha = np.asarray(StepViews(s["ctx"]).alpha)
    t, k, b = 6, 2, 1
    want = np.log(np.mean(np.prod(alpha[k:t, b], axis=0)))
    np.testing.assert_allclose(sens.log_candidate[t - k - 1, t - 1, b], want, rtol=1e-10)
    # warm-started power iterations: lag 1 exact; beyond, a lower bound of the norm that is
    # converged for all but near-degenerate top singular values
    power = jax.jit(lambda p: lag_sensitivity(s["fns"], p, s["xs"], s["ys"], norm="power",
                                              power_iters=60))(s["params"])
    ok = np.isfinite(got)
    rel = (np.asarray(power.s)[ok] - got[ok]) / got[ok]
    np.testing.assert_allclose(power.s[0], got[0], rtol=1e-12)
    assert rel.max() <= 1e-12 and np.median(rel) > -1e-12 and rel.min() > -1e-2


@pytest.mark.slow
def test_paper_code_conventions(setup):
    """B from the post-update state, reversed order, 5 power iterations, ell + 1 gate factors."""
    s = setup
    cp = {k: np.asarray(v) for k, v in s["params"]["cell"].items()}
    xs_t = np.asarray(s["xs"]).swapaxes(0, 1)
    prev, h = s["prev"], s["h"]
    phi = np.tanh(xs_t @ cp["U"] + prev @ cp["W"] + cp["b"])
    alpha = 1 / (1 + np.exp(-(xs_t @ cp["U_g"] + prev @ cp["W_g"] + cp["b_g"])))
    sig = alpha * (1 - alpha)
    eye = np.eye(H)
    # docs/theory.md §2.1 closed forms (the theory's W is the kernel's transpose)
    A = eye * (1 - alpha)[..., None, :] + (alpha * (1 - phi**2))[..., :, None] * cp["W"].T
    B_exact = ((phi - prev) * sig)[..., :, None] * cp["W_g"].T
    B_code = ((phi - h) * sig)[..., :, None] * cp["W_g"].T
    np.testing.assert_allclose(A + B_exact, s["J"], atol=1e-12)
    np.testing.assert_allclose(B_code, (1 - alpha)[..., :, None] * B_exact, atol=1e-14)
    sens = jax.jit(lambda p: lag_sensitivity(s["fns"], p, s["xs"], s["ys"],
                                             compat="paper-code"))(s["params"])
    Jc = A + B_code
    for b, t, k in ((0, 7, 1), (2, 5, 3), (1, 4, 3)):
        m = _product(Jc, b, t, k, reverse=True)
        v = np.ones(H) / np.sqrt(H)
        for _ in range(5):
            v = m @ v
            v = v / np.linalg.norm(v)
        np.testing.assert_allclose(sens.s[t - k - 1, t - 2, b], np.linalg.norm(m @ v), rtol=1e-10)
        want = np.log(np.mean(np.prod(alpha[k - 1:t, b], axis=0)))  # ell + 1 factors
        np.testing.assert_allclose(sens.log_candidate[t - k - 1, t - 2, b], want, rtol=1e-10)


@pytest.mark.slow
def test_lag_products_spectra_and_gradient_spectrum(setup):
    s = setup
    cp, prev, xs_t = probe_states(s["fns"], s["params"], s["xs"], s["ys"])
    ends, ex, stop = jnp.array([7, 5, 4]), jnp.array([0, 2, 1]), jnp.array([3, 4, 1])
    prod, _, _ = lag_products(s["fns"], cp, prev, xs_t, ends, ex, 4, stop=stop)
    for n in range(3):
        t, b, ell = int(ends[n]), int(ex[n]), int(stop[n])
        np.testing.assert_allclose(prod[n], _product(s["J"], b, t, t - ell), atol=1e-12)
    fns, params = s["fns"], s["params"]
    xs, ys = s["xs"], s["ys"]
    sv = jax.jit(lambda p: gradient_spectrum(fns, p, xs, ys))(params)
    grad = jax.jit(jax.grad(lambda p, x, y: fns.loss(p, x, y)[0]))
    rows = []
    for i in range(B):
        g = grad(params, xs[i:i + 1], ys[i:i + 1])
        rows.append(np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)]))
    rows = np.array(rows)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows -= rows.mean(axis=0)
    np.testing.assert_allclose(sv, np.linalg.svd(rows, compute_uv=False), atol=1e-7)


@pytest.mark.slow
def test_truncation_check(setup):
    s = setup
    cp, prev, xs_t = probe_states(s["fns"], s["params"], s["xs"], s["ys"])
    a, b = window_factors(s["fns"], cp, prev, xs_t, 1, T)
    np.testing.assert_allclose(a + b, s["J"][:, 1], atol=1e-12)
    eps = jnp.asarray([1e-3, 1.0])
    curve = truncation_curve(a, b, eps)
    f1 = _product(s["J"], 1, T, 0)
    f0 = np.linalg.multi_dot(list(np.asarray(a)[::-1]))
    scale = np.max(np.abs(f0))
    np.testing.assert_allclose(curve["f1"], np.linalg.norm(f1) / scale, rtol=1e-10)
    # L1 by a central difference of the product in eps
    fd = lambda e: np.linalg.multi_dot(list(np.asarray(a + e * b)[::-1]))  # noqa: E731
    l1 = (fd(1e-6) - fd(-1e-6)) / 2e-6
    np.testing.assert_allclose(curve["l1"], np.linalg.norm(l1) / scale, rtol=1e-6)
    np.testing.assert_allclose(curve["err"][1], np.linalg.norm(f1 - f0 - l1) / scale, rtol=1e-6)
    ctx = s["ctx"]
    inst = truncation(s["fns"], examples=2).instrument()
    out, _ = jit_update(inst, s["fns"])(ctx, inst.init(s["params"]))
    assert abs(float(out["slope"]) - 2.0) < 0.05
    assert 0 < float(out["rel_err"]) < 1


@pytest.mark.slow
def test_optimizer_readers(x64):
    from gatezoo.instruments import adam_effective_lr, learning_rate_in_force, momentum_beta

    rng = np.random.default_rng(0)
    params = {"cell": {"W": jnp.asarray(rng.normal(size=(5, 5)))}, "W_o": jnp.ones((5, 1))}
    grads = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
    sched = optax.linear_schedule(1.0, 0.0, 10)
    opt = optax.chain(optax.clip_by_global_norm(1e9),
                      optax.inject_hyperparams(optax.adam)(learning_rate=sched, eps=1e-3))
    st = opt.init(params)
    for _ in range(2):  # count 2: the schedule's rate in force is 0.9
        _, st = opt.update(grads, st, params)
    np.testing.assert_allclose(learning_rate_in_force(st), 0.9)
    beta, kind = momentum_beta(st)
    assert kind == "ema" and float(beta) == pytest.approx(0.9)
    nu = (1 - 0.999**2) * np.asarray(grads["cell"]["W"]) ** 2
    np.testing.assert_allclose(st[1].inner_state[0].nu["cell"]["W"], nu, rtol=1e-6)
    want = 0.9 / (np.abs(np.asarray(grads["cell"]["W"])) + 1e-3)  # nu_hat = g^2
    np.testing.assert_allclose(adam_effective_lr(st)["cell"]["W"], want, rtol=1e-5)
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.8)
    beta, kind = momentum_beta(sgd.init(params))
    assert kind == "heavy-ball" and float(beta) == pytest.approx(0.8)
    beta, kind = momentum_beta(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1).init(params))
    assert kind == "none" and float(beta) == 0.0


@pytest.mark.slow
def test_retention_transport_and_order_statistics(x64):
    from gatezoo.instruments.analogies import retention_transport
    from gatezoo.instruments.stats import fast_median, fast_quantiles, masked_quantiles

    rng = np.random.default_rng(2)
    a = rng.random((10, 3, 4))
    for max_ends, ends in ((100, range(1, 11)), (4, range(1, 11, 3))):
        got = retention_transport(jnp.asarray(a), jnp.asarray([1, 2, 4]), max_ends=max_ends)
        for i, ell in enumerate((1, 2, 4)):
            want = np.mean([np.prod(1 - a[t - ell:t], axis=0) for t in ends if t >= ell],
                           axis=(0, 1))
            np.testing.assert_allclose(got[i], want, rtol=1e-12)
    x = np.exp(10 * rng.normal(size=(5, 8)))  # 9 decades: exact, not bisection-limited
    np.testing.assert_array_equal(fast_median(jnp.asarray(x)), np.median(x, axis=1))
    np.testing.assert_allclose(fast_quantiles(jnp.asarray(x), (0.1, 0.9)),
                               np.quantile(x, [0.1, 0.9]), rtol=1e-15)
    m = rng.random(x.size) > 0.4
    np.testing.assert_allclose(masked_quantiles(jnp.asarray(x.ravel()), jnp.asarray(m), (0.01,)),
                               np.quantile(x.ravel()[m], [0.01]), rtol=1e-15)


def test_window_products_by_doubling_and_suffix_means(x64):
    """Products over windows of any length (binary digits of the lag) and suffix-product means,
    against Python loops; windows reaching before the start give 0."""
    from gatezoo.instruments.stats import suffix_mean_products, window_products_at

    rng = np.random.default_rng(5)
    f = rng.random((13, 2, 3))
    ends = np.array([0, 2, 6, 12])
    lags = (1, 3, 5, 6, 7, 11, 13)
    got = np.asarray(window_products_at(jnp.asarray(f), jnp.asarray(ends), lags))
    for i, ell in enumerate(lags):
        for n, end in enumerate(ends):
            want = np.prod(f[end - ell + 1:end + 1], axis=0) if end - ell + 1 >= 0 else 0.0
            np.testing.assert_allclose(got[i, n], want, rtol=1e-13, atol=0)
    sm = np.asarray(suffix_mean_products(jnp.asarray(f)))
    for ell in range(13):
        np.testing.assert_allclose(sm[ell], np.mean(np.prod(f[12 - ell:], axis=0), axis=-1),
                                   rtol=1e-13)
