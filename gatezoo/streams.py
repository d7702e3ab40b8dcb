"""Every PRNG stream gatezoo derives from a seed, in one table.

Each use of a seed's randomness has its own stream, ``fold_in(root, tag)`` of one of two roots:

* ``"data"``, :func:`data_keys` ``(seed)``: what ``gz.train`` samples, the training batches
  (folded by the step), the probe batch and the evaluation batches (folded by the batch index);
* ``"seed"``, ``jax.random.key(seed)``: what the reproductions draw, model initialisation, their
  own batches, input jitter, probe batches, window triples, gradient samples, power-iteration
  starts.

Streams of different seeds and of different uses never coincide (unlike ``key(seed + offset)``;
``tests/test_seed_streams.py`` checks it). Names are unique across both roots.

Example:
  >>> import jax
  >>> stream_tag("eval"), STREAMS["batches"]
  (2, ('seed', 2))
  >>> stream_key(3, "cell").shape
  ()
"""

from __future__ import annotations

import jax

__all__ = ["STREAMS", "data_keys", "stream_tag", "stream_key"]

STREAMS: dict[str, tuple[str, int]] = {
    "train": ("data", 0),
    "probe": ("data", 1),
    "eval": ("data", 2),
    "cell": ("seed", 0),
    "readout": ("seed", 1),
    "batches": ("seed", 2),
    "jitter": ("seed", 3),
    "probe_batch": ("seed", 4),
    "triples": ("seed", 5),
    "gradcov": ("seed", 6),
    "power": ("seed", 7),
}


def data_keys(seed: int) -> jax.Array:
    """The root key of a seed's data streams (train batches, probe batch, eval batches)."""
    return jax.random.fold_in(jax.random.PRNGKey(int(seed)), 0x6A7E)


def stream_tag(name: str) -> int:
    """The ``fold_in`` tag of stream ``name`` under its root."""
    if name not in STREAMS:
        raise ValueError(f"unknown key stream {name!r}; choose one of: {', '.join(STREAMS)}")
    return STREAMS[name][1]


def stream_key(seed: int | jax.Array, name: str) -> jax.Array:
    """The PRNG key of stream ``name`` (one of :data:`STREAMS`) of ``seed``."""
    tag = stream_tag(name)
    if STREAMS[name][0] == "data":
        return jax.random.fold_in(data_keys(int(seed)), tag)
    return jax.random.fold_in(jax.random.key(seed), tag)
