"""Flax's own recurrent cells behind the gate protocol (gatezoo.models.flax_adapters)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatezoo as gz

D_IN, D_H = 3, 5
KINDS = {
    "flax-gru": nnx.GRUCell,
    "flax-lstm": nnx.LSTMCell,
    "flax-optlstm": nnx.OptimizedLSTMCell,
    "flax-simple": nnx.SimpleCell,
}


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def random_carry(cell, batch=(), seed=0):
    like = cell.initialize_carry(batch + (D_IN,))
    leaves, treedef = jax.tree_util.tree_flatten(like)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten(
        [0.8 * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves, strict=True)]
    )


def perturb_biases(cell, seed=0):
    """Nonzero biases, so that every bias path of the split is exercised."""
    key = jax.random.fold_in(jax.random.key(seed), 100)
    for path, var in nnx.iter_graph(cell):
        if isinstance(var, nnx.Param) and path[-1] == "bias":
            key, sub = jax.random.split(key)
            var[...] = var[...] + 0.4 * jax.random.normal(sub, var.shape, var.dtype)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KINDS))
def test_plain_call_is_flax_and_runs_in_rnn_and_sequence_model(name):
    adapter = gz.make_cell(name, D_IN, D_H, rngs=nnx.Rngs(0))
    flax_cell = KINDS[name](D_IN, D_H, rngs=nnx.Rngs(0))  # the same parameters, by construction
    assert isinstance(adapter, nnx.RNNCellBase) and gz.models.is_gated(adapter)
    assert type(adapter.cell) is KINDS[name]
    for a, b in zip(jax.tree_util.tree_leaves(nnx.state(adapter, nnx.Param)),
                    jax.tree_util.tree_leaves(nnx.state(flax_cell, nnx.Param)), strict=True):
        np.testing.assert_array_equal(a, b)
    xs = jax.random.normal(jax.random.key(1), (2, 6, D_IN))
    ref = nnx.RNN(flax_cell)(xs)
    np.testing.assert_array_equal(nnx.RNN(adapter)(xs), ref)
    carry = random_carry(adapter, (2,))
    out, y = adapter(carry, xs[:, 0])
    ref_out, ref_y = flax_cell(carry, xs[:, 0])
    jax.tree_util.tree_map(np.testing.assert_array_equal, (out, y), (ref_out, ref_y))
    model = gz.SequenceModel(adapter, 2, readout="all", rngs=nnx.Rngs(2))
    ys, _ = model.unroll_states(xs)
    np.testing.assert_allclose(np.swapaxes(ys, 0, 1), ref, rtol=1e-6, atol=1e-7)
    ys_eps, _ = model.unroll_states(xs, eps=0.5)  # the deformation leaves values unchanged
    np.testing.assert_allclose(ys_eps, ys, rtol=1e-6, atol=1e-7)
    assert nnx.jit(lambda m, x: m(x))(model, xs).shape == (2, 6, 2)
    alpha = adapter.time_scale(carry, xs[:, 0])
    assert alpha.shape == (2, D_H) and bool(jnp.all((alpha > 0) & (alpha <= 1)))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KINDS))
def test_split_sums_to_the_flax_jacobian(name, x64):
    for seed in (0, 1):
        adapter = gz.make_cell(name, D_IN, D_H, rngs=nnx.Rngs(seed), param_dtype=jnp.float64)
        perturb_biases(adapter, seed)
        carry = random_carry(adapter, seed=seed)
        x = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 3), (D_IN,), jnp.float64)
        fn = gz.models.cell_fn(adapter)
        A, B = gz.jacobians.autodiff_split(fn.step, fn.params, carry, x)
        flax_cell = adapter.cell
        flat = gz.models.flatten_carry(carry)
        J = jax.jacrev(
            lambda v: gz.models.flatten_carry(flax_cell(gz.models.unflatten_carry(v, carry), x)[0])
        )(flat)
        assert A.dtype == jnp.float64
        assert rel(A + B, J) <= 1e-8
        if name == "flax-simple":
            assert float(jnp.abs(B).max()) == 0.0
        else:
            assert float(jnp.linalg.norm(B)) > 1e-3


def _dsig(s):
    return jax.nn.sigmoid(s) * (1 - jax.nn.sigmoid(s))


def test_gru_split_matches_hand_formula(x64):
    # Flax: r, z = sigma(x Ki_{r,z} + b_{r,z} + h Kh_{r,z}); n = tanh(x Ki_n + b_n + r * (h Kh_n));
    # h' = (1 - z) n + z h. Gate-frozen A and gate-induced B by hand:
    adapter = gz.make_cell("flax-gru", D_IN, D_H, rngs=nnx.Rngs(4), param_dtype=jnp.float64)
    perturb_biases(adapter, 4)
    cell = adapter.cell
    h = random_carry(adapter, seed=5)
    x = jax.random.normal(jax.random.key(6), (D_IN,), jnp.float64)
    Ki, bi, Kh = cell.dense_i.kernel[...], cell.dense_i.bias[...], cell.dense_h.kernel[...]
    xr, xz, xn = jnp.split(x @ Ki + bi, 3)
    hr, hz, hn = jnp.split(h @ Kh, 3)
    Khr, Khz, Khn = jnp.split(Kh, 3, axis=1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    dn = (1 - z) * (1 - n**2)
    A_hand = jnp.diag(z) + (dn * r)[:, None] * Khn.T
    B_hand = ((h - n) * _dsig(xz + hz))[:, None] * Khz.T + (dn * hn * _dsig(xr + hr))[
        :, None
    ] * Khr.T
    fn = gz.models.cell_fn(adapter)
    A, B = gz.jacobians.autodiff_split(fn.step, fn.params, h, x)
    assert rel(A, A_hand) <= 1e-12 and rel(B, B_hand) <= 1e-12
    np.testing.assert_allclose(adapter.time_scale(h, x), 1 - z, rtol=1e-14)


def _gatezoo_lstm_from(adapter):
    """gatezoo's LSTM with the same parameters as Flax's LSTMCell / OptimizedLSTMCell."""
    lstm = gz.LSTM(D_IN, D_H, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    cell = adapter.cell
    if isinstance(cell, nnx.LSTMCell):
        blocks = {k: (getattr(cell, i).kernel[...], getattr(cell, h).kernel[...],
                      getattr(cell, h).bias[...])
                  for k, i, h in (("i", "ii", "hi"), ("f", "if_", "hf"), ("o", "io", "ho"),
                                  ("", "ig", "hg"))}
    else:  # fused, features ordered [i, f, g, o]
        Ki, Kh, b = cell.dense_i.kernel[...], cell.dense_h.kernel[...], cell.dense_h.bias[...]
        split = [jnp.split(a, 4, axis=-1) for a in (Ki, Kh, b)]
        blocks = {k: tuple(s[j] for s in split) for j, k in enumerate(("i", "f", "", "o"))}
    for k, (U, W, b) in blocks.items():
        sfx = f"_{k}" if k else ""
        getattr(lstm, "U" + sfx)[...] = U
        getattr(lstm, "W" + sfx)[...] = W
        getattr(lstm, "b" + sfx)[...] = b
    return lstm


@pytest.mark.parametrize("name", ["flax-lstm", "flax-optlstm", "flax-simple"])
def test_lstm_and_simple_splits_match_gatezoo_closed_forms(name, x64):
    adapter = gz.make_cell(name, D_IN, D_H, rngs=nnx.Rngs(7), param_dtype=jnp.float64)
    perturb_biases(adapter, 7)
    if name == "flax-simple":
        ref = gz.Elman(D_IN, D_H, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        ref.W[...] = adapter.cell.dense_h.kernel[...]
        ref.U[...] = adapter.cell.dense_i.kernel[...]
        ref.b[...] = adapter.cell.dense_i.bias[...]
    else:
        ref = _gatezoo_lstm_from(adapter)
    carry = random_carry(adapter, seed=8)
    x = jax.random.normal(jax.random.key(9), (D_IN,), jnp.float64)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13), adapter(carry, x), ref(carry, x)
    )
    fn = gz.models.cell_fn(adapter)
    A, B = gz.jacobians.autodiff_split(fn.step, fn.params, carry, x)
    A_ref, B_ref = gz.jacobians.state_jacobians(ref, carry, x)
    assert rel(A, A_ref) <= 1e-12
    assert rel(B, B_ref) <= 1e-12 if name != "flax-simple" else float(jnp.abs(B).max()) == 0.0
    np.testing.assert_allclose(adapter.time_scale(carry, x), ref.time_scale(carry, x), rtol=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flax-gru", "flax-lstm", "flax-optlstm"])
def test_registry_options(name):
    zero = jnp.zeros(D_IN)
    cell = gz.make_cell(name, D_IN, D_H, rngs=nnx.Rngs(0), init=gz.models.InitSpec(gate_bias=2.0))
    carry = cell.initialize_carry((D_IN,))
    # with zero state and input the gate sees only its bias: alpha = sigmoid(gate_bias)
    np.testing.assert_allclose(cell.time_scale(carry, zero), jax.nn.sigmoid(2.0), rtol=1e-6)
    chrono = gz.make_cell(name, D_IN, D_H, rngs=nnx.Rngs(0),
                          init=gz.models.InitSpec(gate_bias="chrono", chrono_tmax=50.0))
    alpha = chrono.time_scale(carry, zero)
    # chrono: 1/alpha - 1 = u ~ U(1, T_max - 1)
    assert bool(jnp.all((1 / alpha - 1 >= 1 - 1e-4) & (1 / alpha - 1 <= 49 + 1e-3)))
    assert float(jnp.ptp(alpha)) > 0
    torch_init = gz.make_cell(name, D_IN, D_H, rngs=nnx.Rngs(0),
                              init=gz.models.InitSpec(scheme="torch"))
    kernel = jax.tree_util.tree_leaves(nnx.state(torch_init, nnx.Param))
    assert max(float(jnp.abs(k).max()) for k in kernel) <= 1 / np.sqrt(min(D_IN, D_H))
    with pytest.raises(ValueError, match="use_bias=False is not supported"):
        gz.make_cell(name, D_IN, D_H, rngs=nnx.Rngs(0), use_bias=False)
    with pytest.raises(ValueError, match="takes no option"):
        gz.make_cell(name, D_IN, D_H, rngs=nnx.Rngs(0), alpha=0.5)


@pytest.mark.parametrize("name", list(KINDS))
def test_param_dtype_is_honoured(name, x64):
    cell = gz.make_cell(name, D_IN, D_H, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    leaves = jax.tree_util.tree_leaves(nnx.state(cell, nnx.Param))
    assert {p.dtype for p in leaves} == {jnp.dtype(jnp.float64)}
    x = jnp.ones((2, D_IN), jnp.float64)
    out, _ = cell(cell.initialize_carry(x.shape), x)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(out))


def test_flax_adapter_by_instance_and_wrong_types():
    cell = nnx.OptimizedLSTMCell(D_IN, D_H, rngs=nnx.Rngs(0))
    adapter = gz.models.flax_adapter(cell)
    assert isinstance(adapter, gz.models.FlaxOptimizedLSTM) and adapter.cell is cell
    assert adapter.hidden_features == D_H and adapter.num_feature_axes == 1
    with pytest.raises(ValueError, match="no gate adapter for GRU"):
        gz.models.flax_adapter(gz.GRU(D_IN, D_H, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="FlaxLSTM wraps a LSTMCell, got OptimizedLSTMCell"):
        gz.models.FlaxLSTM(cell)
    assert {"flax-gru", "flax-lstm", "flax-optlstm", "flax-simple"} <= set(gz.cell_names())
    for name in KINDS:
        assert gz.models.CELLS[name].description and "\n" not in gz.models.CELLS[name].description
