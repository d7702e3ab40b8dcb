"""S1 and S2 (docs/theory.md §6.3-§6.4): probes against brute force, and tiny end-to-end runs whose
summaries carry every statistic the spec names."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gatezoo as gz
from gatezoo.experiments.s1 import S1Config, run_s1
from gatezoo.experiments.s2 import S2Config, run_s2
from gatezoo.experiments.seeded import SeededModels, flat_size
from gatezoo.instruments import spectrum_stats
from gatezoo.instruments.norms import _release_norm, power_iteration, release_power_norm
from gatezoo.instruments.sensitivity import Sensitivity, lag_profile, lag_sensitivity
from gatezoo.models import cell_fn
from gatezoo.tasks import make_task


def _explicit(cell, xs, compat):
    """Brute force: J_j by jacrev of the step (+ the release's B), all products by loops."""
    fn = cell_fn(cell)
    h = jnp.zeros((cell.hidden_features,))
    Js, alphas = [], []
    jac = jax.jit(jax.jacrev(lambda hh, x, e: fn.step(fn.params, hh, x, eps=e)[0]))
    for x in xs:
        a = jac(h, x, 0.0)
        b = jac(h, x, 1.0) - a
        alpha = fn.time_scale(fn.params, h, x)
        if compat == "paper-code":
            b = (1 - alpha)[:, None] * b
        Js.append(np.asarray(a + b))
        alphas.append(np.asarray(alpha))
        h = fn.step(fn.params, h, x)[0]
    return Js, np.array(alphas)


def _s1_model(name, seed, T):
    """An S1 model (float64) with its layer's LayerFns and a batch of one sequence."""
    models = SeededModels.build(name, 3, 5, [seed], dtype=jnp.float64)
    params = jax.tree_util.tree_map(lambda p: p[0], models.params)
    model = models.model(params)
    fns, _ = gz.instruments.model_fns(model, make_task("adding", seq_len=T, channels=3))
    xs = jax.random.uniform(jax.random.key(seed - 1), (1, T, 3), jnp.float64)
    return model.cell, fns, params, xs, jnp.zeros((1, 1), jnp.float64)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scalar", "vector"])
def test_s1_power_sensitivity_matches_svd_of_explicit_products(x64, name):
    T = 5
    cell, fns, params, xs, ys = _s1_model(name, 1, T)
    sens = lag_sensitivity(fns, params, xs, ys, norm="power", power_iters=40)
    Js, alphas = _explicit(cell, xs[0], "exact")
    assert sens.s.shape == (T, T, 1)  # every pair 0 <= k < t <= T, ends 1..T
    for t in range(1, T + 1):
        for k in range(t):
            M = np.eye(5)
            for j in range(k + 1, t + 1):
                M = Js[j - 1] @ M
            np.testing.assert_allclose(sens.s[t - k - 1, t - 1, 0], np.linalg.norm(M, 2),
                                       rtol=1e-6)
            pred = np.mean(np.prod(alphas[k:t], axis=0))
            np.testing.assert_allclose(np.exp(sens.log_candidate[t - k - 1, t - 1, 0]), pred,
                                       rtol=1e-10)
    assert np.isnan(sens.s[2, 1, 0]) and not bool(sens.valid[2, 1, 0])  # t = 2, lag 3


@pytest.mark.slow
def test_paper_code_sensitivity_reversed_order_and_window(x64):
    cell, fns, params, xs, ys = _s1_model("vector", 2, 6)
    sens = lag_sensitivity(fns, params, xs, ys, compat="paper-code", norm="power",
                           power_iters=200, key=jax.random.key(7))
    Js, alphas = _explicit(cell, xs[0], "paper-code")
    t, k = 5, 2
    M = np.eye(5)
    for j in range(k + 1, t + 1):
        M = M @ Js[j - 1]  # J_{k+1} ... J_t
    # ends are 2..T (k >= 1); plain power iteration converges to the largest |eigenvalue|
    np.testing.assert_allclose(sens.s[t - k - 1, t - 2, 0],
                               np.max(np.abs(np.linalg.eigvals(M))), rtol=1e-6)
    # l + 1 gate factors: alpha_k .. alpha_t
    np.testing.assert_allclose(np.exp(sens.log_candidate[t - k - 1, t - 2, 0]),
                               np.mean(np.prod(alphas[k - 1:t], axis=0)), rtol=1e-10)
    assert not bool(sens.valid[2, 1, 0])  # t = 3, k = 0 is not a pair of the release


@pytest.mark.slow
def test_release_power_norm_matches_a_numpy_loop_and_collapses_at_the_floor():
    key = jax.random.key(5)
    P = jax.random.normal(jax.random.key(6), (3, 8, 8), jnp.float32) / 3
    v0 = jax.random.normal(key, (3, 8), jnp.float32)
    got = np.asarray(release_power_norm(P, v0, 5))
    v = np.asarray(v0, np.float64)
    Pn = np.asarray(P, np.float64)
    v = v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)
    for _ in range(5):
        v = np.einsum("nij,nj->ni", Pn, v)
        v = v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(got, np.linalg.norm(np.einsum("nij,nj->ni", Pn, v), axis=-1),
                               rtol=1e-5)
    # products far below the 1e-12 floor: the estimate collapses far below sigma_max
    tiny = jnp.full((1, 8, 8), 1e-15 / 8, jnp.float32)  # sigma_max = 1e-15
    est = float(release_power_norm(tiny, v0[:1], 5)[0])
    assert est < 1e-12 * 1e-15


