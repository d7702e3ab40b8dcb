"""Shared helpers of the instrument tests: ModelFns and StepContext built from a SequenceModel.

The builder mirrors what the trainer does (one ``value_and_grad`` over ``(params, offsets)``),
kept here so the instrument tests do not depend on the training package.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import gatezoo as gz
from gatezoo.instruments.protocol import ModelFns, StepContext


def mse(pred, y):
    return jnp.mean((pred - y) ** 2)


def model_fns(model, loss_fn=mse, *, split=True):
    """``(ModelFns, params)`` for a SequenceModel (``split=False`` leaves ``split_step`` out)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    cell_graph, _, cell_rest = nnx.split(model.cell, nnx.Param, ...)
    gated = gz.is_gated(model.cell)

    def loss(p, xs, ys, eps=None, offsets=None):
        m = nnx.merge(graphdef, p, rest)
        # Flax's own cells want rngs even for a zero carry; ours take none
        carry0 = m.cell.initialize_carry(xs.shape[:1] + xs.shape[2:], rngs=nnx.Rngs(0))
        outs, carries = m.unroll_states(xs, eps=eps, offsets=offsets, carry0=carry0)
        pred = m.read(outs[-1]) if m.readout == "last" else jnp.swapaxes(m.read(outs), 0, 1)
        return loss_fn(pred, ys), carries

    def step(cp, carry, x, eps=None):
        cell = nnx.merge(cell_graph, cp, cell_rest)
        if eps is None:
            return cell(carry, x)
        return cell.split_call(carry, x, gz.deform(carry, eps))

    def split_step(cp, carry, x, gate_carry):
        return nnx.merge(cell_graph, cp, cell_rest).split_call(carry, x, gate_carry)

    def time_scale(cp, carry, x):
        return nnx.merge(cell_graph, cp, cell_rest).time_scale(carry, x)

    carry = model.cell.initialize_carry((1, model.cell.in_features), rngs=nnx.Rngs(0))
    state_size = sum(leaf.shape[-1] for leaf in jax.tree_util.tree_leaves(carry))
    fns = ModelFns(
        loss=loss,
        step=step,
        time_scale=time_scale if gated else None,
        cell_params=lambda p: p["cell"],
        gated=gated,
        hidden=model.cell.hidden_features,
        state_size=state_size,
        split_step=split_step if (gated and split) else None,
    )
    return fns, params


def make_model(name, d_in=3, hidden=5, out=1, readout="last", dtype=jnp.float32, seed=0,
               init=None, **opts):
    cell = gz.make_cell(name, d_in, hidden, rngs=nnx.Rngs(seed), param_dtype=dtype,
                        init=init, **opts)
    return gz.SequenceModel(cell, out, readout=readout, rngs=nnx.Rngs(seed + 1))


def make_context(fns, params, xs, ys, optimizer=None, opt_state=None, probe=None, step=0):
    """One StepContext as the trainer builds it (adjoints from the same backward pass)."""
    _, carries = jax.eval_shape(lambda: fns.loss(params, xs, ys))
    offsets = jax.tree_util.tree_map(lambda c: jnp.zeros(c.shape, c.dtype), carries)

    def f(p, off):
        return fns.loss(p, xs, ys, offsets=off)

    (loss, carries), (grads, adjoints) = jax.jit(
        jax.value_and_grad(f, argnums=(0, 1), has_aux=True)
    )(params, offsets)
    optimizer = optimizer or optax.inject_hyperparams(optax.sgd)(learning_rate=1e-2)
    if opt_state is None:
        opt_state = optimizer.init(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    probe_xs, probe_ys = probe if probe is not None else (xs, ys)
    return StepContext(
        step=jnp.asarray(step, jnp.int32), params=params, grads=grads, loss=loss, xs=xs, ys=ys,
        carries=carries, adjoints=adjoints, updates=updates, opt_state=opt_state,
        probe_xs=probe_xs, probe_ys=probe_ys, fns=fns,
    )


def data(key, batch, seq_len, d_in, out=1, dtype=jnp.float32, readout="last"):
    k1, k2 = jax.random.split(jax.random.key(key))
    xs = jax.random.normal(k1, (batch, seq_len, d_in), dtype)
    shape = (batch, out) if readout == "last" else (batch, seq_len, out)
    return xs, jax.random.normal(k2, shape, dtype)


def jit_update(inst, fns):
    """``inst.update`` jitted with the (static) ModelFns closed over, as the trainer does."""

    @jax.jit
    def run(ctx, state):
        return inst.update(ctx._replace(fns=fns), state)

    return lambda ctx, state: run(ctx._replace(fns=None), state)
