"""Deprecated: this module is :mod:`gatezoo.training.run_model` (its old name was the same as
:mod:`gatezoo.instruments.model_fns`, which builds the pure functions of a model)."""

import warnings

from gatezoo.training.run_model import DTYPES, build_model, param_dtype

warnings.warn("gatezoo.training.model_fns is deprecated: import build_model and param_dtype "
              "from gatezoo.training.run_model", DeprecationWarning, stacklevel=2)

__all__ = ["DTYPES", "build_model", "param_dtype"]
