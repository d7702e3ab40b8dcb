"""Shared test helpers: models a user writes (outside the package), and the instrument tests'
LayerFns, data and StepContext, all from gatezoo's own builders (``gz.instruments.model_fns``,
:func:`gatezoo.instruments.context.step_context`)."""

import jax
import jax.numpy as jnp
from flax import nnx

import gatezoo as gz
from gatezoo.instruments.context import step_context


class MGU(nnx.Module):
    """Minimal gated unit: ``f = sigmoid(W_f h + U_f x + b_f)``, ``c = tanh(W (f * h) + U x)``,
    ``h' = (1 - f) h + f c``; the gate reads ``gate_h``, everything else reads ``h``.

    ``scale`` is the standard deviation of the weights, ``bias`` the gate's initial bias."""

    def __init__(self, d_in, d_h, *, rngs, param_dtype=jnp.float32, scale=0.5, bias=0.0):
        init = nnx.initializers.normal(scale)
        self.in_features, self.hidden_features = d_in, d_h
        self.W_f = nnx.Param(init(rngs.params(), (d_h, d_h), param_dtype))
        self.U_f = nnx.Param(init(rngs.params(), (d_in, d_h), param_dtype))
        self.b_f = nnx.Param(bias * jnp.ones((d_h,), param_dtype))
        self.W = nnx.Param(init(rngs.params(), (d_h, d_h), param_dtype))
        self.U = nnx.Param(init(rngs.params(), (d_in, d_h), param_dtype))

    num_feature_axes = 1

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1] + (self.hidden_features,), self.W[...].dtype)

    def __call__(self, h, x):
        return self.split_call(h, x, h)

    def split_call(self, h, x, gate_h):
        f = self.time_scale(gate_h, x)
        c = jnp.tanh((f * h) @ self.W[...] + x @ self.U[...])
        new = (1 - f) * h + f * c
        return new, new

    def time_scale(self, h, x):
        return jax.nn.sigmoid(h @ self.W_f[...] + x @ self.U_f[...] + self.b_f[...])


def mse(pred, y):
    return jnp.mean((pred - y) ** 2)


def model_fns(model, loss_fn=mse, *, split=True):
    """``(LayerFns, params)`` from gatezoo's own builder (``split=False`` drops ``split_step``
    to exercise the two-pass path)."""
    fns, params = gz.instruments.model_fns(model, lambda m, xs, ys: loss_fn(m(xs), ys))
    return (fns if split else fns._replace(split_step=None)), params


def make_model(name, d_in=3, hidden=5, out=1, readout="last", dtype=jnp.float32, seed=0,
               init=None, **opts):
    cell = gz.make_cell(name, d_in, hidden, rngs=nnx.Rngs(seed), param_dtype=dtype,
                        init=init, **opts)
    return gz.SequenceModel(cell, out, readout=readout,
                            rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(seed), 1)))


def make_context(fns, params, xs, ys, optimizer=None, opt_state=None, probe=None, step=0):
    """One StepContext as the trainer builds it: the library's own builder."""
    return step_context(fns, params, xs, ys, optimizer=optimizer, opt_state=opt_state,
                        probe=probe, step=step)


def data(key, batch, seq_len, d_in, out=1, dtype=jnp.float32, readout="last"):
    k1, k2 = jax.random.split(jax.random.key(key))
    xs = jax.random.normal(k1, (batch, seq_len, d_in), dtype)
    shape = (batch, out) if readout == "last" else (batch, seq_len, out)
    return xs, jax.random.normal(k2, shape, dtype)


def jit_update(inst, fns):
    """``inst.update`` jitted with the (static) LayerFns closed over, as the trainer does."""

    @jax.jit
    def run(ctx, state):
        return inst.update(ctx._replace(fns=fns), state)

    return lambda ctx, state: run(ctx._replace(fns=None), state)


def max_tree_err(a, b) -> float:
    """The largest absolute difference between two pytrees of the same structure."""
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def first_order_definition(fns, params, xs, ys):
    """(G0, G1) = jax.jvp of jax.grad of the eps-deformed loss (docs/theory.md §3.4 recipe 4)."""
    grad = lambda e: jax.grad(lambda p: fns.loss(p, xs, ys, eps=e)[0])(params)  # noqa: E731
    return jax.jvp(grad, (0.0,), (1.0,))


def check_first_order_against_definition(fns, params, xs, ys):
    """gatezoo's first-order gradients equal their forward-over-reverse definition to 1e-12 of
    the gradient's scale, G1 is not zero, and the adjoints rebuild the cell's gradient."""
    from gatezoo.instruments import first_order_gradients

    ctx = make_context(fns, params, xs, ys)
    fo = jax.jit(
        lambda p, x, c, a, g: first_order_gradients(fns, p, x, c, a, g, self_check=True)
    )(params, xs, ctx.carries, ctx.adjoints, ctx.grads)
    g0, g1 = jax.jit(lambda p: first_order_definition(fns, p, xs, ys))(params)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(ctx.grads))
    assert max_tree_err(fo.g0, g0) <= 1e-12 * scale
    assert max_tree_err(fo.g1, g1) <= 1e-12 * scale
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(g1)) > 1e-6
    plain = jax.grad(lambda q: fns.loss(q, xs, ys)[0])(params)
    assert max_tree_err(ctx.grads, plain) <= 1e-10
    assert max_tree_err(fo.exact_cell["cell"], plain["cell"]) <= 1e-10
    return plain

