"""minGRU, minLSTM, RG-LRU and S6: contract, initialisation, B = 0, diagonal lag products, scans.

Every mathematical claim is checked in float64 against an independent computation: the
first-order gate correction against ``jax.jvp`` in eps of the deformed loss's gradient, the
exact Jacobian products against the products of retentions read from the gate trace, the
associative scan against the sequential one and against the step-by-step cell.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import make_context

import gatezoo as gz
from gatezoo.instruments import lag_sensitivity
from gatezoo.instruments.expansion import first_order_gradients
from gatezoo.instruments.products import lag_products, probe_states
from gatezoo.instruments.steps import gate_trace

CELLS = ("mingru", "minlstm", "rglru", "s6")
OPTS = {"s6": {"d_state": 3}}


def _model(name, *, d_in=3, hidden=4, readout="all", dtype=jnp.float64, seed=0, **opts):
    cell = gz.make_cell(name, d_in, hidden, rngs=nnx.Rngs(seed), param_dtype=dtype,
                        **{**OPTS.get(name, {}), **opts})
    return gz.SequenceModel(cell, 2, readout=readout,
                            rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(seed), 1)))


def _task(T, readout="all"):
    """A user task with two outputs (MSE), every step or the last one."""
    def sampler(data, key, batch, split):
        kx, ky = jax.random.split(jax.random.fold_in(key, int(split == "test")))
        x = jax.random.normal(kx, (batch, T, 3))
        y = jax.random.normal(ky, (batch, T, 2) if readout == "all" else (batch, 2))
        return x, y
    return gz.Task("toy", "toy", 3, 2, T, readout, "mse", 1.0, "unit variance", sampler=sampler)


def _data(T, batch=2, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(kx, (batch, T, 3), jnp.float64),
            jax.random.normal(ky, (batch, T, 2), jnp.float64))


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def _max_abs(tree):
    return max(float(jnp.max(jnp.abs(a))) for a in _leaves(tree))


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(_leaves(a), _leaves(b), strict=True))


# -- contract and initialisation -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_flax_contract_and_gate_protocol(name, x64):
    cell = _model(name).cell
    x = jax.random.normal(jax.random.key(1), (2, 3), jnp.float64)
    carry = jax.random.normal(jax.random.key(2), cell.initialize_carry((2, 3)).shape, jnp.float64)
    h, y = cell(carry, x)
    assert h.shape == carry.shape and y.shape == (2, 4) and cell.num_feature_axes == 1
    assert gz.models.is_gated(cell)
    # the gates read no state: any gate_carry gives the same step
    h2, y2 = cell.split_call(carry, x, 100.0 * carry + 3.0)
    assert _max_diff((h, y), (h2, y2)) == 0.0
    # the step retains 1 - alpha of the state: h(c) - h(0) = (1 - alpha) c
    alpha = cell.time_scale(carry, x)
    h0, _ = cell(jnp.zeros_like(carry), x)
    assert np.allclose(h - h0, (1.0 - alpha) * carry, atol=1e-14)
    assert bool(jnp.all((alpha > 0) & (alpha < 1)))
    # runs inside Flax's own nnx.RNN unchanged
    rnn = nnx.RNN(cell)
    xs = jax.random.normal(jax.random.key(3), (2, 5, 3), jnp.float64)
    ys_flax = rnn(xs)
    ys_ours, _ = _model(name).unroll_states(xs)
    assert np.allclose(ys_flax, jnp.swapaxes(ys_ours, 0, 1), atol=1e-12)


@pytest.mark.slow
def test_papers_initialisations():
    rg = gz.make_cell("rglru", 3, 256, rngs=nnx.Rngs(0))
    a = np.asarray(rg.a_base())
    assert a.min() >= 0.9 - 1e-6 and a.max() <= 0.999 + 1e-6 and a.max() - a.min() > 0.05
    assert rg.c == 8.0
    s6 = gz.make_cell("s6", 3, 64, rngs=nnx.Rngs(0), d_state=5)
    A = -np.exp(np.asarray(s6.A_log[...]))
    assert np.allclose(A, -np.arange(1, 6)[None, :].repeat(64, 0), rtol=1e-6)
    dt = np.asarray(jax.nn.softplus(s6.b_dt[...]))  # Δ at zero input
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)
    assert dt.max() / dt.min() > 10  # spread over the range, log-uniform
    assert s6.initialize_carry((7, 3)).shape == (7, 64 * 5)
    # minLSTM: the gate-bias option puts sigmoid(s) on alpha at zero input
    ml = gz.make_cell("minlstm", 3, 4, rngs=nnx.Rngs(0), init=gz.models.InitSpec(gate_bias=-2.0))
    alpha = ml.time_scale(jnp.zeros(4), jnp.zeros(3))
    assert np.allclose(alpha, jax.nn.sigmoid(-2.0), atol=1e-6)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="scan must be one of"):
        gz.make_cell("mingru", 3, 4, rngs=nnx.Rngs(0), scan="parallel")
    with pytest.raises(ValueError, match="d_state"):
        gz.make_cell("s6", 3, 4, rngs=nnx.Rngs(0), d_state=0)
    with pytest.raises(ValueError, match="takes no option"):
        gz.make_cell("rglru", 3, 4, rngs=nnx.Rngs(0), d_state=2)
    with pytest.raises(ValueError, match="a_min"):
        gz.RGLRU(3, 4, a_min=0.5, a_max=1.0, rngs=nnx.Rngs(0))
    for name in CELLS:
        assert name in gz.cell_names()


# -- B = 0: the first-order gate correction vanishes ---------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_expansion_gives_g1_zero_and_g0_equal_to_the_gradient(name, x64):
    T = 6
    model = _model(name, readout="all")
    fns, params = gz.instruments.model_fns(model, _task(T))
    xs, ys = _data(T)
    # brute force: d/d eps of the gradient of the eps-deformed loss, by forward mode
    grad = lambda e: jax.grad(lambda p: fns.loss(p, xs, ys, eps=e)[0])(params)  # noqa: E731
    g_half, dg = jax.jit(lambda: jax.jvp(grad, (0.5,), (1.0,)))()
    g0, g1 = jax.jit(grad)(0.0), jax.jit(grad)(1.0)
    scale = _max_abs(g1)
    assert scale > 1e-3
    assert _max_abs(dg) <= 1e-14 * scale
    assert _max_diff(g0, g1) <= 1e-14 * scale and _max_diff(g_half, g1) <= 1e-14 * scale
    # the instrument, on the trainer's context (adjoints through zero offsets)
    ctx = make_context(fns, params, xs, ys)
    (inst,) = gz.make_instruments(["expansion"], fns)
    metrics, _ = jax.jit(lambda: inst.update(ctx, inst.init(params)))()
    assert float(metrics["g1_over_g0"]) <= 1e-14
    assert float(metrics["remainder"]) <= 1e-13
    assert abs(float(metrics["cos"]) - 1.0) <= 1e-13
    assert _max_diff(ctx.grads, g1) <= 1e-12 * scale
    # the cell declares B = 0, so G0/G1 come from the gradient alone (no adjoints read); the
    # full first-order recursion, forced to run, agrees with the declaration
    assert not fns.gates_read_state and not inst.needs_adjoints
    short = first_order_gradients(fns, params, xs, ctx.carries, None, ctx.grads)
    assert _max_abs(short.g1) == 0.0 and _max_diff(short.g0, ctx.grads) == 0.0
    full = first_order_gradients(fns._replace(gates_read_state=True), params, xs, ctx.carries,
                                 ctx.adjoints, ctx.grads)
    assert _max_abs(full.g1) <= 1e-14 * scale
    assert _max_diff(full.g0, g1) <= 1e-12 * scale


class LeakyGateReadingState(nnx.Module):
    """A user cell that declares ``gates_read_state = False`` although its gate reads h."""

    gates_read_state = False

    def __init__(self, d_in, hidden, *, rngs):
        self.in_features, self.hidden = d_in, hidden
        self.U = nnx.Param(0.5 * jax.random.normal(rngs.params(), (d_in, hidden)))
        self.W = nnx.Param(0.5 * jax.random.normal(rngs.params(), (hidden, hidden)))

    def time_scale(self, carry, x):
        return jax.nn.sigmoid(x @ self.U[...] + carry @ self.W[...])

    def split_call(self, carry, x, gate_carry):
        alpha = self.time_scale(gate_carry, x)
        new = (1 - alpha) * carry + alpha * jnp.tanh(x @ self.U[...])
        return new, new

    def __call__(self, carry, x):
        return self.split_call(carry, x, carry)

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1] + (self.hidden,))

    @property
    def num_feature_axes(self):
        return 1


@pytest.mark.slow
def test_a_false_claim_that_gates_read_no_state_is_refused():
    cell = LeakyGateReadingState(3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(gz.models.GateProtocolError,
                       match="LeakyGateReadingState.*gates_read_state"):
        gz.models.check_gate_protocol(cell, 3)
    cell.W[...] = jnp.zeros((4, 4))  # now the gate reads only x: the claim holds
    gz.models.check_gate_protocol(cell, 3)
    model = gz.SequenceModel(cell, 2, readout="all", rngs=nnx.Rngs(1))
    assert not gz.instruments.model_fns(model, _task(5))[0].gates_read_state


# -- single layer: exact lag products are products of retentions ----------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_lag_products_equal_products_of_retentions(name, x64):
    T, batch = 7, 2
    model = _model(name, readout="last")
    fns, params = gz.instruments.model_fns(model, _task(T, "last"))
    xs, _ = _data(T, batch)
    ys = jnp.zeros((batch, 2), jnp.float64)
    cp, prev, xs_t = probe_states(fns, params, xs, ys)
    keep = 1.0 - gate_trace(fns, cp, prev, xs_t)  # (T, batch, state)
    ends = jnp.array([T, T, T - 2])
    examples = jnp.array([0, 1, 1])
    n_lags = T - 1
    _, per_lag, valid = jax.jit(lambda: lag_products(
        fns, cp, prev, xs_t, ends, examples, n_lags, per_lag=lambda p, aux: (p, aux)
    ))()
    for n in range(3):
        t, b = int(ends[n]), int(examples[n])
        for ell in range(1, t):  # d h_t / d h_{t-ell} = diag(prod_{j=t-ell+1}^{t} keep_j)
            want = jnp.diag(jnp.prod(keep[t - ell:t, b], axis=0))
            got = per_lag[ell - 1, n]
            assert bool(valid[ell - 1, n])
            assert float(jnp.max(jnp.abs(got - want))) <= 1e-14
    # the lag-sensitivity instrument's spectral norm is the largest retention product
    sens = jax.jit(lambda: lag_sensitivity(fns, params, xs, ys))()
    logk = jnp.log(keep)
    for ell in (1, 3, T - 1):
        for e, t in enumerate(np.asarray(sens.ends)):
            if t - ell < 1:
                continue
            want = jnp.exp(jnp.sum(logk[t - ell:t], axis=0)).max(axis=-1)  # (batch,)
            assert np.allclose(sens.s[ell - 1, e], want, rtol=1e-12, atol=0)


# -- associative scan == sequential scan == the step-by-step cell ---------------------------------

@pytest.mark.slow
def test_linear_recurrence_scans_agree_in_values_and_gradients(x64):
    T = 19
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    a = jax.random.uniform(k1, (T, 2, 3), jnp.float64, 0.5, 1.0)
    b = jax.random.normal(k2, (T, 2, 3), jnp.float64)
    h0 = jax.random.normal(k3, (2, 3), jnp.float64)
    scan = jax.jit(gz.models.linear_recurrence, static_argnums=3)
    hs = {m: scan(a, b, h0, m) for m in gz.models.SCANS}
    loop = [np.asarray(h0)]
    for t in range(T):
        loop.append(np.asarray(a[t]) * loop[-1] + np.asarray(b[t]))
    assert np.allclose(hs["sequential"], np.stack(loop[1:]), atol=1e-13)
    assert np.allclose(hs["associative"], hs["sequential"], atol=1e-13)
    w = jax.random.normal(jax.random.key(4), (T, 2, 3), jnp.float64)
    grads = {m: jax.jit(jax.grad(
        lambda a, b, h, m=m: jnp.sum(w * gz.models.linear_recurrence(a, b, h, m)),
        argnums=(0, 1, 2)))(a, b, h0) for m in gz.models.SCANS}
    assert _max_diff(grads["associative"], grads["sequential"]) <= 1e-12
    with pytest.raises(ValueError, match="method must be one of"):
        gz.models.linear_recurrence(a, b, h0, "fast")


@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_sequence_paths_agree_in_values_gradients_and_adjoints(name, x64):
    T = 9
    xs, ys = _data(T)
    runs = {}
    for scan in gz.models.SCANS:
        fns, params = gz.instruments.model_fns(_model(name, seed=4, scan=scan), _task(T))
        runs[scan] = make_context(fns, params, xs, ys)
        # the eps path runs the cell step by step under lax.scan (no whole-sequence shortcut)
        step_grad = jax.grad(lambda p, f=fns: f.loss(p, xs, ys, eps=1.0)[0])(params)
        assert _max_diff(runs[scan].grads, step_grad) <= 1e-12
        assert _max_diff(runs[scan].carries, fns.loss(params, xs, ys, eps=1.0)[1]) <= 1e-12
    seq, par = runs["sequential"], runs["associative"]
    assert abs(float(seq.loss - par.loss)) <= 1e-13
    assert _max_diff(seq.grads, par.grads) <= 1e-12
    assert _max_diff(seq.adjoints, par.adjoints) <= 1e-12
    assert _max_abs(par.adjoints) > 1e-3


@pytest.mark.slow
def test_associative_scan_in_float32_on_a_long_sequence():
    T = 512
    xs = jax.random.normal(jax.random.key(0), (2, T, 3))
    out = {}
    for scan in gz.models.SCANS:
        model = _model("rglru", dtype=jnp.float32, readout="last", scan=scan)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss = lambda p, g=graphdef, r=rest: jnp.sum(nnx.merge(g, p, r)(xs) ** 2)  # noqa: E731
        out[scan] = jax.jit(jax.value_and_grad(loss))(params)
    (v_s, g_s), (v_p, g_p) = out["sequential"], out["associative"]
    assert abs(float(v_s - v_p)) <= 1e-4 * abs(float(v_s))
    assert _max_diff(g_s, g_p) <= 1e-4 * _max_abs(g_s)


# -- they learn ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_each_cell_learns_the_adding_task(name):
    config = gz.TrainConfig(
        cell=name, task="adding", seq_len=20, hidden=16, batch_size=32, steps=200, seeds=(0,),
        optimizer="adam", learning_rate=3e-2, steps_per_call=100, eval_every=200,
        eval_batches=2, devices=1, cell_options={"d_state": 4} if name == "s6" else {},
    )
    result = gz.train(config, progress=False)
    baseline = gz.make_task("adding", 20).baseline
    # held-out loss well below the 1/6 of predicting the mean (about 0.1-0.15 x on this run)
    assert float(result.final_eval["loss"][0]) < 0.4 * baseline


@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_closed_form_state_jacobians_match_autodiff(name, x64):
    cell = _model(name).cell
    h = jax.random.normal(jax.random.key(5), cell.initialize_carry((3,)).shape, jnp.float64)
    x = jax.random.normal(jax.random.key(6), (3,), jnp.float64)
    assert gz.jacobians.has_closed_form(cell)
    A, B = gz.jacobians.state_jacobians(cell, h, x)
    fn = gz.models.cell_fn(cell)
    A_ad, B_ad = gz.jacobians.autodiff_split(fn.step, fn.params, h, x)
    J = jax.jacrev(lambda v: cell(v, x)[0])(h)
    assert float(jnp.max(jnp.abs(A - A_ad))) <= 1e-14 and float(jnp.max(jnp.abs(B_ad))) == 0.0
    assert float(jnp.max(jnp.abs(A - J))) <= 1e-14 and float(jnp.max(jnp.abs(B))) == 0.0
    assert float(jnp.max(jnp.abs(A - jnp.diag(jnp.diag(A))))) == 0.0


@pytest.mark.slow
def test_auto_scan_is_sequential_on_a_cpu_and_the_cells_default_to_it():
    a, b = jnp.full((8, 2), 0.5), jnp.ones((8, 2))

    def primitives(method):
        jaxpr = jax.make_jaxpr(lambda: gz.models.linear_recurrence(a, b, jnp.zeros(2), method))()
        return {str(eqn.primitive) for eqn in jaxpr.jaxpr.eqns}

    assert jax.default_backend() == "cpu"
    assert "scan" in primitives("auto") and "scan" in primitives("sequential")
    assert "scan" not in primitives("associative")
    np.testing.assert_allclose(gz.models.linear_recurrence(a, b, jnp.zeros(2), "auto"),
                               gz.models.linear_recurrence(a, b, jnp.zeros(2), "associative"))
    for name in CELLS:
        assert gz.make_cell(name, 3, 4, rngs=nnx.Rngs(0), **OPTS.get(name, {})).scan == "auto"