def test_release_norm_keeps_float32_subnormal_squares_like_pytorch(x64):
    # PyTorch on a CPU: norm of 64 entries of 1e-21 is 8.0021e-21 (squares are float32
    # subnormals); of 1e-25 it is 0 (squares below the smallest subnormal)
    for value, want in ((1e-21, 8.0021e-21), (1e-25, 0.0), (0.5, 4.0)):
        got = float(_release_norm(jnp.full((64,), value, jnp.float32)))
        assert got == pytest.approx(want, rel=1e-4, abs=0.0)


@pytest.mark.slow
def test_lag_profile_power_fit_recovers_exponent(x64):
    rng = np.random.default_rng(0)
    T = 12
    lag = np.arange(1, T + 1)[:, None, None]
    end = np.arange(1, T + 1)[None, :, None]
    valid = np.broadcast_to(end - lag >= 0, (T, T, 3))
    P = np.where(valid, 0.8**lag * np.exp(0.01 * rng.standard_normal((T, T, 3))), np.nan)
    sens = Sensitivity(jnp.asarray(P**1.7), jnp.log(jnp.asarray(P)), None, jnp.asarray(valid),
                       jnp.arange(1, T + 1))
    out = lag_profile(sens, trim=0.0)
    assert float(out["slope"]) == pytest.approx(1.7, abs=1e-6)
    assert float(out["r2"]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out["profile"][:3], 0.8 ** (1.7 * np.arange(3)), rtol=0.05)
    with pytest.raises(ValueError, match="retention"):
        lag_profile(sens, predictor="retention")


def test_paper_code_floor_caps_the_anisotropy_of_tiny_spectra(x64):
    sv = jnp.array([5.0, 3.0, 2.0, 1.0, 0.5]) * 1e-7
    exact = spectrum_stats(sv, r=3)
    paper = spectrum_stats(sv, r=3, floor=1e-12)
    assert float(exact["ai"]) == pytest.approx(2.5)
    assert float(exact["ce"]) == pytest.approx(38 / 39.25)
    # sigma^2 ~ 1e-13 is below the floor: CE collapses, AI is barely touched at sigma_r = 2e-7
    assert float(paper["ce"]) == pytest.approx(38e-14 / (39.25e-14 + 1e-12))
    assert float(paper["ai"]) == pytest.approx(5e-7 / (2e-7 + 1e-12))


def test_s2_parameter_counts_match_release():
    counts = {name: flat_size(SeededModels.build(cell, 6, 64, [0]).params)
              for name, cell in (("plain", "elman"), ("scalar", "scalar"), ("multi", "vector"))}
    assert counts == {"plain": 4544, "scalar": 4614, "multi": 9024}


S1_STATS = {"profile", "zeroth_order", "fitted", "slope", "r2", "trim_low", "trim_high",
            "train_loss"}
S1_AGG = {"profile_mean", "profile_std", "zeroth_order_mean", "fitted_mean", "slope_mean",
          "slope_std", "r2_mean"}


