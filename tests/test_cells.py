import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatezoo as gz

NAMES = ["elman", "leaky", "scalar", "vector", "gru", "lstm", "slstm"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_runs_in_nnx_rnn_and_matches_sequence_model(name):
    cell = gz.make_cell(name, 3, 6, rngs=nnx.Rngs(0))
    xs = jax.random.normal(jax.random.key(1), (4, 9, 3))
    ref = nnx.RNN(cell)(xs)
    model = gz.SequenceModel(cell, 2, readout="all", rngs=nnx.Rngs(2))
    ys, _ = model.unroll_states(xs)
    np.testing.assert_allclose(np.swapaxes(ys, 0, 1), ref, atol=1e-6)
    assert model(xs).shape == (4, 9, 2)


@pytest.mark.parametrize("name", NAMES)
def test_split_call_keeps_value_and_time_scale_in_unit_interval(name):
    cell = gz.make_cell(name, 3, 6, rngs=nnx.Rngs(0))
    carry = jax.tree_util.tree_map(
        lambda c: jax.random.normal(jax.random.key(3), c.shape), cell.initialize_carry((5, 3))
    )
    x = jax.random.normal(jax.random.key(4), (5, 3))
    ref, _ = cell(carry, x)
    for eps in (0.0, 0.5, 1.0):
        out, _ = cell.split_call(carry, x, gz.models.deform(carry, eps))
        chex.assert_trees_all_close(out, ref, atol=1e-6)
    alpha = cell.time_scale(carry, x)
    assert alpha.shape == (5, 6)
    assert bool(jnp.all((alpha > 0) & (alpha <= 1)))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_and_float64(name, x64):
    cell = gz.make_cell(name, 2, 4, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    model = gz.SequenceModel(cell, 1, rngs=nnx.Rngs(1))
    xs = jax.random.normal(jax.random.key(0), (3, 5, 2), jnp.float64)
    out = nnx.jit(lambda m, x: m(x))(model, xs)
    assert out.dtype == jnp.float64
    per_example = jax.vmap(lambda x: model(x[None])[0])(xs)
    np.testing.assert_allclose(per_example, out, rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan"), "x"])
def test_leaky_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match="alpha"):
        gz.Leaky(2, 3, alpha=alpha, rngs=nnx.Rngs(0))


def test_unknown_cell_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown cell 'nope'"):
        gz.make_cell("nope", 2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="takes no option alpha"):
        gz.make_cell("gru", 2, 3, rngs=nnx.Rngs(0), alpha=0.5)


def test_wrong_input_width_is_a_clear_error():
    cell = gz.GRU(3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="expects inputs with 3 features"):
        cell(cell.initialize_carry((1, 3)), jnp.ones((1, 5)))


@pytest.mark.slow
def test_initialisation_schemes_and_biases():
    torch_like = gz.VectorGate(4, 16, init=gz.models.InitSpec("torch"), rngs=nnx.Rngs(0))
    bound = 1 / np.sqrt(16)
    assert float(jnp.abs(torch_like.W[...]).max()) <= bound
    assert float(jnp.abs(torch_like.U[...]).max()) <= 1 / np.sqrt(4)
    normal = gz.VectorGate(4, 200, init=gz.models.InitSpec("normal", std=0.2), rngs=nnx.Rngs(0))
    assert abs(float(jnp.std(normal.W[...])) - 0.2) < 0.01
    nobias = gz.GRU(4, 8, use_bias=False, rngs=nnx.Rngs(0))
    assert nobias.b is None and nobias.b_z is None
    names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(nobias, nnx.Param))}
    assert not any(n.startswith("b") for n in names)


@pytest.mark.slow
def test_chrono_gate_bias_gives_time_constants_up_to_tmax():
    spec = gz.models.InitSpec(gate_bias="chrono", chrono_tmax=50.0)
    cell = gz.VectorGate(2, 400, init=spec, rngs=nnx.Rngs(0))
    tau = 1 + jnp.exp(-cell.b_g[...])  # 1/alpha at zero input
    assert 1.5 < float(tau.min()) and float(tau.max()) <= 50.0
    lstm = gz.LSTM(2, 100, init=spec, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(lstm.b_f[...], -lstm.b_i[...])
    assert float(lstm.b_f[...].min()) >= 0.0
    with pytest.raises(ValueError, match="gate_bias"):
        gz.models.InitSpec(gate_bias="warm")


@pytest.mark.slow
def test_sequence_model_runs_flax_own_cells_unadapted():
    xs = jax.random.normal(jax.random.key(0), (2, 6, 3))
    rngs = nnx.Rngs(0)
    for cell in (nnx.GRUCell(3, 5, rngs=rngs), nnx.OptimizedLSTMCell(3, 5, rngs=rngs)):
        model = gz.SequenceModel(cell, 1, readout="all", rngs=nnx.Rngs(1))
        ys, _ = model.unroll_states(xs)
        ref = nnx.RNN(cell)(xs)
        np.testing.assert_allclose(np.swapaxes(ys, 0, 1), ref, atol=1e-6)
