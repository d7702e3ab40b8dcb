"""The model of a run, and its pure functional view for the train step and the instruments.

``build_model(config, task, seed)`` makes the :class:`gatezoo.SequenceModel` a
:class:`~gatezoo.training.config.TrainConfig` describes; ``model_fns(model, task)`` splits it into
parameters and pure functions of them (:class:`gatezoo.instruments.protocol.ModelFns`), so the
train step can be ``jit``-ed, ``vmap``-ped over seeds and ``scan``-ned over steps.

Example:
  >>> from gatezoo.training.config import TrainConfig
  >>> # task = gatezoo.tasks.make_task("adding", seq_len=20)
  >>> # model = build_model(TrainConfig(cell="gru", hidden=16), task, seed=0)
  >>> # fns, params = model_fns(model, task)
  >>> # loss, carries = fns.loss(params, *task.sample(key, 8))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.instruments.protocol import ModelFns
from gatezoo.models.init import InitSpec
from gatezoo.models.protocol import deform, is_gated
from gatezoo.models.registry import make_cell
from gatezoo.models.sequence import SequenceModel
from gatezoo.training.config import DTYPES

__all__ = ["DTYPES", "build_model", "model_fns", "forward_fn", "param_dtype"]



def param_dtype(name: str) -> Any:
    """The JAX dtype called ``name``; float64 needs ``jax_enable_x64`` (the trainer sets it)."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    if name == "float64" and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "dtype float64 needs jax_enable_x64; call "
            "jax.config.update('jax_enable_x64', True) first (gatezoo train does this)"
        )
    return jnp.dtype(name)


def build_model(config: Any, task: Any, seed: int = 0) -> SequenceModel:
    """The sequence model of ``config`` for ``task``, initialised from ``seed``.

    The cell is ``make_cell(config.cell, task.input_dim, config.hidden, ...)`` with the run's
    initialisation (``init``, ``init_std``, ``gate_bias``), bias and dtype; the readout maps the
    hidden state to ``task.output_dim`` at the last step or every step (``task.readout``).
    """
    # ``seed`` may be traced (vmapped initialisation of many seeds at once).
    rngs = nnx.Rngs(params=jax.random.key(seed))
    spec = InitSpec(scheme=config.init, std=float(config.init_std), gate_bias=config.gate_bias)
    dtype = param_dtype(config.dtype)
    cell = make_cell(
        config.cell, int(task.input_dim), int(config.hidden), rngs=rngs, init=spec,
        use_bias=bool(config.use_bias), param_dtype=dtype, **dict(config.cell_options),
    )
    return SequenceModel(
        cell, int(task.output_dim), readout=task.readout,
        readout_bias=bool(config.readout_bias), rngs=rngs,
    )


def forward_fn(model: SequenceModel):
    """``forward(params, xs, eps=None, offsets=None) -> (pred, carries)``, pure in ``params``.

    ``pred`` is ``(B, out)`` (readout ``"last"``) or ``(B, T, out)`` (``"all"``); ``carries``
    has leaves ``(T, B, ...)``. Returns ``(forward, params)``.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def forward(p, xs, eps=None, offsets=None):
        m = nnx.merge(graphdef, p, rest)
        ys, carries = m.unroll_states(xs, eps=eps, offsets=offsets)
        pred = m.read(ys[-1]) if m.readout == "last" else jnp.swapaxes(m.read(ys), 0, 1)
        return pred, carries

    return forward, params


def model_fns(model: SequenceModel, task: Any) -> tuple[ModelFns, Any]:
    """The pure functions of ``model`` on ``task`` and its parameters.

    Returns:
      ``(fns, params)`` with ``params = nnx.state(model, nnx.Param)`` and ``fns`` a
      :class:`ModelFns` whose ``loss(params, xs, ys, eps=None, offsets=None)`` returns
      ``(task.loss(pred, ys), carries)``.
    """
    forward, params = forward_fn(model)
    cell = model.cell
    cell_graph, _, cell_rest = nnx.split(cell, nnx.Param, ...)
    gated = is_gated(cell)

    def loss(p, xs, ys, eps=None, offsets=None):
        pred, carries = forward(p, xs, eps=eps, offsets=offsets)
        return task.loss(pred, ys), carries

    def cell_params(p):
        return p["cell"]

    def step(cp, carry, x, eps=None):
        module = nnx.merge(cell_graph, cp, cell_rest)
        if eps is None:
            return module(carry, x)
        if not gated:
            raise TypeError(f"{type(cell).__name__} does not follow the gate protocol")
        return module.split_call(carry, x, deform(carry, eps))

    def time_scale(cp, carry, x):
        return nnx.merge(cell_graph, cp, cell_rest).time_scale(carry, x)

    def split_step(cp, carry, x, gate_carry):
        return nnx.merge(cell_graph, cp, cell_rest).split_call(carry, x, gate_carry)

    carry = jax.eval_shape(lambda: cell.initialize_carry((1, int(task.input_dim))))
    state_size = sum(int(leaf.shape[-1]) for leaf in jax.tree_util.tree_leaves(carry))
    hidden = int(jax.tree_util.tree_leaves(carry)[-1].shape[-1])
    fns = ModelFns(
        loss=loss, step=step, time_scale=time_scale if gated else None,
        cell_params=cell_params, gated=gated, hidden=hidden, state_size=state_size,
        **({"split_step": split_step if gated else None}
           if "split_step" in ModelFns._fields else {}),
    )
    return fns, params
