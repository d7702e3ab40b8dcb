"""The appendix check (theory §6.2): slope 2, F(1) = exact transport, paper-code identity."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gatezoo.experiments.appendix import (
    AppendixConfig,
    _make,
    appendix_signal,
    gate_factors,
    run_appendix,
)
from gatezoo.experiments.stats import iqr_inliers
from gatezoo.models import cell_fn
from gatezoo.models.jacobians import loglog_slope

SMALL = dict(seeds=4, seq_len=40, hidden=16)


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    out = {}
    with jax.enable_x64(True):
        for compat in ("exact", "paper-code"):
            d = tmp_path_factory.mktemp(compat)
            out[compat] = (run_appendix(AppendixConfig(compat=compat, **SMALL), d), d)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("compat", ["exact", "paper-code"])
@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_small_eps_slope_is_two(summaries, compat, gate):
    g = summaries[compat][0]["gates"][gate]
    slopes = np.asarray(g["per_seed"]["slope"])
    assert np.all(np.abs(slopes - 2.0) < 0.05), slopes
    assert abs(g["aggregate"]["slope_median"] - 2.0) < 0.05
    # C2 is flat at small eps: the remainder is exactly second order
    c2 = np.asarray(g["aggregate"]["C2_median"])
    assert abs(c2[0] / c2[2] - 1) < 0.05
    # the gate correction is a small one (docs/theory.md §7 claim 12)
    assert 0 < g["aggregate"]["r_median_of_medians"] < 1


@pytest.mark.slow
def test_outputs_and_statistics_written(summaries):
    summary, d = summaries["exact"]
    doc = json.loads((d / "appendix.json").read_text())
    for gate in ("scalar", "vector"):
        # the appendix runs in float64: its products and SVDs are counted as such
        flops = doc["gates"][gate]["flops"]
        assert flops["matmul64"] > 0 and flops["matmul32"] == 0 and flops["decomposition"] > 0
        agg = doc["gates"][gate]["aggregate"]
        for key in ("E_median", "E_q25", "E_q75", "C2_median", "C2_q25", "C2_q75", "slope_mean",
                    "slope_std", "slope_median", "E1_over_F1_median",
                    "E1_over_F0_plus_L1_median", "norm_A_mean", "norm_A_std", "norm_B_mean",
                    "norm_B_std", "r_median_of_medians"):
            assert key in agg
        ps = doc["gates"][gate]["per_seed"]
        for key in ("E", "C2", "slope", "E1", "r_median", "r_p90", "r_p99", "r_max", "r"):
            assert len(ps[key]) == SMALL["seeds"]
        rows = (d / f"appendix_{gate}_ratios.csv").read_text().splitlines()
        assert rows[0] == "seed,step,norm_A,norm_B,r"
        assert len(rows) == 1 + SMALL["seeds"] * SMALL["seq_len"]


@pytest.mark.slow
def test_code_convention_shrinks_ratios(summaries):
    for gate in ("scalar", "vector"):
        exact = summaries["exact"][0]["gates"][gate]["per_seed"]["r"]
        code = summaries["paper-code"][0]["gates"][gate]["per_seed"]["r"]
        assert np.all(np.asarray(code) <= np.asarray(exact) + 1e-12)


def _jacrev_factors(cell, xs, compat):
    """Independent A, B by autodiff of the deformed step, with the release's B if asked."""
    fn = cell_fn(cell)
    h = jnp.zeros((cell.hidden_features,))
    A, B = [], []
    jac = jax.jit(jax.jacrev(lambda hh, x, e: fn.step(fn.params, hh, x, eps=e)[0]))
    for x in xs:
        a = jac(h, x, 0.0)
        b = jac(h, x, 1.0) - a
        if compat == "paper-code":
            b = (1 - fn.time_scale(fn.params, h, x))[:, None] * b
        A.append(a)
        B.append(b)
        h = fn.step(fn.params, h, x)[0]
    return jnp.stack(A), jnp.stack(B)


@pytest.mark.slow
@pytest.mark.parametrize("compat", ["exact", "paper-code"])
def test_factors_match_autodiff_and_F1_is_transport(x64, compat):
    cfg = AppendixConfig(seeds=1, seq_len=6, hidden=6, compat=compat)
    for gate in ("scalar", "vector"):
        cell = _make(gate, 3, cfg)
        xs = appendix_signal(jax.random.key(5), cfg)
        A, B = gate_factors(cell, xs, compat)
        A2, B2 = _jacrev_factors(cell, xs, compat)
        np.testing.assert_allclose(A, A2, atol=1e-12)
        np.testing.assert_allclose(B, B2, atol=1e-12)
        if compat == "exact":
            fn = cell_fn(cell)

            def unroll(h0):
                h = h0
                for x in xs:
                    h = fn.step(fn.params, h, x)[0]
                return h

            M = jax.jacrev(unroll)(jnp.zeros(6))
            F1 = jnp.eye(6)
            for a, b in zip(A, B, strict=False):
                F1 = (a + b) @ F1
            np.testing.assert_allclose(F1, M, rtol=1e-10, atol=1e-12)


def test_stats_helpers():
    eps = np.array([1e-3, 1e-2, 1e-1])
    assert loglog_slope(eps, 3 * eps**2) == pytest.approx(2.0)
    assert np.isnan(loglog_slope(eps, np.array([1.0, 0.0, 2.0])))  # log of 0: no slope
    mask = iqr_inliers(np.array([1.0, 1.1, 0.9, 1.05, 50.0, np.nan]))
    assert mask.tolist() == [True, True, True, True, False, False]


def test_bad_config_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown appendix gate 'gru'"):
        AppendixConfig(gates=("gru",))
    with pytest.raises(ValueError, match="compat"):
        AppendixConfig(compat="torch")


def test_needs_float64():
    with jax.enable_x64(False), pytest.raises(ValueError, match="float64"):
        run_appendix(AppendixConfig(seeds=1, seq_len=5, hidden=4))


def test_params_differ_by_seed(x64):
    cfg = AppendixConfig(**SMALL)
    a = nnx.state(_make("vector", 0, cfg), nnx.Param)
    b = nnx.state(_make("vector", 1, cfg), nnx.Param)
    assert not np.allclose(a["W"][...], b["W"][...])
    assert float(jnp.std(a["W"][...])) == pytest.approx(0.2, rel=0.2)
