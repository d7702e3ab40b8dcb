"""Tail-index estimators (gatezoo.tail_index): the CMS sampler against closed forms and scipy's
stable cdf, the quantile table against scipy's ppf, ECF and McCulloch recovery of (alpha, sigma)
on synthetic data, the selection rules of tail_index, and the SNR / window helpers on cases
computed by hand."""

import jax
import numpy as np
import pytest
from scipy import special, stats

from gatezoo import tail_index as ti

ALPHAS = [1.1, 1.3, 1.5, 1.7, 1.9, 2.0]


# ---- sampler -------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, law", [(1.0, stats.cauchy(scale=2.5)),
                                        (2.0, stats.norm(scale=2.5 * np.sqrt(2.0)))])
def test_sampler_matches_closed_forms(alpha, law):
    x = ti.sample_symmetric_stable(7, alpha, 20_000, scale=2.5)
    ks = stats.kstest(x, law.cdf)
    assert ks.pvalue > 1e-3, ks


@pytest.mark.parametrize("alpha", [0.8, 1.5, 1.9])
def test_sampler_matches_scipy_stable_cdf(alpha):
    n = 50_000
    x = ti.sample_symmetric_stable(11, alpha, n)
    points = np.array([-4.0, -1.5, -0.5, 0.2, 0.7, 2.0, 6.0])
    expected = stats.levy_stable.cdf(points, alpha, 0.0)
    empirical = (x[:, None] <= points).mean(axis=0)
    se = np.sqrt(expected * (1 - expected) / n)
    np.testing.assert_array_less(np.abs(empirical - expected), 5 * se)


def test_sampler_is_seeded_and_accepts_generators_and_jax_keys():
    a = ti.sample_symmetric_stable(3, 1.4, 100)
    np.testing.assert_array_equal(a, ti.sample_symmetric_stable(3, 1.4, 100))
    np.testing.assert_array_equal(a, ti.sample_symmetric_stable(np.random.default_rng(3), 1.4, 100))
    assert not np.array_equal(a, ti.sample_symmetric_stable(4, 1.4, 100))
    k1 = ti.sample_symmetric_stable(jax.random.PRNGKey(0), 1.4, (4, 5))
    k2 = ti.sample_symmetric_stable(jax.random.key(0), 1.4, (4, 5))
    assert k1.shape == (4, 5) and k1.dtype == np.float64
    np.testing.assert_array_equal(k1, k2)
    assert not np.array_equal(k1, ti.sample_symmetric_stable(jax.random.PRNGKey(1), 1.4, (4, 5)))
    for bad in (0.0, 2.1, -1.0):
        with pytest.raises(ValueError):
            ti.sample_symmetric_stable(0, bad, 10)


# ---- quantile table ------------------------------------------------------------------------


def test_quantile_table_matches_scipy_and_closed_forms():
    alphas, q75, q95 = ti._quantile_table()
    assert alphas[0] == pytest.approx(0.6) and alphas[-1] == pytest.approx(2.0)
    for a in (0.7, 1.3, 1.5, 1.9):
        i = int(np.argmin(np.abs(alphas - a)))
        np.testing.assert_allclose([q75[i], q95[i]],
                                   stats.levy_stable.ppf([0.75, 0.95], a, 0.0), rtol=1e-8)
    i1 = int(np.argmin(np.abs(alphas - 1.0)))
    np.testing.assert_allclose([q75[i1], q95[i1]], [1.0, np.tan(0.45 * np.pi)], rtol=1e-9)
    np.testing.assert_allclose([q75[-1], q95[-1]],
                               np.sqrt(2.0) * special.ndtri([0.75, 0.95]), rtol=1e-9)
    assert np.all(np.diff(q95 / q75) < 0)  # nu decreases strictly: the inversion is unique


