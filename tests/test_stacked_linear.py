"""A stacked two-layer RG-LRU model gets per-layer measurements (issue 12): within each layer the
gates read no state, so each layer's G1 is zero and its lag products are the products of its
retentions; the cross-layer coupling (layer 2's gates read layer 1's output) sits in the
parameter gradients, not in a layer's B."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gatezoo as gz


class TwoLayerRGLRU(nnx.Module):
    def __init__(self, d_in, d_h, d_out, *, rngs):
        self.rnn1 = gz.Recurrent(gz.RGLRU(d_in, d_h, rngs=rngs, param_dtype=jnp.float64))
        self.rnn2 = gz.Recurrent(gz.RGLRU(d_h, d_h, rngs=rngs, param_dtype=jnp.float64))
        self.head = nnx.Linear(d_h, d_out, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, xs):
        return self.head(self.rnn2(self.rnn1(xs))[:, -1])


def _loss(model, xs, ys):
    return jnp.mean((model(xs) - ys) ** 2)


@pytest.fixture
def setup(x64):
    task = gz.make_task("adding", seq_len=12)
    model = TwoLayerRGLRU(task.input_dim, 5, task.output_dim, rngs=nnx.Rngs(0))
    xs, ys = task.sample(jax.random.key(1), 3)
    return model, xs.astype(jnp.float64), ys.astype(jnp.float64)


@pytest.mark.slow
def test_each_layer_has_g1_zero_and_its_own_metrics(setup):
    model, xs, ys = setup
    att = gz.attach(model, _loss, ["gates", "expansion"])
    params = nnx.state(model, nnx.Param)
    opt = optax.sgd(1e-2)
    out = att.update(params, att.init(params), xs, ys, step=0, optimizer=opt,
                     opt_state=opt.init(params))
    for layer in ("rnn1", "rnn2"):
        assert abs(float(out.metrics[gz.metric_name("expansion", layer, "g1_over_g0")])) < 1e-12
        assert 0.0 < float(out.metrics[gz.metric_name("gates", layer, "alpha_mean")]) < 1.0
    first = att.first_order(params, xs, ys)
    assert set(first) == {"rnn1", "rnn2"}
    # the layers declare that no gate reads the state; the full recursion, forced to run
    # through each layer's streams, must agree with that declaration
    forced = att.net._replace(layers={n: f._replace(gates_read_state=True)
                                      for n, f in att.net.layers.items()})
    full = gz.instruments.attach_fns(forced).first_order(params, xs, ys)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)  # gz.Recurrent holds a carry stream
    grads = jax.grad(lambda p: _loss(nnx.merge(graphdef, p, nnx.as_pure(rest)), xs, ys))(params)
    for fo in [*first.values(), *full.values()]:
        assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(fo.g1)) < 1e-14
        # G(1) = G0 for every parameter (both layers and the head): B = 0 in every layer
        for a, b in zip(jax.tree_util.tree_leaves(fo.g0), jax.tree_util.tree_leaves(grads),
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_layer_two_lag_products_are_its_retention_products(setup):
    model, xs, ys = setup
    net, params = gz.instruments.network_fns(model, _loss, example=(xs, ys))
    fns = net.layers["rnn2"]
    inputs = fns.inputs(params, xs)
    cp = fns.cell_params(params)
    x = inputs[0]  # one sequence reaching layer 2, (T, d_h)
    h = jnp.zeros((fns.hidden,), jnp.float64)
    product = jnp.eye(fns.hidden)
    retention = jnp.ones(fns.hidden)
    for t in range(x.shape[0]):
        J = jax.jacrev(lambda c, t=t: fns.step(cp, c, x[t])[0])(h)
        retention = retention * (1.0 - fns.time_scale(cp, h, x[t]))
        h = fns.step(cp, h, x[t])[0]
        product = J @ product
        np.testing.assert_allclose(product, jnp.diag(retention), rtol=1e-12, atol=1e-15)
