"""Closed-form Jacobians, the autodiff split, and Jacobian products (theory §2-§3), float64."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatezoo as gz
import gatezoo.jacobians as jac
from gatezoo.models import flatten_carry, unflatten_carry

NAMES = ["elman", "leaky", "scalar", "vector", "gru", "lstm"]
GATED_LEAKY = ["scalar", "vector"]
D_IN, D_H = 3, 5


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def random_cell(name, seed, use_bias=True):
    """A float64 cell with O(1) random weights and random (nonzero) biases."""
    init = gz.models.InitSpec(scheme="normal", std=0.6, gate_bias=0.3 * seed - 0.5)
    opts = {"alpha": 0.7} if name == "leaky" else {}
    cell = gz.make_cell(
        name, D_IN, D_H, rngs=nnx.Rngs(seed), init=init, use_bias=use_bias,
        param_dtype=jnp.float64, **opts,
    )
    if use_bias:  # make every bias nonzero so its Jacobian is exercised
        params = nnx.state(cell, nnx.Param)
        key = jax.random.key(100 + seed)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            if path[0].key.startswith("b"):
                key, sub = jax.random.split(key)
                leaf_val = leaf + 0.3 * jax.random.normal(sub, leaf.shape, leaf.dtype)
                getattr(cell, path[0].key)[...] = leaf_val
    return cell


def random_example(cell, seed):
    k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(seed), 7))
    like = cell.initialize_carry((D_IN,))
    leaves, treedef = jax.tree_util.tree_flatten(like)
    keys = jax.random.split(k1, len(leaves))
    carry = treedef.unflatten(
        [0.8 * jax.random.normal(k, leaf.shape, jnp.float64)
         for k, leaf in zip(keys, leaves, strict=True)]
    )
    return carry, jax.random.normal(k2, (D_IN,), jnp.float64)


def full_jacobian(cell, carry, x):
    flat = flatten_carry(carry)
    return jax.jacrev(lambda v: flatten_carry(cell(unflatten_carry(v, carry), x)[0]))(flat)


def params_by_name(tree):
    return {path[0].key: leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


# --------------------------------------------------------------------------------------------
# State Jacobians
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_closed_form_state_jacobians_match_jacrev(name, use_bias, x64):
    for seed in range(2):
        cell = random_cell(name, seed, use_bias)
        carry, x = random_example(cell, seed)
        A, B = jac.state_jacobians(cell, carry, x)
        n = D_H * (2 if name == "lstm" else 1)
        assert A.shape == B.shape == (n, n) and A.dtype == jnp.float64
        assert rel(A + B, full_jacobian(cell, carry, x)) <= 1e-8
        fn = gz.models.cell_fn(cell)
        A_ad, B_ad = jac.autodiff_split(fn.step, fn.params, carry, x)
        assert rel(A, A_ad) <= 1e-8
        if name in ("elman", "leaky"):
            assert float(jnp.abs(B_ad).max()) == 0.0 and float(jnp.abs(B).max()) == 0.0
        else:
            assert rel(B, B_ad) <= 1e-8
            assert float(jnp.linalg.norm(B)) > 1e-3  # the split is not trivial


def test_autodiff_split_is_linear_in_eps(x64):
    # J(eps) = A + eps B for the deformed step, at any eps (docs/theory.md §3.4 recipe 2)
    cell = random_cell("gru", 1)
    carry, x = random_example(cell, 1)
    fn = gz.models.cell_fn(cell)
    A, B = jac.autodiff_split(fn.step, fn.params, carry, x)
    for eps in (0.0, 0.37, 1.0, 2.5):
        J = jax.jacrev(lambda h, e=eps: fn.step(fn.params, h, x, eps=e)[0])(carry)
        assert rel(J, A + eps * B) <= 1e-12


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_param_jacobians_match_jacrev(name, use_bias, x64):
    seed = int(use_bias)
    cell = random_cell(name, seed, use_bias)
    carry, x = random_example(cell, seed)
    fn = gz.models.cell_fn(cell)
    ref = params_by_name(jax.jacrev(lambda p: flatten_carry(fn.step(p, carry, x)[0]))(fn.params))
    got = jac.param_jacobians(cell, carry, x)
    assert set(got) == set(ref)
    assert use_bias or not any(k.startswith("b") for k in got)
    for key, value in ref.items():
        assert got[key].shape == value.shape, key
        assert rel(got[key], value) <= 1e-8, key
        assert float(jnp.abs(value).max()) > 1e-4, key  # no parameter is trivially zero


@pytest.mark.slow
def test_state_jacobians_under_jit_and_vmap_and_dtype():
    # float32 in, float32 out; vmapped and jitted closed forms equal the per-example ones
    cell = gz.make_cell("lstm", D_IN, D_H, rngs=nnx.Rngs(0))
    keys = jax.random.split(jax.random.key(0), 3)
    carry = (jax.random.normal(keys[0], (4, D_H)), jax.random.normal(keys[1], (4, D_H)))
    xs = jax.random.normal(keys[2], (4, D_IN))
    batched = jax.jit(jax.vmap(lambda c, x: jac.state_jacobians(cell, c, x)))(carry, xs)
    assert batched[0].shape == (4, 2 * D_H, 2 * D_H) and batched[0].dtype == jnp.float32
    one = jac.state_jacobians(cell, (carry[0][2], carry[1][2]), xs[2])
    np.testing.assert_allclose(batched[0][2], one[0], atol=1e-6)
    np.testing.assert_allclose(batched[1][2], one[1], atol=1e-6)
    fn = gz.models.cell_fn(cell)
    split = jax.jit(jax.vmap(lambda c, x: jac.autodiff_split(fn.step, fn.params, c, x)))
    A, B = split(carry, xs)
    assert A.dtype == jnp.float32
    np.testing.assert_allclose(A, batched[0], atol=1e-5)
    np.testing.assert_allclose(B, batched[1], atol=1e-5)
    pj = jax.jit(jax.vmap(lambda c, x: jac.param_jacobians(cell, c, x)))(carry, xs)
    assert pj["W_f"].shape == (4, 2 * D_H, D_H, D_H) and pj["W_f"].dtype == jnp.float32


def test_bad_inputs_are_clear_errors():
    cell = gz.make_cell("vector", D_IN, D_H, rngs=nnx.Rngs(0))
    h, x = jnp.zeros(D_H), jnp.zeros(D_IN)
    with pytest.raises(ValueError, match="unknown compat 'paper'"):
        jac.state_jacobians(cell, h, x, compat="paper")
    with pytest.raises(ValueError, match="unbatched"):
        jac.state_jacobians(cell, jnp.zeros((2, D_H)), jnp.zeros((2, D_IN)))
    lstm = gz.make_cell("lstm", D_IN, D_H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="paper-code.*not for LSTM"):
        jac.state_jacobians(lstm, (h, h), x, compat="paper-code")
    adapter = gz.make_cell("flax-gru", D_IN, D_H, rngs=nnx.Rngs(0))
    assert jac.has_closed_form(cell) and not jac.has_closed_form(adapter)
    with pytest.raises(ValueError, match="autodiff_split"):
        jac.state_jacobians(adapter, h, x)
    with pytest.raises(ValueError, match="FlaxGRU"):
        jac.param_jacobians(adapter, h, x)
    As = jnp.zeros((3, 4, 4))
    with pytest.raises(ValueError, match="unknown compat 'forward'"):
        jac.transport(As, compat="forward")
    with pytest.raises(ValueError, match="same shape"):
        jac.product_first_order(As, jnp.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="unknown norm"):
        jac.truncation_error(As, As, jnp.ones(2), norm="nuc")


def test_user_registered_closed_form_is_dispatched():
    class Twice(gz.Leaky):  # a subclass with its own rule overrides the inherited one
        pass

    @jac.register_state_jacobians(Twice)
    def _rule(cell, carry, x, convention):
        n = carry.shape[0]
        return 2.0 * jnp.eye(n), jnp.zeros((n, n))

    cell = Twice(2, 3, rngs=nnx.Rngs(0))
    A, B = jac.state_jacobians(cell, jnp.zeros(3), jnp.zeros(2))
    np.testing.assert_array_equal(A, 2 * np.eye(3))
    leaky = gz.Leaky(2, 3, rngs=nnx.Rngs(0))
    assert float(jnp.abs(jac.state_jacobians(leaky, jnp.zeros(3), jnp.zeros(2))[0]).max()) != 2.0


# --------------------------------------------------------------------------------------------
# The paper-code convention (docs/theory.md §2.3 item 1, §7 claim 13)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["leaky", "scalar", "vector", "gru"])
def test_paper_code_convention(name, x64):
    for seed in range(2):
        cell = random_cell(name, seed)
        h, x = random_example(cell, seed)
        A, B = jac.state_jacobians(cell, h, x)
        A_c, B_c = jac.state_jacobians(cell, h, x, compat="paper-code")
        np.testing.assert_array_equal(A_c, A)
        alpha = cell.time_scale(h, x)
        # independent: B_exact - B_code = diag(h_t - h_{t-1}) ∂alpha/∂h (the term through alpha)
        h_t = cell(h, x)[0]
        dalpha = jax.jacrev(lambda v: cell.time_scale(v, x))(h)
        np.testing.assert_allclose(B - B_c, (h_t - h)[:, None] * dalpha, atol=1e-13)
        if name != "gru":  # B_code = (I - Γ_t) B_exact, row by row
            np.testing.assert_allclose(B_c, (1.0 - alpha)[:, None] * B, atol=1e-14)
        else:  # the reset-gate term is unchanged
            assert rel(B_c, (1.0 - alpha)[:, None] * B) > 1e-3


# --------------------------------------------------------------------------------------------
# Products: F(eps), L1, truncation (docs/theory.md §3.2)
# --------------------------------------------------------------------------------------------


def trajectory_factors(cell, seed, T=10):
    """Closed-form (As, Bs) and jacrev Js along a random trajectory, earliest step first."""
    carry, _ = random_example(cell, seed)
    xs = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 50), (T, D_IN), jnp.float64)

    @jax.jit  # one compiled program instead of many small eager ones
    def factors(carry, xs):
        _, prevs = jax.lax.scan(lambda c, x: (cell(c, x)[0], c), carry, xs)
        As, Bs = jax.vmap(lambda c, x: jac.state_jacobians(cell, c, x))(prevs, xs)
        Js = jax.vmap(lambda c, x: full_jacobian(cell, c, x))(prevs, xs)
        return As, Bs, Js

    return (*factors(carry, xs), (carry, xs))


def brute_product(mats, order="temporal"):
    out = np.eye(mats.shape[-1])
    for M in np.asarray(mats):
        out = M @ out if order == "temporal" else out @ M
    return out


def brute_l1(As, Bs):
    """Σ_i S_{i+1} B_i P_{i-1} with explicit prefix and suffix products (Python loops)."""
    As, Bs = np.asarray(As), np.asarray(Bs)
    n = len(As)
    total = np.zeros_like(As[0])
    for i in range(n):
        total += brute_product(As[i + 1 :]) @ Bs[i] @ brute_product(As[:i])
    return total


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scalar", "vector", "gru", "lstm"])
def test_deformed_product_transport_and_first_order(name, x64):
    cell = random_cell(name, 2)
    As, Bs, Js, (h0, xs) = trajectory_factors(cell, 2)
    # F(1) is the exact transport ∂h_T/∂h_0, itself the jacrev of the unrolled map
    exact = jac.transport(Js)
    assert rel(jac.deformed_product(As, Bs, 1.0), exact) <= 1e-10
    flat0 = flatten_carry(h0)

    def unrolled(v):
        return flatten_carry(jax.lax.scan(lambda c, x: (cell(c, x)[0], None),
                                             unflatten_carry(v, h0), xs)[0])

    assert rel(exact, jax.jit(jax.jacrev(unrolled))(flat0)) <= 1e-10
    np.testing.assert_allclose(exact, brute_product(Js), rtol=1e-12, atol=1e-14)
    # L1 = prefix/suffix sum = d/deps F at 0 (jvp)
    F0, L1 = jac.product_first_order(As, Bs)
    F0_jvp, L1_jvp = jax.jvp(lambda e: jac.deformed_product(As, Bs, e), (0.0,), (1.0,))
    assert rel(F0, F0_jvp) <= 1e-12 and rel(L1, L1_jvp) <= 1e-8
    assert rel(L1, brute_l1(As, Bs)) <= 1e-10
    np.testing.assert_array_equal(jac.frechet_l1(As, Bs), L1)
    # truncation error: O(eps^2), slope 2.00 ± 0.05 on [1e-5, 1e-3]
    eps = jnp.logspace(-5, -3, 9)
    E = jac.truncation_error(As, Bs, eps)
    slope = float(jac.loglog_slope(eps, E))
    assert abs(slope - 2.0) <= 0.05, slope


def test_reversed_order_is_the_paper_code_product(x64):
    cell = random_cell("vector", 3)
    As, Bs, Js, _ = trajectory_factors(cell, 3, T=6)
    np.testing.assert_allclose(
        jac.transport(Js, compat="paper-code"), brute_product(Js, "reversed"), rtol=1e-12,
        atol=1e-14)
    _, L1r = jac.product_first_order(As, Bs, compat="paper-code")
    _, L1r_jvp = jax.jvp(
        lambda e: jac.deformed_product(As, Bs, e, compat="paper-code"), (0.0,), (1.0,)
    )
    assert rel(L1r, L1r_jvp) <= 1e-10
    # the two orders differ in general (docs/theory.md §2.3 item 2)
    assert rel(jac.transport(Js, compat="paper-code"), jac.transport(Js)) > 1e-3
    eps = jnp.logspace(-5, -3, 5)
    slope = jac.loglog_slope(eps, jac.truncation_error(As, Bs, eps, compat="paper-code", norm="2"))
    assert abs(float(slope) - 2.0) <= 0.05


@pytest.mark.slow
def test_products_edge_cases_and_no_retrace(x64):
    eye = np.eye(3)
    empty = jnp.zeros((0, 3, 3))
    np.testing.assert_array_equal(jac.transport(empty), eye)
    F0, L1 = jac.product_first_order(empty, empty)
    np.testing.assert_array_equal(F0, eye)
    np.testing.assert_array_equal(L1, 0 * eye)
    # a single factor: F(eps) = A + eps B exactly, L1 = B
    A, B = jax.random.normal(jax.random.key(0), (2, 1, 3, 3), jnp.float64)
    np.testing.assert_allclose(jac.frechet_l1(A, B), B[0], atol=1e-15)
    np.testing.assert_allclose(jac.deformed_product(A, B, 0.3), A[0] + 0.3 * B[0], atol=1e-15)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def l1(As, Bs):
        return jac.frechet_l1(As, Bs)

    for seed in range(3):
        As, Bs = jax.random.normal(jax.random.key(seed), (2, 4, 3, 3), jnp.float64)
        l1(As, Bs)
    assert float(jac.loglog_slope(jnp.array([1.0, 10.0, 100.0]), jnp.array([2.0, 200.0, 2e4]))) \
        == pytest.approx(2.0)


def test_old_switch_names_warn_and_name_compat():
    cell = gz.make_cell("vector", D_IN, D_H, rngs=nnx.Rngs(0))
    h, x = jnp.full(D_H, 0.1), jnp.full(D_IN, 0.2)
    with pytest.warns(DeprecationWarning, match="use compat"):
        old = jac.state_jacobians(cell, h, x, convention="paper-code")
    for a, b in zip(old, jac.state_jacobians(cell, h, x, compat="paper-code"), strict=True):
        assert jnp.array_equal(a, b)
    As = jax.random.normal(jax.random.key(0), (3, 4, 4))
    Bs = jax.random.normal(jax.random.key(1), (3, 4, 4))
    for fn in (jac.transport, jac.frechet_l1):
        args = (As,) if fn is jac.transport else (As, Bs)
        with pytest.warns(DeprecationWarning, match="compat='paper-code'"):
            old = fn(*args, order="reversed")
        assert jnp.array_equal(old, fn(*args, compat="paper-code"))
    with pytest.warns(DeprecationWarning, match="product_first_order"):
        old = jac.first_order(As, Bs)
    for a, b in zip(old, jac.product_first_order(As, Bs), strict=True):
        assert jnp.array_equal(a, b)
