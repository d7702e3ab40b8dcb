"""sLSTM (xLSTM): equations, the gate protocol's A/B split, closed-form Jacobians, numerics,
training and the instruments; every claim against an independent computation (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import check_first_order_against_definition, data, make_model, model_fns

import gatezoo as gz
from gatezoo.models import SLSTM, flatten_carry, unflatten_carry
from gatezoo.models.protocol import output_is_state

D_IN, D_H = 3, 6
VARIANTS = [("sigmoid", 1), ("sigmoid", 2), ("exp", 3)]


def _cell(forget="sigmoid", heads=1, seed=0, dtype=jnp.float64, std=0.6, **kw):
    init = gz.models.InitSpec(scheme="normal", std=std, gate_bias=0.3)
    return gz.make_cell("slstm", D_IN, D_H, rngs=nnx.Rngs(seed), init=init, param_dtype=dtype,
                        num_heads=heads, forget=forget, **kw)


def _state(seed, batch=(), positive_n=True, dtype=jnp.float64):
    """A random carry ``(c, n, m, h)`` (``n > 0`` as on reachable states) and input."""
    ks = jax.random.split(jax.random.key(seed), 5)
    c, n, m, h = (0.8 * jax.random.normal(k, batch + (D_H,), dtype) for k in ks[:4])
    if positive_n:
        n = jnp.abs(n) + 0.2
    return (c, n, m, h), jax.random.normal(ks[4], batch + (D_IN,), dtype)


def _dense(R):
    """Block-diagonal ``(hidden, hidden)`` from ``(heads, d, d)``, written out by hand."""
    R = np.asarray(R)
    out = np.zeros((D_H, D_H))
    d = R.shape[1]
    for k in range(R.shape[0]):
        out[k * d:(k + 1) * d, k * d:(k + 1) * d] = R[k]
    return out


def _reference_step(cell, carry, x):
    """The paper's equations in numpy, stabilised, with the recurrent matrices dense."""
    c, n, m, h = (np.asarray(a) for a in carry)
    x = np.asarray(x)
    arr = lambda name: np.asarray(getattr(cell, name)[...])  # noqa: E731
    pre = {k: x @ arr(f"U_{k}") + h @ _dense(arr(f"R_{k}")) + arr(f"b_{k}") for k in "zifo"}
    log_f = -np.logaddexp(0.0, -pre["f"]) if cell.forget == "sigmoid" else pre["f"]
    m_new = np.maximum(log_f + m, pre["i"])
    i, f = np.exp(pre["i"] - m_new), np.exp(log_f + m - m_new)
    o = 1.0 / (1.0 + np.exp(-pre["o"]))
    c_new = f * c + i * np.tanh(pre["z"])
    n_new = f * n + i
    return (c_new, n_new, m_new, o * c_new / n_new), (i, f, np.tanh(pre["z"]), pre, log_f)


def _full_jacobian(cell, carry, x):
    flat = flatten_carry(carry)
    return jax.jacrev(lambda v: flatten_carry(cell(unflatten_carry(v, carry), x)[0]))(flat)


# -- registry, construction, errors ----------------------------------------------------------

def test_registered_exported_and_bad_options_are_one_line_errors():
    assert "slstm" in gz.cell_names() and gz.models.SLSTM is SLSTM
    assert "SLSTM" in gz.models.__all__
    cell = gz.make_cell("slstm", 2, 8, rngs=nnx.Rngs(0), num_heads=4, forget="exp")
    assert isinstance(cell, SLSTM) and cell.R_i.shape == (4, 2, 2) and cell.U_o.shape == (2, 8)
    assert gz.models.is_gated(cell) and gz.models.gates_read_state(cell)
    for heads in (3, 0, 2.0, True):
        with pytest.raises(ValueError, match="num_heads must be a positive integer dividing"):
            gz.make_cell("slstm", 2, 8, rngs=nnx.Rngs(0), num_heads=heads)
    with pytest.raises(ValueError, match="forget must be one of"):
        gz.make_cell("slstm", 2, 8, rngs=nnx.Rngs(0), forget="tanh")
    nobias = gz.make_cell("slstm", 2, 4, rngs=nnx.Rngs(0), use_bias=False)
    assert nobias.b_z is None and nobias.b_f is None
    nobias(nobias.initialize_carry((1, 2)), jnp.ones((1, 2)))