# ---- estimators ----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
def test_ecf_recovers_alpha_and_sigma(alpha):
    x = ti.sample_symmetric_stable(100 + int(alpha * 10), alpha, 100_000, scale=1.7)
    a, s, reliable = ti.ecf_fit(x)
    assert reliable
    assert abs(a - alpha) < 0.05
    assert s == pytest.approx(1.7, rel=0.03)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_mcculloch_recovers_alpha_and_sigma(alpha):
    x = ti.sample_symmetric_stable(200 + int(alpha * 10), alpha, 100_000, scale=0.3)
    a, s = ti.mcculloch_fit(x)
    assert abs(a - alpha) < 0.05
    assert s == pytest.approx(0.3, rel=0.03)


def test_gaussian_gives_two():
    x = np.random.default_rng(5).normal(0.0, 3.0, 50_000)  # sigma = 3 / sqrt(2)
    a, s, reliable = ti.ecf_fit(x)
    assert reliable and a > 1.97 and s == pytest.approx(3 / np.sqrt(2), rel=0.03)
    a, s = ti.mcculloch_fit(x)
    assert a > 1.95 and s == pytest.approx(3 / np.sqrt(2), rel=0.03)
    est = ti.tail_index(x)
    assert est.method == "ecf" and est.reliable and est.alpha > 1.97


def test_estimates_are_equivariant_under_shift_and_scale():
    x = ti.sample_symmetric_stable(9, 1.4, 30_000)
    a, s, _ = ti.ecf_fit(x)
    a2, s2, _ = ti.ecf_fit(1e3 * x - 5e3)
    assert a2 == pytest.approx(a, abs=1e-6) and s2 == pytest.approx(1e3 * s, rel=1e-6)
    m, ms = ti.mcculloch_fit(x)
    m2, ms2 = ti.mcculloch_fit(1e3 * x - 5e3)
    assert m2 == pytest.approx(m, abs=1e-9) and ms2 == pytest.approx(1e3 * ms, rel=1e-9)


def test_ecf_subsamples_large_inputs_deterministically():
    x = ti.sample_symmetric_stable(10, 1.6, 150_000)
    first = ti.ecf_fit(x)
    assert first == ti.ecf_fit(x.copy())
    assert abs(first[0] - 1.6) < 0.05


def _weighted_line(t, phi2, low, high):
    """The spec's weighted least squares, by lstsq on the sqrt(weight)-scaled design."""
    keep = (phi2 > low) & (phi2 < high)
    lt, lp = np.log(t[keep]), np.log(phi2[keep])
    rw = np.sqrt(np.exp(-2 * (lp + 0.7) ** 2))
    design = np.stack([np.ones_like(lt), lt], axis=1) * rw[:, None]
    (c, slope), *_ = np.linalg.lstsq(design, np.log(-lp) * rw, rcond=None)
    return slope, c


_RELAXED = [0.998, 0.96, 0.9, 0.5, 0.1, 0.02, 0.005, 5e-4]  # 4 in the strict band, 8 relaxed
_NONE = [0.9995, 0.998, 5e-5]  # 1 in the relaxed band


@pytest.mark.parametrize("case", ["strict", "relaxed", "none"])
def test_ecf_bands_and_weights(monkeypatch, case):
    def fake(x, t):
        if case == "strict":  # two stable laws: log(-log|phi|^2) is curved in log t
            return np.exp(-(t**1.2 + t**1.9))
        values = _RELAXED if case == "relaxed" else _NONE
        return np.concatenate([values, np.zeros(t.size - len(values))])

    monkeypatch.setattr(ti, "_ecf_modulus2", fake)
    x = np.random.default_rng(0).normal(size=2000)
    t = ti._ECF_T / (np.subtract(*np.percentile(x, [75, 25])) / 1.349)
    phi2 = fake(x, t)
    a, s, reliable = ti.ecf_fit(x)
    if case == "none":
        assert not reliable and np.isnan(a) and np.isnan(s)
        return
    slope, c = _weighted_line(t, phi2, *((0.01, 0.95) if case == "strict" else (1e-4, 0.999)))
    assert reliable and (1.0 < slope < 2.0) == (case == "strict")  # "relaxed" is clipped
    assert a == pytest.approx(np.clip(slope, 1.0, 2.0), rel=1e-9)
    assert s == pytest.approx((np.exp(c) / 2) ** (1 / a), rel=1e-9)
    if case == "strict":  # the weights matter here
        keep = (phi2 > 0.01) & (phi2 < 0.95)
        assert abs(np.polyfit(np.log(t[keep]), np.log(-np.log(phi2[keep])), 1)[0] - a) > 0.01


