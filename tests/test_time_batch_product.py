"""The parameter product of the sequence backward passes: both forms against a loop over (t, b),
and the split-batch form keeping a batch sharded over two devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gatezoo.models.time_batch_product import time_batch_product


def _loop(a, c):
    out = np.zeros((a.shape[-1], c.shape[-1]))
    for t in range(a.shape[0]):
        for b in range(a.shape[1]):
            out += np.outer(a[t, b], c[t, b])
    return out


@pytest.mark.parametrize("split_batch", [False, True, None])
def test_equals_the_sum_of_outer_products(x64, split_batch):
    rng = np.random.default_rng(0)
    a, c = rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 6))
    got = time_batch_product(jnp.asarray(a), jnp.asarray(c), split_batch=split_batch)
    np.testing.assert_allclose(np.asarray(got), _loop(a, c), rtol=1e-13, atol=1e-13)


def test_leading_axes_must_agree():
    with pytest.raises(ValueError, match=r"\(T, B, m\)"):
        time_batch_product(jnp.ones((3, 2, 4)), jnp.ones((3, 4, 4)))
    with pytest.raises(ValueError, match=r"\(T, B, m\)"):
        time_batch_product(jnp.ones((6, 4)), jnp.ones((6, 4)))


@pytest.mark.skipif(jax.device_count() < 2, reason="needs two devices (tests/conftest.py)")
def test_split_batch_stays_split():
    mesh = Mesh(np.asarray(jax.devices()[:2]), ("batch",))
    split = NamedSharding(mesh, PartitionSpec(None, "batch"))
    a = jax.device_put(jnp.arange(6 * 4 * 3.0).reshape(6, 4, 3), split)
    c = jax.device_put(jnp.ones((6, 4, 5)), split)

    def hlo(fn):
        f = jax.jit(fn)
        np.testing.assert_allclose(f(a, c), _loop(np.asarray(a), np.asarray(c)), rtol=1e-6)
        return f.lower(a, c).compile().as_text()

    split = hlo(time_batch_product)  # two devices present: the split-batch form
    reshaped = hlo(lambda a, c: time_batch_product(a, c, split_batch=False))
    # each device contracts its own rows and an all-reduce sums the two (m, k) parts
    assert "all-reduce" in split and "all-gather" not in split and "all-to-all" not in split
    # the product of (T*B, .) reshapes first moves the batch between devices
    assert "all-gather" in reshaped or "all-to-all" in reshaped