def test_gate_bias_sets_the_same_initial_forget_gate_for_both_kinds():
    spec = gz.models.InitSpec(gate_bias=-2.0)  # alpha pre-activation -2: retention sigmoid(2)
    sig = gz.make_cell("slstm", 2, 4, rngs=nnx.Rngs(0), init=spec)
    exp = gz.make_cell("slstm", 2, 4, rngs=nnx.Rngs(0), init=spec, forget="exp")
    np.testing.assert_allclose(jax.nn.sigmoid(sig.b_f[...]), jax.nn.sigmoid(2.0), rtol=1e-6)
    np.testing.assert_allclose(jnp.exp(exp.b_f[...]), jax.nn.sigmoid(2.0), rtol=1e-6)
    chrono = gz.make_cell("slstm", 2, 50, rngs=nnx.Rngs(0),
                          init=gz.models.InitSpec(gate_bias="chrono", chrono_tmax=30.0))
    np.testing.assert_allclose(chrono.b_f[...], -chrono.b_i[...])
    assert float(chrono.b_f[...].min()) >= 0.0


# -- the equations -----------------------------------------------------------------------------

@pytest.mark.parametrize("forget,heads", VARIANTS)
def test_step_follows_the_papers_equations(forget, heads, x64):
    cell = _cell(forget, heads, seed=heads)
    carry, x = _state(heads, batch=(4,))
    (c, n, m, h), y = cell(carry, x)
    ref, (i, f, _, pre, log_f) = _reference_step(cell, carry, x)
    for got, want in zip((c, n, m, h), ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert y is h
    assert np.all(np.maximum(i, f) == 1.0)  # the stabiliser: one of the gates is 1
    # both branches of the maximum occur on this probe
    kept = log_f + np.asarray(carry[2])
    assert np.any(kept > pre["i"]) and np.any(kept < pre["i"])


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_stabiliser_leaves_h_unchanged_over_a_sequence(forget, x64):
    """Unstabilised c~, n~ (no m) give the same h at every step; c = e^{-m} c~, n = e^{-m} n~."""
    cell = _cell(forget, 2, seed=4, std=0.4)
    xs = jax.random.normal(jax.random.key(5), (12, 2, D_IN), jnp.float64)
    carry = cell.initialize_carry((2, D_IN))
    cb, nb = np.zeros((2, D_H)), np.zeros((2, D_H))
    for x in xs:
        _, (i, f, z, pre, log_f) = _reference_step(cell, carry, x)
        f_raw = np.exp(log_f)
        cb, nb = f_raw * cb + np.exp(pre["i"]) * z, f_raw * nb + np.exp(pre["i"])
        carry, y = cell(carry, x)
        o = 1.0 / (1.0 + np.exp(-pre["o"]))
        np.testing.assert_allclose(y, o * cb / nb, rtol=1e-10, atol=1e-12)
        scale = np.exp(-np.asarray(carry[2]))
        np.testing.assert_allclose(carry[0], scale * cb, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(carry[1], scale * nb, rtol=1e-10)


def test_runs_in_nnx_rnn_and_sequence_model_alike():
    cell = gz.make_cell("slstm", D_IN, D_H, rngs=nnx.Rngs(0), num_heads=2)
    xs = jax.random.normal(jax.random.key(1), (4, 9, D_IN))
    ref = nnx.RNN(cell)(xs)
    model = gz.SequenceModel(cell, 2, readout="all", rngs=nnx.Rngs(2))
    for eps in (None, 0.5):
        ys, carries = model.unroll_states(xs, eps=eps)
        np.testing.assert_allclose(np.swapaxes(ys, 0, 1), ref, atol=1e-6)
    assert len(carries) == 4 and carries[3].shape == (9, 4, D_H)
    assert model(xs).shape == (4, 9, 2)
    assert output_is_state(cell, D_IN)


# -- the gate protocol and the time scale -------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_gate_protocol_check_passes(dtype, x64):
    for forget, heads in VARIANTS:
        gz.models.check_gate_protocol(_cell(forget, heads, dtype=dtype), D_IN)


@pytest.mark.parametrize("forget,heads", VARIANTS)
def test_split_call_keeps_value_and_alpha_is_the_weight_of_new_content(forget, heads, x64):
    cell = _cell(forget, heads, seed=1)
    carry, x = _state(7, batch=(5,))
    ref, _ = cell(carry, x)
    for eps in (0.0, 0.5, 1.0):
        out, _ = cell.split_call(carry, x, gz.models.deform(carry, eps))
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)
    alpha = cell.time_scale(carry, x)
    assert alpha.shape == (5, D_H) and bool(jnp.all((alpha > 0) & (alpha <= 1)))
    # r_t = c_t / n_t is the convex combination (1 - alpha) r_{t-1} + alpha z_t
    _, (i, f, z, _, _) = _reference_step(cell, carry, x)
    r_prev, r_new = carry[0] / carry[1], ref[0] / ref[1]
    np.testing.assert_allclose(r_new, (1 - alpha) * r_prev + alpha * z, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(alpha, i / ref[1], rtol=1e-13)
    np.testing.assert_allclose(1.0 - alpha, f * carry[1] / ref[1], rtol=1e-12)
    # from the zero carry all is new content; on any state alpha stays in [0, 1]
    zero = cell.initialize_carry((5, D_IN))
    np.testing.assert_allclose(cell.time_scale(zero, x), 1.0, rtol=1e-14)
    wild, _ = _state(8, batch=(5,), positive_n=False)
    a = cell.time_scale(wild, x)
    assert bool(jnp.all((a >= 0) & (a <= 1)))


# -- A + B = J, the closed form, B != 0 ---------------------------------------------------------

@pytest.mark.parametrize("forget,heads", VARIANTS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_split_sums_to_full_jacobian_and_closed_form_matches(forget, heads, use_bias, x64):
    for seed in range(3):
        cell = _cell(forget, heads, seed=seed, use_bias=use_bias)
        carry, x = _state(10 + seed, positive_n=seed != 2)  # seed 2: arbitrary-sign n
        fn = gz.models.cell_fn(cell)
        A, B = gz.jacobians.autodiff_split(fn.step, fn.params, carry, x)
        J = _full_jacobian(cell, carry, x)
        assert A.shape == B.shape == (4 * D_H, 4 * D_H) and A.dtype == jnp.float64
        scale = float(jnp.max(jnp.abs(J)))
        assert float(jnp.max(jnp.abs(A + B - J))) <= 1e-10 * scale
        assert float(jnp.linalg.norm(B)) > 1e-2  # the gates read the state
        assert float(jnp.max(jnp.abs(A[2 * D_H:3 * D_H]))) == 0.0  # m is a gate quantity
        assert gz.jacobians.has_closed_form(cell)
        A_c, B_c = gz.jacobians.state_jacobians(cell, carry, x)
        assert float(jnp.max(jnp.abs(A_c - A))) <= 1e-12 * scale
        assert float(jnp.max(jnp.abs(B_c - B))) <= 1e-12 * scale


def test_gate_frozen_jacobian_is_the_candidate_path(x64):
    """A by hand: diag(f') on c and n, i' z' R_z^T into c, the read o c / n into h."""
    cell = _cell("sigmoid", 2, seed=3)
    carry, x = _state(3)
    fn = gz.models.cell_fn(cell)
    A, _ = gz.jacobians.autodiff_split(fn.step, fn.params, carry, x)
    (c, n, _, _), (i, f, z, _, _) = _reference_step(cell, carry, x)
    Rz = _dense(cell.R_z[...]).T
    blk = lambda r, k: np.asarray(A[r * D_H:(r + 1) * D_H, k * D_H:(k + 1) * D_H])  # noqa: E731
    np.testing.assert_allclose(blk(0, 0), np.diag(f), atol=1e-14)
    np.testing.assert_allclose(blk(1, 1), np.diag(f), atol=1e-14)
    np.testing.assert_allclose(blk(0, 3), (i * (1 - z**2))[:, None] * Rz, atol=1e-13)
    assert np.all(blk(1, 3) == 0) and np.all(blk(0, 1) == 0) and np.all(A[:, 2 * D_H:3 * D_H] == 0)
    o = np.asarray(cell(carry, x)[0][3]) * n / c
    np.testing.assert_allclose(blk(3, 1), np.diag(-o * c * f / n**2), rtol=1e-10, atol=1e-13)


def test_jacobians_at_a_tie_of_the_stabiliser(x64):
    """log f + m_{t-1} = log i exactly: closed form and autodiff share jnp.maximum's 1/2."""
    cell = _cell("exp", 1, seed=0)
    for k in "if":  # i~ = f~ = 0 for any h, x: a tie at m_{t-1} = 0
        for p in ("U", "R", "b"):
            getattr(cell, f"{p}_{k}")[...] = jnp.zeros_like(getattr(cell, f"{p}_{k}")[...])
    (c, n, _, h), x = _state(1)
    carry = (c, n, jnp.zeros(D_H), h)
    fn = gz.models.cell_fn(cell)
    A, B = gz.jacobians.autodiff_split(fn.step, fn.params, carry, x)
    A_c, B_c = gz.jacobians.state_jacobians(cell, carry, x)
    np.testing.assert_allclose(A_c, A, atol=1e-14)
    np.testing.assert_allclose(B_c, B, atol=1e-14)
    dm_dm = np.diag(np.asarray(B[2 * D_H:3 * D_H, 2 * D_H:3 * D_H]))
    np.testing.assert_allclose(dm_dm, 0.5)
    np.testing.assert_allclose(A + B, _full_jacobian(cell, carry, x), atol=1e-14)


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_jacobians_from_the_zero_carry(forget, x64):
    """An empty memory (n = 0) starts the stabiliser at log i; the closed form follows, and the
    h row is the derivative of o (f c_0 + i z) / (f n_0 + i) of the unstabilised gates."""
    cell = _cell(forget, 2, seed=5)
    zero = cell.initialize_carry((D_IN,))
    _, x = _state(5)
    new, _ = cell(zero, x)
    np.testing.assert_allclose(new[1], 1.0, rtol=1e-15)  # i' = 1, n_1 = 1
    np.testing.assert_allclose(new[2], _reference_step(cell, zero, x)[1][3]["i"], rtol=1e-15)
    fn = gz.models.cell_fn(cell)
    A, B = gz.jacobians.autodiff_split(fn.step, fn.params, zero, x)
    A_c, B_c = gz.jacobians.state_jacobians(cell, zero, x)
    np.testing.assert_allclose(A_c, A, atol=1e-12)
    np.testing.assert_allclose(B_c, B, atol=1e-12)
    J = _full_jacobian(cell, zero, x)
    np.testing.assert_allclose(A + B, J, atol=1e-12)
    _, (_, _, z, pre, log_f) = _reference_step(cell, zero, x)
    o = 1.0 / (1.0 + np.exp(-pre["o"]))
    ratio = np.exp(log_f - pre["i"])  # f / i of the unstabilised gates, m_0 = 0
    hc, hn = J[3 * D_H:, :D_H], J[3 * D_H:, D_H:2 * D_H]
    np.testing.assert_allclose(np.diag(hc), o * ratio, rtol=1e-12)
    np.testing.assert_allclose(np.diag(hn), -o * z * ratio, rtol=1e-12)


def test_closed_form_under_jit_and_vmap_and_paper_code_refused():
    cell = gz.make_cell("slstm", D_IN, D_H, rngs=nnx.Rngs(0), num_heads=3)
    carry, x = _state(2, batch=(4,), dtype=jnp.float32)
    A, B = jax.jit(jax.vmap(lambda c, v: gz.jacobians.state_jacobians(cell, c, v)))(carry, x)
    assert A.shape == (4, 4 * D_H, 4 * D_H) and A.dtype == jnp.float32
    fn = gz.models.cell_fn(cell)
    A_ad, B_ad = jax.vmap(lambda c, v: gz.jacobians.autodiff_split(fn.step, fn.params, c, v))(
        carry, x)
    np.testing.assert_allclose(A, A_ad, atol=1e-5)
    np.testing.assert_allclose(B, B_ad, atol=1e-5)
    one = tuple(a[0] for a in carry)
    with pytest.raises(ValueError, match="paper-code.*not for SLSTM"):
        gz.jacobians.state_jacobians(cell, one, x[0], compat="paper-code")


# -- numerics ----------------------------------------------------------------------------------

@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
@pytest.mark.parametrize("bias_i,bias_f", [(50.0, 50.0), (-50.0, 50.0), (50.0, -50.0),
                                           (-50.0, -50.0), (-120.0, 0.0)])
def test_large_preactivations_give_finite_outputs_and_gradients(forget, bias_i, bias_f):
    cell = gz.make_cell("slstm", D_IN, D_H, rngs=nnx.Rngs(0), forget=forget, num_heads=2)
    cell.b_i[...] = jnp.full((D_H,), bias_i)
    cell.b_f[...] = jnp.full((D_H,), bias_f)
    model = gz.SequenceModel(cell, 1, readout="all", rngs=nnx.Rngs(1))
    xs = 3.0 * jax.random.normal(jax.random.key(0), (2, 30, D_IN))
    ys, carries = model.unroll_states(xs)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in (ys, *carries))
    prev = jax.tree.map(lambda a: a[:-1], carries)  # time-major: the states before steps 1..
    alpha = jax.vmap(cell.time_scale)(prev, jnp.swapaxes(xs, 0, 1)[1:])
    assert bool(jnp.all((alpha >= 0) & (alpha <= 1)))
    grads = nnx.grad(lambda m: jnp.mean(m(xs) ** 2))(model)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# -- instruments and training --------------------------------------------------------------------

def _definition(fns, params, xs, ys):
    """(G0, G1) = jax.jvp of jax.grad of the eps-deformed loss (docs/theory.md §3.4 recipe 4)."""
    grad = lambda e: jax.grad(lambda p: fns.loss(p, xs, ys, eps=e)[0])(params)  # noqa: E731
    return jax.jvp(grad, (0.0,), (1.0,))


@pytest.mark.parametrize("forget,readout", [("sigmoid", "last"), ("exp", "all")])
def test_first_order_gradients_match_forward_over_reverse_definition(forget, readout, x64):
    model = make_model("slstm", readout=readout, dtype=jnp.float64, seed=3, num_heads=1,
                       forget=forget)
    fns, params = model_fns(model)
    assert fns.first_order_streams is None  # the generic per-step linearisation
    xs, ys = data(1, 3, 6, 3, dtype=jnp.float64, readout=readout)
    check_first_order_against_definition(fns, params, xs, ys)


def test_trains_on_adding_with_expansion_and_gates_instruments():
    config = gz.TrainConfig(cell="slstm", hidden=8, task="adding", seq_len=10, steps=30,
                            batch_size=32, optimizer="adam", learning_rate=1e-2,
                            steps_per_call=30, eval_every=30, eval_batches=1, devices=1,
                            instruments=("expansion", "gates"))
    result = gz.train(config, progress=False)
    train = [ln for ln in result.history if ln["split"] == "train"]
    losses = np.array([ln["loss"] for ln in train])
    assert len(losses) == 30 and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < 0.8 * losses[:5].mean(), losses
    g1_over_g0 = gz.metric_name("expansion", None, "g1_over_g0")
    alpha_mean = gz.metric_name("gates", None, "alpha_mean")
    for key in (g1_over_g0, alpha_mean, gz.metric_name("expansion", None, "cos"),
                gz.metric_name("expansion", None, "g1_over_g0@cell.R_f"),
                gz.metric_name("gates", None, "tau_mean")):
        assert all(np.isfinite(ln[key]) for ln in train), key
    assert all(0.0 < ln[alpha_mean] <= 1.0 for ln in train)
    assert any(ln[g1_over_g0] > 0.0 for ln in train)  # B != 0 during training
