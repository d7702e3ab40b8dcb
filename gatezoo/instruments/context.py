"""The step context: what one train step hands to every instrument, built in one place.

:func:`layer_context` assembles a :class:`~gatezoo.instruments.protocol.StepContext` from one
step's backward pass; ``gz.attach`` (so ``gz.train`` and a user's own loop) calls it for every
measured layer. :func:`step_context` runs that backward pass for one layer's
:class:`~gatezoo.instruments.protocol.LayerFns` and an optimizer, so that an instrument can be
called outside a training loop on exactly the context the trainer would give it.

Example:
  >>> from flax import nnx
  >>> import gatezoo as gz
  >>> from gatezoo.instruments.gates import gates
  >>> task = gz.make_task("adding", seq_len=6)
  >>> model = gz.SequenceModel(gz.VectorGate(task.input_dim, 4, rngs=nnx.Rngs(0)),
  ...                          task.output_dim, rngs=nnx.Rngs(1))
  >>> fns, params = gz.instruments.model_fns(model, task)
  >>> xs, ys = task.sample(jax.random.key(0), 3)
  >>> ctx = step_context(fns, params, xs, ys)
  >>> ctx.adjoints.shape
  (6, 3, 4)
  >>> inst = gates(fns).instrument()
  >>> float(inst.update(ctx, inst.init(params))[0]["alpha_mean"]) > 0
  True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from gatezoo.instruments.protocol import LayerFns, StepContext
from gatezoo.models.init import widened

__all__ = ["layer_context", "step_context"]


def layer_context(
    fns: LayerFns, *, step: Any, params: Any, grads: Any, loss: jax.Array, xs: jax.Array,
    ys: Any, record: dict, adjoints: Any, updates: Any = None, opt_state: Any = None,
    probe: tuple | None = None,
) -> StepContext:
    """The context of one measured layer. ``record`` holds what the layer's forward pass
    recorded: ``carries`` and, when known, ``inputs``, ``carry0`` and ``lengths``; ``probe`` is
    ``(probe_xs, probe_ys)`` (default: this step's batch).

    Arrays narrower than float32 (a bfloat16 model's parameters, gradients, states, adjoints)
    reach the instruments in float32: the values are the model's, the instruments' arithmetic
    (means and quantiles, least-squares fits, log-ratios of nearly equal numbers, the cell
    steps and VJPs they replay) is float32, where 8 mantissa bits would round the metrics to
    about 3 significant digits and swamp the small terms of a split. Float32 and float64
    contexts are passed on as they are.
    """
    probe_xs, probe_ys = (xs, ys) if probe is None else probe
    params, grads, loss, xs, probe_xs, adjoints, updates = widened(
        (params, grads, loss, xs, probe_xs, adjoints, updates))
    record = widened(dict(record))
    return StepContext(
        step=jnp.asarray(step, jnp.int32), params=params, grads=grads, loss=loss, xs=xs, ys=ys,
        carries=record["carries"], adjoints=adjoints, updates=updates, opt_state=opt_state,
        probe_xs=probe_xs, probe_ys=probe_ys, fns=fns,
        inputs=None if fns.inputs is None else record.get("inputs"),
        carry0=record.get("carry0"), lengths=record.get("lengths"),
    )


def step_context(
    fns: LayerFns, params: Any, xs: jax.Array, ys: Any, *,
    optimizer: optax.GradientTransformation | None = None, opt_state: Any = None,
    probe: tuple | None = None, step: int = 0,
) -> StepContext:
    """The context ``gz.train`` hands the instruments of a one-layer model at ``step``: loss,
    gradient and adjoints :math:`\\partial L/\\partial h_t` from one backward pass, then one
    update of ``optimizer`` (default ``inject_hyperparams(sgd)(1e-2)``) from ``opt_state``
    (default: its init)."""
    _, carries = jax.eval_shape(lambda: fns.loss(params, xs, ys))
    offsets = jax.tree_util.tree_map(lambda c: jnp.zeros(c.shape, c.dtype), carries)
    (loss, carries), (grads, adjoints) = jax.jit(jax.value_and_grad(
        lambda p, off: fns.loss(p, xs, ys, offsets=off), argnums=(0, 1), has_aux=True,
    ))(params, offsets)
    optimizer = optimizer or optax.inject_hyperparams(optax.sgd)(learning_rate=1e-2)
    if opt_state is None:
        opt_state = optimizer.init(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    carry0 = None if fns.initial is None else fns.initial(params, xs, ys)
    return layer_context(
        fns, step=step, params=params, grads=grads, loss=loss, xs=xs, ys=ys,
        record={"carries": carries, "carry0": carry0,
                "inputs": None if fns.inputs is None else fns.inputs(params, xs, ys)},
        adjoints=adjoints, updates=updates, opt_state=opt_state, probe=probe,
    )
