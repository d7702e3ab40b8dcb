r"""Spectral decompositions that cannot deadlock: singular values and symmetric eigenvalues.

On CPU, jaxlib 0.10's LAPACK kernels split a *batched* decomposition into chunks, schedule the
chunks on XLA's intra-op thread pool and block until they finish. When the thunk executor runs as
many independent decompositions at once as the pool has threads (two on a 2-core machine: the
S2 probe has one per lag), every pool thread waits for chunks that no free thread will ever run,
and the program stops forever. The functions here take the decomposition out of that pool on
CPU: the matrices go to numpy's LAPACK through :func:`jax.pure_callback`, which runs on the
calling thread and never waits on XLA's pool. Other backends use ``jnp.linalg`` unchanged.

Both functions work under ``jit``, ``vmap`` and ``lax.scan``; neither is differentiable (the
instruments take spectra only on probe steps, outside any gradient).

Example:
  >>> import jax.numpy as jnp
  >>> from gatezoo.linalg import singular_values, symmetric_eigenvalues
  >>> singular_values(jnp.diag(jnp.array([3.0, 1.0, 2.0]))).tolist()
  [3.0, 2.0, 1.0]
  >>> symmetric_eigenvalues(jnp.array([[2.0, 1.0], [1.0, 2.0]])).tolist()
  [1.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["singular_values", "symmetric_eigenvalues"]


def _host_batched(fn: Callable[[np.ndarray], np.ndarray], m: np.ndarray, width: int):
    """``fn`` over the leading axes of ``m``; a matrix LAPACK cannot decompose (NaN or Inf
    entries) gives NaNs, as ``jnp.linalg`` does, instead of an exception inside XLA."""
    m = np.asarray(m)
    try:
        return np.asarray(fn(m), dtype=m.dtype)
    except np.linalg.LinAlgError:
        flat = m.reshape((-1,) + m.shape[-2:])
        out = np.full((flat.shape[0], width), np.nan, dtype=m.dtype)
        for i, one in enumerate(flat):
            if np.all(np.isfinite(one)):
                try:
                    out[i] = fn(one)
                except np.linalg.LinAlgError:
                    pass
        return out.reshape(m.shape[:-2] + (width,))


def _on_host(
    fn: Callable[[np.ndarray], np.ndarray], m: jax.Array, width: int, kind: str
) -> jax.Array:
    """``fn`` on the host; ``kind`` labels the callback for :mod:`gatezoo.flops`."""
    dtype = m.dtype
    out_shape = m.shape[:-2] + (width,)
    if dtype.itemsize != 8:
        shape = jax.ShapeDtypeStruct(out_shape, dtype)

        def host32(a):
            return _host_batched(fn, np.asarray(a, dtype), width)

        host32.decomposition = kind
        return jax.pure_callback(host32, shape, m, vmap_method="expand_dims")
    # 64-bit values cross as uint32 pairs: jax.enable_x64 is thread-local and the callback runs
    # on an XLA thread, where a float64 result would otherwise be cast to float32
    shape = jax.ShapeDtypeStruct(out_shape + (2,), jnp.uint32)

    def host(bits):
        a = np.ascontiguousarray(np.asarray(bits)).view(dtype).reshape(bits.shape[:-1])
        return _host_batched(fn, a, width).astype(dtype).view(np.uint32).reshape(
            a.shape[:-2] + (width, 2))

    host.decomposition, host.bit_pairs = kind, True
    bits = jax.lax.bitcast_convert_type(m, jnp.uint32)  # (..., n, k, 2)
    out = jax.pure_callback(host, shape, bits, vmap_method="expand_dims")
    return jax.lax.bitcast_convert_type(out, dtype)


def singular_values(m: jax.Array) -> jax.Array:
    """Singular values of (a batch of) matrices, descending: ``(..., n, k) -> (..., min(n, k))``.

    Equal to ``jnp.linalg.svd(m, compute_uv=False)``; on CPU computed by numpy's LAPACK on the
    host so that many batched SVDs in one program cannot deadlock XLA's thread pool.
    """
    m = jnp.asarray(m)
    if jax.default_backend() != "cpu":
        return jnp.linalg.svd(m, compute_uv=False)
    return _on_host(lambda a: np.linalg.svd(a, compute_uv=False), m, min(m.shape[-2:]),
                    "singular_values")


def symmetric_eigenvalues(m: jax.Array) -> jax.Array:
    """Eigenvalues of (a batch of) symmetric matrices, ascending: ``(..., n, n) -> (..., n)``.

    Equal to ``jnp.linalg.eigvalsh(m)``; on CPU computed on the host like
    :func:`singular_values`.
    """
    m = jnp.asarray(m)
    if m.shape[-1] != m.shape[-2]:
        raise ValueError(f"symmetric_eigenvalues needs square matrices, got shape {m.shape}")
    if jax.default_backend() != "cpu":
        return jnp.linalg.eigvalsh(m)
    return _on_host(np.linalg.eigvalsh, m, m.shape[-1], "symmetric_eigenvalues")
