"""Weight and gate-bias initialisation schemes (docs/theory.md §1.7).

Three schemes cover the settings of the paper and of the frameworks users compare against:

* ``"flax"``: Flax's recurrent-cell defaults, ``lecun_normal`` for input kernels and
  ``orthogonal`` for recurrent kernels.
* ``"torch"``: PyTorch ``nn.Linear``'s default, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for every
  matrix (the S1 and S2 experiments of the authors' release).
* ``"normal"``: ``N(0, std^2)`` for every matrix (the appendix validation uses std 0.2).

Gate biases are set separately: a constant, or *chrono* initialisation (Tallec & Ollivier, 2018),
which draws the time constants ``1/alpha`` of a gate uniformly in log-space over ``[1, T_max]``.

Precision: a parameter of a dtype narrower than float32 (bfloat16, float16) is drawn in float32
and then rounded (:func:`drawn_wide`), so a bfloat16 model starts from exactly the float32
model's parameters rounded to bfloat16. Drawing in the narrow dtype would be both different and
impossible: the orthogonal initialiser's QR has no bfloat16 kernel, and a uniform draw with 8
mantissa bits is coarser than the distribution it samples. Float32 and float64 draws are left
as they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["INIT_SCHEMES", "InitSpec", "matrix_init", "gate_bias_init", "drawn_wide",
           "is_narrow", "widened"]

INIT_SCHEMES = ("flax", "torch", "normal")

Initializer = Callable[..., jax.Array]
"""``(key, shape, dtype) -> array``, the signature of ``nnx.initializers``."""


@dataclasses.dataclass(frozen=True)
class InitSpec:
    """How a cell initialises its parameters.

    Attributes:
      scheme: ``"flax"``, ``"torch"`` or ``"normal"`` (see module docstring).
      std: standard deviation of the ``"normal"`` scheme.
      gate_bias: a float (constant gate pre-activation bias) or ``"chrono"``.
      chrono_tmax: the longest time constant of chrono initialisation, in steps (> 1).
    """

    scheme: str = "flax"
    std: float = 0.2
    gate_bias: float | str = 0.0
    chrono_tmax: float = 100.0

    def __post_init__(self):
        if self.scheme not in INIT_SCHEMES:
            raise ValueError(f"unknown init scheme {self.scheme!r}; choose one of {INIT_SCHEMES}")
        if not self.std > 0:
            raise ValueError(f"init std must be > 0, got {self.std}")
        if isinstance(self.gate_bias, str) and self.gate_bias != "chrono":
            raise ValueError(f"gate_bias must be a float or 'chrono', got {self.gate_bias!r}")
        if self.gate_bias == "chrono" and not self.chrono_tmax > 1:
            raise ValueError(f"chrono_tmax must be > 1, got {self.chrono_tmax}")


def is_narrow(dtype: Any) -> bool:
    """Whether ``dtype`` is a floating dtype narrower than float32 (bfloat16, float16)."""
    dtype = jnp.dtype(dtype)
    return bool(jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4)


def widened(tree: Any) -> Any:
    """``tree`` with every narrow floating leaf (:func:`is_narrow`) cast to float32; other
    leaves (float32, float64, integers, non-arrays) are returned as they are, untouched."""

    def widen(x: Any) -> Any:
        dtype = getattr(x, "dtype", None)
        return x.astype(jnp.float32) if dtype is not None and is_narrow(dtype) else x

    return jax.tree_util.tree_map(widen, tree)


def drawn_wide(init: Initializer) -> Initializer:
    """``init`` drawing a narrow dtype (:func:`is_narrow`) in float32 and rounding the result,
    so its values are the float32 draw's; other dtypes are drawn as ``init`` draws them."""

    def wide(key: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
        if is_narrow(dtype):
            return init(key, shape, jnp.float32).astype(dtype)
        return init(key, shape, dtype)

    return wide


def matrix_init(spec: InitSpec, recurrent: bool) -> Initializer:
    """Returns an initialiser ``(key, (fan_in, fan_out), dtype) -> array`` for a kernel (a
    narrow dtype drawn in float32 and rounded: see the module docstring)."""
    if spec.scheme == "flax":
        init = nnx.initializers.orthogonal() if recurrent else nnx.initializers.lecun_normal()
    elif spec.scheme == "torch":

        def init(key, shape, dtype=jnp.float32):
            bound = 1.0 / math.sqrt(shape[0])
            return jax.random.uniform(key, shape, dtype, -bound, bound)

    else:
        init = nnx.initializers.normal(stddev=spec.std)
    return drawn_wide(init)


def gate_bias_init(spec: InitSpec, key: jax.Array, size: int, dtype) -> jax.Array:
    """Initial bias of a time-scale gate ``alpha = sigmoid(s)`` that weights the candidate.

    Chrono: ``1/alpha ~ U(1, T_max)`` in the sense of Tallec & Ollivier, i.e. the retention
    ``1 - alpha`` gets bias ``log(U(1, T_max - 1))``, hence ``b_alpha = -log(U(1, T_max - 1))``.
    """
    if spec.gate_bias == "chrono":
        # a narrow dtype draws (and takes the log) in float32, then rounds
        wide = jnp.float32 if is_narrow(dtype) else dtype
        u = jax.random.uniform(key, (size,), wide, 1.0, spec.chrono_tmax - 1.0)
        return (-jnp.log(u)).astype(dtype)
    return jnp.full((size,), float(spec.gate_bias), dtype)
