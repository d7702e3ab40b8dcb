"""Shared helpers of the instrument tests: ModelFns from gatezoo's own builder
(``gz.model_fns``) and a StepContext built as the train step builds it (one ``value_and_grad``
over ``(params, offsets)``)."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import gatezoo as gz
from gatezoo.instruments.protocol import StepContext


def mse(pred, y):
    return jnp.mean((pred - y) ** 2)


def model_fns(model, loss_fn=mse, *, split=True):
    """``(ModelFns, params)`` from gatezoo's own builder (``split=False`` drops ``split_step``
    to exercise the two-pass path)."""
    fns, params = gz.model_fns(model, lambda m, xs, ys: loss_fn(m(xs), ys))
    return (fns if split else fns._replace(split_step=None)), params


def make_model(name, d_in=3, hidden=5, out=1, readout="last", dtype=jnp.float32, seed=0,
               init=None, **opts):
    cell = gz.make_cell(name, d_in, hidden, rngs=nnx.Rngs(seed), param_dtype=dtype,
                        init=init, **opts)
    return gz.SequenceModel(cell, out, readout=readout,
                            rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(seed), 1)))


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
