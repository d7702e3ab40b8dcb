"""docs/theory.md §7 claims 1-9, each checked against an independent computation in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatezoo as gz
import gatezoo.jacobians as jac
from gatezoo.models import flatten_carry, unflatten_carry

D_IN, D_H = 3, 5


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def make(name, seed=0, **opts):
    init = gz.models.InitSpec(scheme="normal", std=0.5, gate_bias=0.4)
    return gz.make_cell(
        name, D_IN, D_H, rngs=nnx.Rngs(seed), init=init, param_dtype=jnp.float64, **opts
    )


def example(cell, seed=0):
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 11), 3)
    h = 0.7 * jax.random.normal(keys[0], (D_H,), jnp.float64)
    x = jax.random.normal(keys[1], (D_IN,), jnp.float64)
    if isinstance(cell, gz.LSTM):
        return (0.7 * jax.random.normal(keys[2], (D_H,), jnp.float64), h), x
    return h, x


def central_difference_jacobian(f, v, step=1e-5):
    cols = [(f(v + step * e) - f(v - step * e)) / (2 * step) for e in np.eye(v.shape[0])]
    return jnp.stack(cols, axis=1)


def sigmoid_prime(s):
    return jax.nn.sigmoid(s) * (1 - jax.nn.sigmoid(s))


# claim 1 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["leaky", "scalar", "vector", "gru", "lstm"])
def test_claim1_closed_form_jacobians_equal_finite_differences(name, x64):
    cell = make(name, seed=1)
    carry, x = example(cell, 1)
    A, B = jac.state_jacobians(cell, carry, x)
    jit_step = jax.jit(lambda v: flatten_carry(cell(unflatten_carry(v, carry), x)[0]))
    fd = central_difference_jacobian(jit_step, flatten_carry(carry))
    assert rel(A + B, fd) <= 1e-8


# claim 2 ---------------------------------------------------------------------------------------
def test_claim2_structure_of_B(x64):
    leaky = make("leaky", alpha=0.6)
    h, x = example(leaky)
    fn = gz.models.cell_fn(leaky)
    assert float(jnp.abs(jac.autodiff_split(fn.step, fn.params, h, x)[1]).max()) == 0.0
    assert float(jnp.abs(jac.state_jacobians(leaky, h, x)[1]).max()) == 0.0

    for seed in range(3):  # scalar gate: rank one
        scalar = make("scalar", seed)
        h, x = example(scalar, seed)
        fn = gz.models.cell_fn(scalar)
        B_ad = jac.autodiff_split(fn.step, fn.params, h, x)[1]
        for B in (jac.state_jacobians(scalar, h, x)[1], B_ad):
            sv = np.linalg.svd(np.asarray(B), compute_uv=False)
            assert sv[0] > 1e-4 and sv[1] <= 1e-12 * sv[0]

    vector = make("vector", 2)  # vector gate: B = diag(phi - h) diag(sigma'(s)) W_g
    h, x = example(vector, 2)
    phi = jnp.tanh(h @ vector.W[...] + x @ vector.U[...] + vector.b[...])
    s = h @ vector.W_g[...] + x @ vector.U_g[...] + vector.b_g[...]
    assert s.shape == (D_H,)
    expected = jnp.diag(phi - h) @ jnp.diag(sigmoid_prime(s)) @ vector.W_g[...].T
    fn = gz.models.cell_fn(vector)
    assert rel(jac.autodiff_split(fn.step, fn.params, h, x)[1], expected) <= 1e-12
    assert np.linalg.matrix_rank(np.asarray(expected)) > 1


# claim 3 ---------------------------------------------------------------------------------------
def _elman_with_params_of(cell):
    elman = gz.Elman(D_IN, D_H, rngs=nnx.Rngs(9), param_dtype=jnp.float64)
    for name in ("W", "U", "b"):
        getattr(elman, name)[...] = getattr(cell, name)[...]
    return elman


def _jacrev_params(cell, h, x):
    fn = gz.models.cell_fn(cell)
    tree = jax.jacrev(lambda p: fn.step(p, h, x)[0])(fn.params)
    return {path[0].key: leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("name", ["leaky", "scalar", "vector"])
def test_claim3_immediate_gradient_factorisation(name, x64):
    cell = make(name, 3, **({"alpha": 0.35} if name == "leaky" else {}))
    h, x = example(cell, 3)
    alpha = cell.time_scale(h, x)
    closed = jac.param_jacobians(cell, h, x)
    auto = _jacrev_params(cell, h, x)
    vanilla = _jacrev_params(_elman_with_params_of(cell), h, x)  # the same a_t
    phi = jnp.tanh(h @ cell.W[...] + x @ cell.U[...] + cell.b[...])
    for p in ("W", "U", "b"):
        # Γ_t × (vanilla immediate derivative), against autodiff and the closed form
        expected = alpha.reshape((D_H,) + (1,) * (auto[p].ndim - 1)) * vanilla[p]
        assert rel(auto[p], expected) <= 1e-12
        assert rel(closed[p], expected) <= 1e-12
    # ∂⁺h/∂vec(W) = (Γ D) ⊗ h^T, with the theory's W = cell.W.T and row-major vec
    kron = np.kron(np.diag(alpha * (1 - phi**2)), np.asarray(h)[None, :])
    jw = np.asarray(auto["W"]).transpose(0, 2, 1).reshape(D_H, D_H * D_H)
    assert rel(jw, kron) <= 1e-12
    # gradient of a loss <δ, h_t>: row i of the theory's W-gradient (neuron i's incoming weights) is
    # the vanilla one scaled by alpha_i (the same alpha for every row for the scalar gate)
    delta = jax.random.normal(jax.random.key(4), (D_H,), jnp.float64)
    g_gated = jnp.einsum("q,qik->ki", delta, auto["W"])
    g_plain = jnp.einsum("q,qik->ki", delta, vanilla["W"])
    assert rel(g_gated, alpha[:, None] * g_plain) <= 1e-12
    if name != "vector":
        assert float(jnp.ptp(alpha)) == 0.0


# claim 4 ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_claim4_leaky_alpha_one_is_elman(x64):
    elman = gz.Elman(D_IN, D_H, rngs=nnx.Rngs(0), param_dtype=jnp.float64,
                     init=gz.models.InitSpec(scheme="normal", std=0.5))
    elman.b[...] = 0.3 * jax.random.normal(jax.random.key(3), (D_H,), jnp.float64)
    leaky = gz.Leaky(D_IN, D_H, alpha=1.0, rngs=nnx.Rngs(5), param_dtype=jnp.float64)
    nnx.update(leaky, nnx.state(elman, nnx.Param))  # same parameters
    xs = jax.random.normal(jax.random.key(1), (2, 7, D_IN), jnp.float64)
    # states, against a hand-written vanilla RNN
    W, U, b = (np.asarray(getattr(elman, n)[...]) for n in ("W", "U", "b"))
    h = np.zeros((2, D_H))
    hand = []
    for t in range(7):
        h = np.tanh(h @ W + np.asarray(xs[:, t]) @ U + b)
        hand.append(h)
    ys_e = nnx.RNN(elman)(xs)
    ys_l = nnx.RNN(leaky)(xs)
    np.testing.assert_allclose(ys_e, np.stack(hand, 1), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(ys_l, ys_e, rtol=1e-14, atol=1e-15)
    # Jacobians: J = D W
    h1, x1 = np.asarray(hand[3][0]), xs[0, 4]
    A_e, _ = jac.state_jacobians(elman, h1, x1)
    A_l, B_l = jac.state_jacobians(leaky, h1, x1)
    phi = np.tanh(h1 @ W + np.asarray(x1) @ U + b)
    np.testing.assert_allclose(A_l, (1 - phi**2)[:, None] * W.T, rtol=1e-13)
    np.testing.assert_allclose(A_l, A_e, rtol=1e-14)
    assert float(jnp.abs(B_l).max()) == 0.0
    # gradients of the same loss
    y = jax.random.normal(jax.random.key(2), (2, 7, D_H), jnp.float64)

    def loss(params, cell):
        graphdef, _, rest = nnx.split(cell, nnx.Param, ...)
        return jnp.sum((nnx.RNN(nnx.merge(graphdef, params, rest))(xs) - y) ** 2)

    g_e = jax.jit(jax.grad(loss), static_argnums=1)(nnx.state(elman, nnx.Param), elman)
    g_l = jax.jit(jax.grad(loss), static_argnums=1)(nnx.state(leaky, nnx.Param), leaky)
    for a, b_ in zip(jax.tree_util.tree_leaves(g_e), jax.tree_util.tree_leaves(g_l), strict=True):
        np.testing.assert_allclose(a, b_, rtol=1e-13, atol=1e-14)


# claim 5 ---------------------------------------------------------------------------------------
def _adjoints(cell, xs, targets):
    """λ_t = dL/dh_t through the offsets of SequenceModel.unroll_states, and δ_t = ∂ℓ_t/∂h_t."""
    model = gz.SequenceModel(cell, 1, rngs=nnx.Rngs(0))
    T = xs.shape[1]
    offsets = jnp.zeros((T, 1, D_H), jnp.float64)

    def loss(off):
        ys, _ = model.unroll_states(xs, offsets=off)
        return jnp.sum(jnp.sin(ys[:, 0] * targets)), ys  # L = Σ_t ℓ_t(h_t)

    lam, ys = jax.grad(loss, has_aux=True)(offsets)
    delta = jnp.cos(ys[:, 0] * targets) * targets  # ∇_{h_t} ℓ_t, directly
    return lam[:, 0], delta


@pytest.mark.slow
def test_claim5_pure_leak_kernel_and_heavy_ball_adjoint(x64):
    alpha, T = 0.3, 9
    cell = make("leaky", alpha=alpha)
    cell.W[...] = jnp.zeros((D_H, D_H))
    keys = jax.random.split(jax.random.key(7), 3)
    xs = jax.random.normal(keys[0], (1, T, D_IN), jnp.float64)
    targets = jax.random.normal(keys[1], (T, D_H), jnp.float64)
    # kernel: M_{t,k} = (1 - alpha)^{t-k} I exactly
    fn = gz.models.cell_fn(cell)
    step = jax.jit(lambda h, x: fn.step(fn.params, h, x)[0])
    jacobian = jax.jit(jax.jacrev(lambda h, x: fn.step(fn.params, h, x)[0]))
    carry = jnp.zeros(D_H)
    Js = []
    for t in range(T):
        Js.append(jacobian(carry, xs[0, t]))
        carry = step(carry, xs[0, t])
    for lag in (1, 4, T):
        np.testing.assert_allclose(
            jac.transport(jnp.stack(Js[:lag])), (1 - alpha) ** lag * np.eye(D_H), atol=1e-15
        )
    # adjoint = reverse-time heavy-ball accumulator with beta = 1 - alpha
    lam, delta = _adjoints(cell, xs, targets)
    weights = np.array([[(1 - alpha) ** (t - k) if t >= k else 0.0 for t in range(T)]
                        for k in range(T)])
    np.testing.assert_allclose(lam, weights @ np.asarray(delta), rtol=1e-13, atol=1e-15)
    v, beta, acc = np.zeros(D_H), 1 - alpha, []
    for k in reversed(range(T)):  # v_k = δ_k + β v_{k+1}
        v = np.asarray(delta[k]) + beta * v
        acc.append(v)
    np.testing.assert_allclose(lam, np.stack(acc[::-1]), rtol=1e-13, atol=1e-15)

    # time-varying scalar gate (W = 0 and W_g = 0, so alpha_t depends on x_t only)
    gate = make("scalar", 4)
    gate.W[...] = jnp.zeros((D_H, D_H))
    gate.W_g[...] = jnp.zeros((D_H, 1))
    lam, delta = _adjoints(gate, xs, targets)
    alphas = np.array([float(gate.time_scale(jnp.zeros(D_H), xs[0, t])[0]) for t in range(T)])
    assert np.ptp(alphas) > 1e-2
    weights = np.array([[np.prod(1 - alphas[k + 1 : t + 1]) if t >= k else 0.0
                         for t in range(T)] for k in range(T)])
    np.testing.assert_allclose(lam, weights @ np.asarray(delta), rtol=1e-12, atol=1e-15)


# claim 6 ---------------------------------------------------------------------------------------
def test_claim6_linearised_constant_alpha_decays_per_eigendirection(x64):
    alpha, L = 0.4, 12
    W = jax.random.normal(jax.random.key(0), (D_H, D_H), jnp.float64)
    W = 0.5 * (W + W.T) / np.sqrt(D_H)  # symmetric: real eigenpairs
    U = jax.random.normal(jax.random.key(1), (D_IN, D_H), jnp.float64)

    def linear_step(h, x):  # the leaky cell with phi = identity (the theory's W is W.T = W)
        return (1 - alpha) * h + alpha * (h @ W + x @ U)

    xs = jax.random.normal(jax.random.key(2), (L, D_IN), jnp.float64)
    jacobian, step = jax.jit(jax.jacrev(linear_step)), jax.jit(linear_step)
    h, Js = jnp.ones(D_H), []
    for t in range(L):
        Js.append(jacobian(h, xs[t]))
        h = step(h, xs[t])
    Js = jnp.stack(Js)
    K = (1 - alpha) * np.eye(D_H) + alpha * np.asarray(W).T
    lam, V = np.linalg.eigh(np.asarray(W))
    mu = (1 - alpha) + alpha * lam
    M_L = np.asarray(jac.transport(Js))
    np.testing.assert_allclose(M_L, np.linalg.matrix_power(K, L), atol=1e-13)
    np.testing.assert_allclose(np.linalg.eigvalsh((M_L + M_L.T) / 2), np.sort(mu**L), atol=1e-12)
    # M_ell v_i = mu_i^ell v_i, so log||M_ell v_i|| is linear in ell with slope log|mu_i|
    Ms, M = [], np.eye(D_H)
    for J in np.asarray(Js):
        M = J @ M
        Ms.append(M)
    lags = np.arange(1, L + 1)
    for i in range(D_H):
        norms = np.array([np.linalg.norm(M @ V[:, i]) for M in Ms])
        np.testing.assert_allclose(norms, np.abs(mu[i]) ** lags, rtol=1e-9, atol=1e-15)
        if abs(mu[i]) > 0.2:  # far above round-off over all lags
            slope = np.polyfit(lags, np.log(norms), 1)[0]
            assert slope == pytest.approx(np.log(abs(mu[i])), abs=1e-9)
    assert (np.abs(mu) > 0.2).sum() >= 3


# claim 7 ---------------------------------------------------------------------------------------
def test_claim7_scalar_gates_commute_with_K_vector_gates_do_not(x64):
    d, steps = 12, 15
    keys = jax.random.split(jax.random.key(3), 3)
    K = np.asarray(jax.random.normal(keys[0], (d, d), jnp.float64)) / np.sqrt(d)
    a_scalar = np.asarray(jax.random.uniform(keys[1], (steps,), jnp.float64, 0.05, 0.95))
    a_vector = np.asarray(jax.random.uniform(keys[2], (steps, d), jnp.float64, 0.05, 0.95))
    I = np.eye(d)
    M_s = np.asarray(jac.transport(jnp.stack([(1 - a) * I + a * K for a in a_scalar])))
    M_v = np.asarray(jac.transport(jnp.stack([np.diag(1 - a) + np.diag(a) @ K for a in a_vector])))

    def commutator(M):
        return np.linalg.norm(M @ K - K @ M) / (np.linalg.norm(M) * np.linalg.norm(K))

    assert commutator(M_s) <= 1e-14
    assert commutator(M_v) >= 1e-2
    # the scalar-gated product keeps K's eigenvectors: V^{-1} M V is diagonal
    _, V = np.linalg.eig(K)
    D = np.linalg.solve(V, M_s @ V)
    assert np.abs(D - np.diag(np.diag(D))).max() <= 1e-10 * np.abs(np.diag(D)).max()


# claims 8 and 9 --------------------------------------------------------------------------------
def _factors(cell, T=12, seed=5):
    carry, _ = example(cell, seed)
    xs = jax.random.normal(jax.random.key(seed), (T, D_IN), jnp.float64)

    @jax.jit
    def run(carry, xs):
        _, prevs = jax.lax.scan(lambda c, x: (cell(c, x)[0], c), carry, xs)
        return jax.vmap(lambda c, x: jac.state_jacobians(cell, c, x))(prevs, xs)

    return run(carry, xs), (carry, xs)


@pytest.mark.parametrize("compat", ["exact", "paper-code"])
def test_claim8_frechet_derivative(compat, x64):
    (As, Bs), _ = _factors(make("scalar", 6))
    L1 = jac.frechet_l1(As, Bs, compat=compat)
    _, L1_jvp = jax.jvp(lambda e: jac.deformed_product(As, Bs, e, compat=compat), (0.0,), (1.0,))
    step = 1e-4
    L1_cd = (jac.deformed_product(As, Bs, step, compat=compat)
             - jac.deformed_product(As, Bs, -step, compat=compat)) / (2 * step)
    assert rel(L1, L1_jvp) <= 1e-8
    assert rel(L1, L1_cd) <= 1e-7  # the central difference has its own O(step^2) error
    assert float(jnp.linalg.norm(L1)) > 1e-6


@pytest.mark.parametrize("name", ["vector", "gru"])
def test_claim9_second_order_truncation(name, x64):
    cell = make(name, 7)
    (As, Bs), (carry, xs) = _factors(cell)
    eps = jnp.logspace(-5, -3, 9)
    E = jac.truncation_error(As, Bs, eps)
    assert abs(float(jac.loglog_slope(eps, E)) - 2.0) <= 0.05
    C2 = np.asarray(E / eps**2)
    assert C2.max() / C2.min() <= 1.05  # flat as eps -> 0

    # F(1) is the exact transport ∂h_T/∂h_0 of the unrolled cell
    def unrolled(h0):
        return jax.lax.scan(lambda c, x: (cell(c, x)[0], None), h0, xs)[0]

    assert rel(jac.deformed_product(As, Bs, 1.0), jax.jit(jax.jacrev(unrolled))(carry)) <= 1e-10
