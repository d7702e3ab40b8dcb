"""G0, G1, G(1): the reverse-scan first-order correction against its definition (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import (
    check_first_order_against_definition,
    data,
    first_order_definition,
    make_context,
    make_model,
    max_tree_err,
    model_fns,
)

import gatezoo as gz
from gatezoo.instruments import first_order_gradients, zero_offsets
from gatezoo.instruments.expansion import expansion_metrics, param_group_names


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,split,readout",
    [("vector", True, "last"), ("scalar", False, "all"), ("gru", True, "all"),
     ("lstm", True, "last")],
)
def test_matches_forward_over_reverse_definition(name, split, readout, x64):
    model = make_model(name, readout=readout, dtype=jnp.float64, seed=3)
    fns, params = model_fns(model, split=split)
    xs, ys = data(1, 3, 6, 3, dtype=jnp.float64, readout=readout)
    # G(1): the adjoints rebuild the cell part of the ordinary gradient through the immediate
    # parameter Jacobians, and the eps-step at eps = 1 is that gradient
    plain = check_first_order_against_definition(fns, params, xs, ys)
    exact = jax.jit(lambda p: jax.grad(lambda q: fns.loss(q, xs, ys, eps=1.0)[0])(p))(params)
    assert max_tree_err(exact, plain) <= 1e-10


@pytest.mark.slow
def test_corrections_scale_with_gate_weights(x64):
    """Scaling the recurrent gate weights by c: ||G1|| = O(c), ||G(1) - G0 - G1|| = O(c^2)."""
    model = make_model("vector", hidden=6, dtype=jnp.float64, seed=5)
    fns, params = model_fns(model)
    xs, ys = data(2, 4, 10, 3, dtype=jnp.float64)
    run = jax.jit(lambda p: _terms(fns, p, xs, ys))
    cs = np.array([0.2, 0.1, 0.05, 0.025])
    n1, rem = [], []
    for c in cs:
        p = jax.tree_util.tree_map(lambda a: a, params)
        p["cell"]["W_g"] = params["cell"]["W_g"] * c
        a, b = run(p)
        n1.append(float(a))
        rem.append(float(b))
    slope1 = np.polyfit(np.log(cs), np.log(n1), 1)[0]
    slope2 = np.polyfit(np.log(cs), np.log(rem), 1)[0]
    assert abs(slope1 - 1.0) < 0.05, slope1
    assert abs(slope2 - 2.0) < 0.1, slope2


def _terms(fns, params, xs, ys):
    ctx = make_context(fns, params, xs, ys)
    fo = first_order_gradients(fns, params, xs, ctx.carries, ctx.adjoints, ctx.grads)
    sq = lambda t: sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(t))  # noqa: E731
    rem = jax.tree_util.tree_map(lambda g, a, b: g - a - b, ctx.grads, fo.g0, fo.g1)
    return jnp.sqrt(sq(fo.g1)), jnp.sqrt(sq(rem))


@pytest.mark.slow
def test_metrics_per_group_and_totals(x64):
    model = make_model("gru", dtype=jnp.float64)
    fns, params = model_fns(model)
    xs, ys = data(0, 3, 5, 3, dtype=jnp.float64)
    ctx = make_context(fns, params, xs, ys)
    fo = first_order_gradients(fns, params, xs, ctx.carries, ctx.adjoints, ctx.grads)
    out = expansion_metrics(fns, params, ctx.grads, fo.g0, fo.g1)
    names = param_group_names(params)
    assert "cell.W_z" in names and "W_o" in names
    cell_groups = [n for n in names if n.startswith("cell.")]
    assert {f"cos@{n}" for n in cell_groups} <= set(out)  # bare quantities
    assert "cos@W_o" not in out  # the readout has no gate correction
    g, g0, g1 = (np.asarray(t["cell"]["W_z"]) for t in (ctx.grads, fo.g0, fo.g1))
    np.testing.assert_allclose(out["g1_over_g0@cell.W_z"],
                               np.linalg.norm(g1) / np.linalg.norm(g0), rtol=1e-12)
    np.testing.assert_allclose(out["cos@cell.W_z"],
                               np.sum(g * g0) / np.linalg.norm(g) / np.linalg.norm(g0), rtol=1e-12)
    np.testing.assert_allclose(out["remainder@cell.W_z"],
                               np.linalg.norm(g - g0 - g1) / np.linalg.norm(g), rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,readout,opts",
    [("scalar", "all", {}), ("vector", "last", {}), ("gru", "all", {}), ("lstm", "all", {}),
     ("gru", "last", {"use_bias": False})],
)
def test_closed_form_streams_equal_generic_and_definition(name, readout, opts, x64):
    """The cell's closed-form first-order streams (the default for built-in cells) give the
    same G0, G1 as the generic per-step linearisation and as forward-over-reverse."""
    model = make_model(name, readout=readout, dtype=jnp.float64, seed=7, **opts)
    fns, params = model_fns(model)
    assert fns.first_order_streams is not None
    generic = fns._replace(first_order_streams=None)
    xs, ys = data(2, 3, 7, 3, dtype=jnp.float64, readout=readout)
    ctx = make_context(fns, params, xs, ys)

    def run(f):
        return jax.jit(lambda p, x, c, a, g: first_order_gradients(f, p, x, c, a, g))(
            params, xs, ctx.carries, ctx.adjoints, ctx.grads)

    fast, slow = run(fns), run(generic)
    g0, g1 = jax.jit(lambda p: first_order_definition(fns, p, xs, ys))(params)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(ctx.grads))
    assert max_tree_err(fast.g0, slow.g0) <= 1e-12 * scale
    assert max_tree_err(fast.g1, slow.g1) <= 1e-12 * scale
    assert max_tree_err(fast.g0, g0) <= 1e-12 * scale
    assert max_tree_err(fast.g1, g1) <= 1e-12 * scale
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(g1)) > 1e-6


def test_subclass_of_a_builtin_cell_takes_the_generic_path():
    """A user's subclass may change the step, so only the exact built-in classes get the
    closed-form streams."""
    class MyGRU(gz.GRU):
        pass

    model = gz.SequenceModel(MyGRU(3, 4, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
    fns, _ = model_fns(model)
    assert fns.first_order_streams is None



def _stacked(dtype):
    """Projection, an LSTM layer, a scalar-gate layer, a linear head on the last step."""

    class Stacked(nnx.Module):
        def __init__(self, rngs):
            self.proj = nnx.Linear(3, 4, rngs=rngs, param_dtype=dtype)
            self.layers = nnx.List([
                gz.Recurrent(gz.make_cell("lstm", 4, 5, rngs=rngs, param_dtype=dtype)),
                gz.Recurrent(gz.make_cell("scalar", 5, 4, rngs=rngs, param_dtype=dtype)),
            ])
            self.head = nnx.Linear(4, 1, rngs=rngs, param_dtype=dtype)

        def __call__(self, xs):
            h = self.proj(xs)
            for layer in self.layers:
                h = layer(h)
            return self.head(h[:, -1])

    return Stacked(nnx.Rngs(4))


@pytest.mark.slow
def test_closed_form_streams_in_a_stacked_model_equal_generic(x64):
    """A layer fed by other layers: the closed-form path pulls its input cotangent back through
    the layers below, as the generic path's one VJP does (G0, G1 of every parameter)."""
    model = _stacked(jnp.float64)
    loss = lambda m, x, y: jnp.mean((m(x) - y) ** 2)  # noqa: E731
    net, params = gz.instruments.network_fns(model, loss)
    xs, ys = data(5, 3, 6, 3, dtype=jnp.float64)
    offsets = zero_offsets(net, params, xs, ys)
    (_, records), (grads, adjoints) = jax.jit(jax.value_and_grad(
        net.loss, argnums=(0, 3), has_aux=True))(params, xs, ys, offsets)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(grads))
    for name, fns in net.layers.items():
        assert fns.first_order_streams is not None and fns.inputs is not None
        generic = fns._replace(first_order_streams=None)
        got, want = (jax.jit(lambda p, f=f, name=name: first_order_gradients(
            f, p, xs, records[name]["carries"], adjoints[name], grads, self_check=True))(params)
            for f in (fns, generic))
        for a, b in ((got.g0, want.g0), (got.g1, want.g1), (got.exact_cell, want.exact_cell)):
            assert max_tree_err(a, b) <= 1e-12 * scale
        assert float(jnp.max(jnp.abs(got.g1["proj"]["kernel"][...]))) > 1e-8