def test_degenerate_data_give_nan():
    for x in (np.ones(5000), np.zeros(0), np.full(100, np.nan)):
        a, s, reliable = ti.ecf_fit(x)
        assert np.isnan(a) and np.isnan(s) and not reliable
        assert all(np.isnan(ti.mcculloch_fit(x)))
        alpha, (low, high) = ti.mcculloch_bootstrap(x, n_boot=20)
        assert np.isnan(alpha) and np.isnan(low) and np.isnan(high)


def test_mcculloch_bootstrap_covers_truth_and_is_seeded():
    x = ti.sample_symmetric_stable(12, 1.3, 20_000)
    alpha, (low, high) = ti.mcculloch_bootstrap(x, n_boot=300, seed=1)
    assert low < 1.3 < high and high - low < 0.15 and low <= alpha <= high
    assert ti.mcculloch_bootstrap(x, n_boot=300, seed=1) == (alpha, (low, high))
    assert ti.mcculloch_bootstrap(x, n_boot=300, seed=2) != (alpha, (low, high))


# ---- selection -----------------------------------------------------------------------------


def test_tail_index_uses_ecf_when_reliable():
    est = ti.tail_index(ti.sample_symmetric_stable(13, 1.5, 20_000, scale=2.0))
    assert est.method == "ecf" and est.reliable and est.ci is None
    assert abs(est.alpha - 1.5) < 0.05 and est.sigma == pytest.approx(2.0, rel=0.05)


def test_too_few_samples_fall_back_to_mcculloch():
    x = ti.sample_symmetric_stable(14, 1.5, 20_000, scale=2.0)
    est = ti.tail_index(x, min_samples=10**6)
    assert est.method == "mcculloch" and est.reliable
    assert est.ci[1] - est.ci[0] < 0.3 and est.ci[0] <= est.alpha <= est.ci[1]
    assert abs(est.alpha - 1.5) < 0.1 and est.sigma == pytest.approx(2.0, rel=0.05)


def test_wide_mcculloch_interval_falls_back_to_gaussian():
    x = ti.sample_symmetric_stable(15, 1.5, 40)
    est = ti.tail_index(x)
    assert est.method == "default" and not est.reliable and est.alpha == 2.0
    assert est.ci is not None and est.ci[1] - est.ci[0] >= 0.3
    iqr = np.subtract(*np.percentile(x, [75, 25]))
    assert est.sigma == pytest.approx(iqr / (2 * np.sqrt(2) * special.ndtri(0.75)))


@pytest.mark.parametrize("x", [np.full(5000, 3.0), 1e-14 * np.arange(5000.0)])
def test_data_without_spread_fall_back_to_gaussian(x):
    est = ti.tail_index(x)
    assert est == ti.TailIndex(2.0, est.sigma, "default", False, None)
    assert np.isnan(est.sigma)


def test_boundary_estimate_needs_2000_samples():
    rng = np.random.default_rng(16)
    small, large = rng.normal(size=1500), rng.normal(size=3000)
    assert ti.ecf_fit(small)[0] >= 1.99 and ti.ecf_fit(small)[2]  # ECF itself is at the edge
    assert ti.tail_index(small).method != "ecf"
    est = ti.tail_index(large)
    assert est.method == "ecf" and est.alpha >= 1.99


def test_interior_estimate_needs_only_min_samples():
    x = ti.sample_symmetric_stable(17, 1.4, 1500)
    a = ti.ecf_fit(x)[0]
    assert 1.01 < a < 1.99
    assert ti.tail_index(x).method == "ecf"
    assert ti.tail_index(x, min_samples=1501).method != "ecf"