@pytest.mark.slow
def test_s1_end_to_end(tmp_path):
    cfg = S1Config(seeds=2, steps=6, checkpoints=(0, 3, 6), seq_len=10, hidden=6,
                   batch_size=4, probe_batch=2, models=("leaky", "vector"))
    run_s1(cfg, tmp_path, log=lambda m: None)
    doc = json.loads((tmp_path / "s1.json").read_text())
    models = doc["tasks"]["adding"]["models"]
    assert set(models) == {"leaky", "vector"}
    for m in models.values():
        assert S1_STATS <= set(m["per_seed"]) and S1_AGG <= set(m["aggregate"])
        slope = np.array(m["per_seed"]["slope"], dtype=float)
        assert slope.shape == (3, 2) and np.isfinite(slope).all()
        prof = np.array(m["aggregate"]["profile_mean"], dtype=float)
        assert prof.shape == (3, 9) and np.allclose(prof[:, 0], 1.0)
    # leaky: P = alpha^l depends on lag only, so the zeroth-order profile is alpha^(l-1)
    z = np.array(models["leaky"]["aggregate"]["zeroth_order_mean"], dtype=float)
    np.testing.assert_allclose(z[0], 0.8 ** np.arange(9), rtol=1e-5)
    # each model records its training time and the operations it executed (the reproduction
    # benchmark's table reads them); the vector gate's extra weights cost extra products
    for m in models.values():
        assert 0 < m["train_time_s"] <= m["wall_time_s"]
        assert m["flops"]["probe"]["matmul32"] > 0 and m["flops"]["probe"]["decomposition"] > 0
    train = {k: m["flops"]["train"]["matmul32"] for k, m in models.items()}
    assert train["vector"] > train["leaky"] > 0
    assert all(m["devices"] == 2 for m in models.values())  # two seeds over conftest's two


S2_PROP = {"ai", "ce", "erank", "pr"}


@pytest.mark.slow
def test_s2_end_to_end(tmp_path, x64):
    cfg = S2Config(tasks=("delaysum",), seeds=2, steps=4, checkpoints=(0, 4), seq_len=40,
                   hidden=12, batch_size=4, probe_batch=3, lags=(1, 4, 36), triples_per_lag=4,
                   grad_samples=12, compat="paper-code", models=("plain", "multi"))
    run_s2(cfg, tmp_path, log=lambda m: None)
    doc = json.loads((tmp_path / "s2.json").read_text())
    tv = doc["tasks"]["delaysum"]
    assert set(tv["models"]) == {"plain", "multi"}
    for m in tv["models"].values():
        prop, gc = m["per_seed"]["propagation"], m["per_seed"]["grad_cov"]
        assert S2_PROP <= set(prop) and S2_PROP <= set(gc)
        assert np.array(prop["ai"], dtype=float).shape == (2, 2, 3)  # (ckpt, seed, lag)
        assert np.array(gc["ce"], dtype=float).shape == (2, 2)
        ce = np.array(prop["ce"], dtype=float)
        assert np.all((ce > 0) & (ce <= 1 + 1e-12))
        for key in ("ai_median", "ai_q25", "ai_q75", "ce_median", "ce_q25", "ce_q75"):
            assert key in m["aggregate"]["propagation"] and key in m["aggregate"]["grad_cov"]
    assert "propagation_ai_multi_ge_plain_fraction" in tv["comparison"]
    for m in tv["models"].values():
        assert 0 < m["train_time_s"] <= m["wall_time_s"]
        assert m["flops"]["train"]["matmul32"] > 0
        assert m["devices"] == 2  # two seeds, split over conftest's two devices
        # the probes' spectra are taken in float64
        assert m["flops"]["probe"]["matmul64"] > 0 and m["flops"]["probe"]["decomposition"] > 0


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown S1 task 'copy'"):
        S1Config(tasks=("copy",))
    with pytest.raises(ValueError, match="unknown S2 model 'gru'"):
        S2Config(models=("gru",))
    with pytest.raises(ValueError, match="checkpoints"):
        S1Config(steps=10)


@pytest.mark.slow
def test_power_iteration_survives_tiny_products():
    P = 1e-25 * jax.random.normal(jax.random.key(3), (2, 8, 8), jnp.float32)
    v = jnp.ones((2, 8), jnp.float32) / jnp.sqrt(8.0)
    s, _ = power_iteration(P, v, 60)
    want = np.linalg.norm(np.asarray(P, np.float64), 2, axis=(-2, -1))
    np.testing.assert_allclose(np.asarray(s), want, rtol=1e-3)


@pytest.mark.slow
def test_default_power_iterations_give_the_converged_profile():
    models = SeededModels.build("vector", 4, 16, [1])
    params = jax.tree_util.tree_map(lambda p: p[0], models.params)
    fns, _ = gz.instruments.model_fns(models.model(params), make_task("adding", seq_len=30))
    xs = jax.random.uniform(jax.random.key(4), (3, 30, 4))
    ys = jnp.zeros((3, 1))
    default = S1Config().power_iters
    sens = lag_sensitivity(fns, params, xs, ys, norm="power", power_iters=default)
    exact = lag_sensitivity(fns, params, xs, ys, norm="svd")
    a, b = lag_profile(sens, 0.01), lag_profile(exact, 0.01)
    np.testing.assert_allclose(a["profile"], b["profile"], rtol=0.01)
    assert float(a["slope"]) == pytest.approx(float(b["slope"]), rel=1e-3)
