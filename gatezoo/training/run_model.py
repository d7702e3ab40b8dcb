"""The model of a run: ``build_model(config, task, seed)`` makes the
:class:`gatezoo.SequenceModel` a :class:`~gatezoo.training.config.TrainConfig` describes (its
pure functions come from :func:`gatezoo.instruments.network_fns`, the one builder).

Example:
  >>> import gatezoo as gz
  >>> task = gz.make_task("adding", 20)
  >>> model = build_model(gz.TrainConfig(cell="gru", hidden=16), task, seed=0)
  >>> fns, params = gz.instruments.model_fns(model, task)
  >>> fns.hidden
  16
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.init import InitSpec
from gatezoo.models.registry import make_cell
from gatezoo.models.sequence import SequenceModel
from gatezoo.training.config import DTYPES

__all__ = ["DTYPES", "build_model", "param_dtype"]



def param_dtype(name: str) -> Any:
    """The JAX dtype called ``name``; float64 needs ``jax_enable_x64`` (the trainer's scope)."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    if name == "float64" and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "dtype float64 needs jax_enable_x64; build it inside "
            "`with jax.enable_x64(True):` (gatezoo train does this for a float64 run)"
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
    _cast_params(cell, dtype)
    return SequenceModel(
        cell, int(task.output_dim), readout=task.readout,
        readout_bias=bool(config.readout_bias), rngs=rngs,
    )


def _cast_params(cell: nnx.Module, dtype: Any) -> None:
    """Every floating parameter in the run's dtype: a registered factory that takes no
    ``param_dtype`` still yields one dtype for the whole model."""
    for _, var in nnx.iter_graph(cell):
        if isinstance(var, nnx.Param) and hasattr(var[...], "dtype") and jnp.issubdtype(
            var[...].dtype, jnp.floating
        ) and var[...].dtype != dtype:
            var[...] = var[...].astype(dtype)