# ---- SNR and learnability window -----------------------------------------------------------


def test_snr_by_hand():
    assert ti.snr(1.0, 2.0, 2.0, 100) == pytest.approx(5.0)  # 1 * 100**0.5 / 2
    assert ti.snr(3.0, 1.0, 1.5, 8) == pytest.approx(6.0)  # 3 * 8**(1/3)
    assert ti.snr(0.5, 0.25, 1.0, 10**6) == pytest.approx(2.0)  # Cauchy: no gain with N
    np.testing.assert_allclose(ti.snr(1.0, 1.0, 2.0, np.array([1, 4, 9])), [1.0, 2.0, 3.0])
    assert ti.snr(1.0, 0.0, 2.0, 4) == np.inf


def test_required_samples_by_hand():
    grid = [100, 1000, 2000, 4000]
    # SNR = sqrt(N) / 2 > 20  <=>  N > 1600
    assert ti.required_samples(1.0, 2.0, 2.0, grid) == 2000
    assert ti.required_samples(1.0, 2.0, 2.0, grid[::-1]) == 2000  # smallest, not first listed
    assert ti.required_samples(1.0, 2.0, 2.0, [1600, 1700]) == 1700  # strictly above
    assert ti.required_samples(1.0, 2.0, 2.0, grid, threshold=4.0) == 100
    assert ti.required_samples(0.01, 2.0, 2.0, grid) == -1
    # alpha = 1.5: SNR = 3 N^(1/3) > 20  <=>  N > 296.3
    assert ti.required_samples(3.0, 1.0, 1.5, [8, 64, 216, 343, 512]) == 343
    out = ti.required_samples([1.0, 0.01, 3.0], [2.0, 2.0, 1.0], [2.0, 2.0, 1.5],
                              [8, 64, 343, 2000])
    assert out.tolist() == [2000, -1, 343]


def test_learnability_window_by_hand():
    assert ti.learnability_window([1, 2, 4, 8], [10, 100, -1, 5000], 1000) == 2
    assert ti.learnability_window([1, 2, 4, 8], [10, 100, -1, 5000], 5000) == 8
    assert ti.learnability_window([1, 2, 4, 8], [10, 100, -1, 900], 1000) == 8  # past a gap
    assert ti.learnability_window([8, 1, 4], [50, 50, 50], 49) == 0
    assert ti.learnability_window([3, 1, 2], [50, 0, -1], 100) == 3  # unsorted; 0 is "none"
    assert ti.learnability_window([], [], 10) == 0
    with pytest.raises(ValueError):
        ti.learnability_window([1, 2], [10], 100)


# ---- slow sweep ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [1.05, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 1.95, 2.0])
def test_sweep_over_alpha_and_seeds(alpha):
    ecf, mcc = [], []
    for seed in range(5):
        x = ti.sample_symmetric_stable(1000 * seed + int(100 * alpha), alpha, 200_000, scale=0.8)
        a, s, reliable = ti.ecf_fit(x)
        assert reliable and s == pytest.approx(0.8, rel=0.03)
        m, ms = ti.mcculloch_fit(x)
        assert ms == pytest.approx(0.8, rel=0.03)
        ecf.append(a)
        mcc.append(m)
        est = ti.tail_index(x)
        assert est.method == "ecf" and est.alpha == a
    assert np.max(np.abs(np.array(ecf) - alpha)) < 0.05
    assert np.max(np.abs(np.array(mcc) - alpha)) < 0.05
    assert abs(np.mean(ecf) - alpha) < 0.02 and abs(np.mean(mcc) - alpha) < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [1.2, 1.6, 1.9])
def test_bootstrap_interval_covers_truth_on_large_samples(alpha):
    x = ti.sample_symmetric_stable(int(100 * alpha), alpha, 100_000)
    est, (low, high) = ti.mcculloch_bootstrap(x)
    assert low < alpha < high and high - low < 0.06
    assert abs(est - alpha) < 0.03
