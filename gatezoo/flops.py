r"""Floating-point operations of a JAX function, counted from its jaxpr.

A compiled program's time is bounded below by its arithmetic over the machine's rate. This module
counts that arithmetic by walking the jaxpr of a function for given argument shapes (nothing is
executed):

* **matmul**: every ``dot_general`` costs :math:`2 \cdot \prod(\text{out}) \cdot K` (``K`` the
  product of the contracted sizes), split by precision (``matmul32`` up to 32 bits,
  ``matmul64``) because a machine's GEMM rate differs between the two;
* **decomposition**: singular values and symmetric eigenvalues, with the counts of Golub & Van
  Loan, *Matrix Computations* (4th ed., Fig. 8.6.1): :math:`4mn^2 - \tfrac43 n^3` for the singular
  values of an :math:`m \times n` matrix (:math:`m \ge n`), :math:`4m^2n + 8mn^2 + 9n^3` with both
  singular-vector sets, :math:`\tfrac43 n^3` for symmetric eigenvalues, :math:`9n^3` with
  eigenvectors. The host decompositions of :mod:`gatezoo.linalg` are recognised;
* **elementwise**: one operation per output element of every other arithmetic primitive (data
  movement such as reshapes, slices, gathers and casts is free).

``scan`` bodies count ``length`` times, a ``cond`` its costliest branch, a ``while_loop`` body
once (its trip count is not in the jaxpr; ``unknown_loops`` counts such loops so a reader knows
the figure is a lower bound); a ``shard_map`` body, which sees one device's block, counts once
per device of its mesh axes. Calls, ``jit``, ``remat``, ``custom_jvp`` and ``custom_vjp`` are
followed into.

Example:
  >>> import jax, jax.numpy as jnp
  >>> def f(w, xs):  # ten steps of a 4 x 4 matmul
  ...     return jax.lax.scan(lambda h, x: (jnp.tanh(w @ h + x), None), xs[0], xs)[0]
  >>> c = count_flops(f, jnp.ones((4, 4)), jnp.ones((10, 4)))
  >>> c.matmul32, c.elementwise
  (320.0, 80.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["FlopCount", "count_flops", "count_jaxpr_flops"]

# primitives that move or relabel data without arithmetic
_FREE = frozenset({
    "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose", "slice",
    "dynamic_slice", "dynamic_update_slice", "concatenate", "pad", "gather", "scatter", "rev",
    "convert_element_type", "bitcast_convert_type", "iota", "copy", "select_n",
    "random_bits", "random_seed", "random_wrap", "random_unwrap", "random_fold_in",
    "random_split", "threefry2x32", "stop_gradient", "sharding_constraint", "device_put",
    "optimization_barrier", "split", "sort", "pvary", "all_gather", "all_to_all", "ppermute",
})


class FlopCount(NamedTuple):
    """Operation counts of one call (see the module docstring for the rules)."""

    matmul32: float = 0.0
    matmul64: float = 0.0
    decomposition: float = 0.0
    elementwise: float = 0.0
    unknown_loops: int = 0

    @property
    def matmul(self) -> float:
        return self.matmul32 + self.matmul64

    @property
    def total(self) -> float:
        return self.matmul + self.decomposition + self.elementwise

    def __add__(self, other: FlopCount) -> FlopCount:  # type: ignore[override]
        return FlopCount(*(a + b for a, b in zip(self, other, strict=True)))

    def scaled(self, k: float) -> FlopCount:
        """Every count times ``k`` (``unknown_loops`` kept)."""
        return FlopCount(*(v * k for v in self[:4]), self.unknown_loops)

    def as_dict(self) -> dict[str, float]:
        return {**self._asdict(), "matmul": self.matmul, "total": self.total}


def count_flops(fn: Callable, *args: Any, **kwargs: Any) -> FlopCount:
    """Counts the operations of ``fn(*args, **kwargs)`` from its jaxpr; arguments may be arrays
    or :class:`jax.ShapeDtypeStruct` (nothing is computed)."""
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    return count_jaxpr_flops(closed.jaxpr)


def count_jaxpr_flops(jaxpr: Any) -> FlopCount:
    """Counts the operations of a (closed or open) jaxpr."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = FlopCount()
    for eqn in jaxpr.eqns:
        total = total + _equation(eqn)
    return total


def _size(aval: Any) -> int:
    return int(np.prod(getattr(aval, "shape", ()), dtype=np.int64))


def _equation(eqn: Any) -> FlopCount:
    name, params = eqn.primitive.name, eqn.params
    if name == "dot_general":
        return _dot(eqn)
    if name == "scan":
        return count_jaxpr_flops(params["jaxpr"]).scaled(params["length"])
    if name == "while":
        body = count_jaxpr_flops(params["body_jaxpr"]) + count_jaxpr_flops(params["cond_jaxpr"])
        return body._replace(unknown_loops=body.unknown_loops + 1)
    if name == "cond":
        return max((count_jaxpr_flops(b) for b in params["branches"]), key=lambda c: c.total)
    if name in ("svd", "eigh", "pure_callback"):
        return _decomposition(eqn)
    if name == "shard_map":
        # the body sees one device's block: it runs once on every device of its manual axes
        mesh = params["mesh"]
        axes = params.get("newly_manual_axes", params.get("manual_axes")) or mesh.axis_names
        copies = math.prod(dict(mesh.shape)[a] for a in axes)
        return count_jaxpr_flops(params["jaxpr"]).scaled(copies)
    subs = [v for v in params.values() if hasattr(v, "eqns") or hasattr(v, "jaxpr")]
    if subs:
        out = FlopCount()
        for s in subs:
            out = out + count_jaxpr_flops(s)
        return out
    if name in _FREE:
        return FlopCount()
    return FlopCount(elementwise=float(sum(_size(v.aval) for v in eqn.outvars)))


def _dot(eqn: Any) -> FlopCount:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval
    k = math.prod(lhs.shape[i] for i in lhs_contract)
    flops = 2.0 * _size(eqn.outvars[0].aval) * k
    wide = max(np.dtype(v.aval.dtype).itemsize for v in eqn.invars) > 4
    return FlopCount(matmul64=flops) if wide else FlopCount(matmul32=flops)


def _decomposition(eqn: Any) -> FlopCount:
    """Golub & Van Loan's counts for one batch of decompositions."""
    if eqn.primitive.name == "pure_callback":
        fn = getattr(eqn.params["callback"], "callback_func", None)
        kind = getattr(fn, "decomposition", None)
        if kind is None:
            return FlopCount()
        shape = eqn.invars[0].aval.shape[: -1 if getattr(fn, "bit_pairs", False) else None]
        vectors = False
    else:
        kind = "singular_values" if eqn.primitive.name == "svd" else "symmetric_eigenvalues"
        shape = eqn.invars[0].aval.shape
        # the eigh primitive always forms the eigenvectors (eigvalsh discards them)
        vectors = bool(eqn.params.get("compute_uv", True))
    batch = math.prod(shape[:-2])
    m, n = max(shape[-2:]), min(shape[-2:])
    if kind == "singular_values":
        each = 4 * m * m * n + 8 * m * n * n + 9 * n**3 if vectors else 4 * m * n * n - 4 * n**3 / 3
    else:
        each = 9 * n**3 if vectors else 4 * n**3 / 3
    return FlopCount(decomposition=float(batch * each))
