"""Weight and gate-bias initialisation schemes (THEORY.md §1.7).

Three schemes cover the settings of the paper and of the frameworks users compare against:

* ``"flax"``: Flax's recurrent-cell defaults, ``lecun_normal`` for input kernels and
  ``orthogonal`` for recurrent kernels.
* ``"torch"``: PyTorch ``nn.Linear``'s default, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for every
  matrix (the S1 and S2 experiments of the authors' release).
* ``"normal"``: ``N(0, std^2)`` for every matrix (the appendix validation uses std 0.2).

Gate biases are set separately: a constant, or *chrono* initialisation (Tallec & Ollivier, 2018),
which draws the time constants ``1/alpha`` of a gate uniformly in log-space over ``[1, T_max]``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["InitSpec", "matrix_init", "gate_bias_init"]

_SCHEMES = ("flax", "torch", "normal")


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
        if self.scheme not in _SCHEMES:
            raise ValueError(f"unknown init scheme {self.scheme!r}; choose one of {_SCHEMES}")
        if not self.std > 0:
            raise ValueError(f"init std must be > 0, got {self.std}")
        if isinstance(self.gate_bias, str) and self.gate_bias != "chrono":
            raise ValueError(f"gate_bias must be a float or 'chrono', got {self.gate_bias!r}")
        if self.gate_bias == "chrono" and not self.chrono_tmax > 1:
            raise ValueError(f"chrono_tmax must be > 1, got {self.chrono_tmax}")


def matrix_init(spec: InitSpec, recurrent: bool):
    """Returns an initialiser ``(key, (fan_in, fan_out), dtype) -> array`` for a kernel."""
    if spec.scheme == "flax":
        return nnx.initializers.orthogonal() if recurrent else nnx.initializers.lecun_normal()
    if spec.scheme == "torch":

        def uniform(key, shape, dtype=jnp.float32):
            bound = 1.0 / math.sqrt(shape[0])
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        return uniform
    return nnx.initializers.normal(stddev=spec.std)


def gate_bias_init(spec: InitSpec, key: jax.Array, size: int, dtype) -> jax.Array:
    """Initial bias of a time-scale gate ``alpha = sigmoid(s)`` that weights the candidate.

    Chrono: ``1/alpha ~ U(1, T_max)`` in the sense of Tallec & Ollivier, i.e. the retention
    ``1 - alpha`` gets bias ``log(U(1, T_max - 1))``, hence ``b_alpha = -log(U(1, T_max - 1))``.
    """
    if spec.gate_bias == "chrono":
        u = jax.random.uniform(key, (size,), dtype, 1.0, spec.chrono_tmax - 1.0)
        return -jnp.log(u)
    return jnp.full((size,), float(spec.gate_bias), dtype)
