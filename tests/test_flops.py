"""Operation counts from a jaxpr (gatezoo.flops) against XLA's own cost analysis, hand counts
and the same program written without loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gatezoo.flops import FlopCount, count_flops
from gatezoo.linalg import singular_values, symmetric_eigenvalues


def _xla_flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_matmuls_with_batch_and_contracted_axes_match_xla():
    def chain(a, b, c):
        ab = jnp.einsum("bij,bjk->bik", a, b)
        return jnp.einsum("bik,kl->bil", ab, c)

    args = (jnp.ones((3, 16, 32)), jnp.ones((3, 32, 8)), jnp.ones((8, 24)))
    c = count_flops(chain, *args)
    assert c.matmul32 == pytest.approx(_xla_flops(chain, *args))
    assert c.matmul32 == 2 * 3 * 16 * 8 * 32 + 2 * 3 * 16 * 24 * 8
    assert c.matmul64 == c.decomposition == c.elementwise == 0


@pytest.mark.skipif(jax.device_count() < 2, reason="needs two devices (tests/conftest.py)")
def test_a_shard_map_counts_its_body_on_every_device_like_the_whole_program():
    from jax.sharding import Mesh, PartitionSpec

    mesh = Mesh(np.asarray(jax.devices()[:2]), ("seeds",))
    whole = lambda a, w: jnp.tanh(a @ w)  # noqa: E731
    split = jax.shard_map(whole, mesh=mesh, in_specs=(PartitionSpec("seeds"), PartitionSpec()),
                          out_specs=PartitionSpec("seeds"))
    args = (jnp.ones((6, 5)), jnp.ones((5, 4)))
    assert count_flops(split, *args) == count_flops(whole, *args)
    assert count_flops(split, *args).matmul32 == 2 * 6 * 4 * 5


def test_a_scan_counts_its_body_length_times_like_the_unrolled_loop():
    def step(w, h, x):
        return jnp.tanh(h @ w + x)

    def scanned(w, h0, xs):
        return jax.lax.scan(lambda h, x: (step(w, h, x), None), h0, xs)[0]

    def unrolled(w, h0, xs):
        h = h0
        for t in range(xs.shape[0]):
            h = step(w, h, xs[t])
        return h

    w, h0, xs = jnp.ones((6, 6)) * 0.1, jnp.ones((5, 6)), jnp.ones((7, 5, 6))
    counts = [count_flops(jax.grad(lambda *a, f=f: jnp.sum(f(*a) ** 2), argnums=(0, 1)),
                          w, h0, xs) for f in (scanned, unrolled)]
    one_dot = 2 * 5 * 6 * 6
    # per step: the forward h @ w, and backward dW = h^T delta and delta w^T
    assert counts[0].matmul32 == counts[1].matmul32 == 7 * 3 * one_dot
    assert counts[0].elementwise == pytest.approx(counts[1].elementwise, rel=0.1)
    assert counts[0].unknown_loops == 0


def test_cond_counts_its_costliest_branch_and_while_is_flagged():
    def f(p, a):
        return jax.lax.cond(p, lambda a: a @ a @ a, lambda a: a + 1.0, a)

    a = jnp.ones((4, 4))
    assert count_flops(f, True, a).matmul32 == 2 * 2 * 4 * 4 * 4

    def g(a):
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] @ a), (0, a))[1]

    c = count_flops(g, a)
    assert c.unknown_loops == 1 and c.matmul32 == 2 * 4 * 4 * 4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_host_decompositions_use_golub_van_loan_counts(dtype):
    with jax.enable_x64(dtype == "float64"):
        m = jnp.ones((3, 6, 4), dtype)
        c = count_flops(lambda m: (singular_values(m), symmetric_eigenvalues(m @ m.mT)), m)
        assert c.decomposition == pytest.approx(3 * (4 * 6 * 4**2 - 4 * 4**3 / 3)
                                                + 3 * 4 / 3 * 6**3)
        matmul = 2 * 3 * 6 * 6 * 4
        assert (c.matmul64, c.matmul32) == ((matmul, 0) if dtype == "float64" else (0, matmul))


def test_jnp_linalg_decompositions_are_counted_with_their_vectors():
    m = jnp.ones((5, 5))
    c = count_flops(lambda m: (jnp.linalg.svd(m), jnp.linalg.eigh(m)), m)
    assert c.decomposition == pytest.approx((4 * 125 + 8 * 125 + 9 * 125) + 9 * 125)


def test_counts_add_and_scale():
    a = FlopCount(1.0, 2.0, 3.0, 4.0, 1)
    assert a + a == FlopCount(2.0, 4.0, 6.0, 8.0, 2)
    assert a.scaled(3) == FlopCount(3.0, 6.0, 9.0, 12.0, 1)
    assert a.as_dict()["total"] == a.total == 10.0
    assert np.isclose(a.matmul, 3.0)


@pytest.mark.slow
def test_checkpoint_training_counts_every_seed_and_step_like_one_grad():
    from gatezoo.experiments.seeded import SeededModels, stream_key, train_with_checkpoints
    from gatezoo.tasks import make_task

    task = make_task("adding", seq_len=10)
    models = SeededModels.build("vector", task.input_dim, 8, seeds=[1, 2, 3])
    run = train_with_checkpoints(
        models, task, "sgd", 1e-2, [0, 4, 7], batch_size=5,
        batch_key=lambda s, i: jax.random.fold_in(stream_key(s, "batches"), i))
    one = jax.tree_util.tree_map(lambda p: p[0], models.params)
    xs, ys = task.sample(jax.random.key(0), 5)
    grad = count_flops(jax.grad(lambda p: task.loss(models.predict(p, xs), ys)), one)
    assert grad.matmul32 > 0
    assert run.flops.matmul32 == pytest.approx(3 * 7 * grad.matmul32)
