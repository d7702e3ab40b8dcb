"""Seed streams: every key a seed uses is derived by ``fold_in``/``split``, so no stream of one
seed coincides with any stream of another (which ``key(seed + offset)`` would allow).

The keys are derived the way the trainer (``gatezoo.training.step``: ``data_keys`` and the
``_TRAIN``/``_PROBE``/``_EVAL`` tags its step, evaluation and probe fold in) and the
reproductions (``gatezoo.experiments.seeded.stream_key`` over ``STREAMS``) derive them, for
seeds 0..63, and compared as raw key bytes (``jax.random.key_data``).
"""

import jax
import numpy as np
import pytest
from flax import nnx

from gatezoo.experiments.seeded import STREAMS, stream_key
from gatezoo.training.step import _EVAL, _PROBE, _TRAIN, data_keys

SEEDS = range(64)
STEPS = 16  # per-step keys checked per stream (training batches, eval batches, jitter, ...)
DRAWS = 16  # parameter-initialisation draws of a model's nnx.Rngs


def raw(key: jax.Array) -> bytes:
    key = key if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else (
        jax.random.wrap_key_data(key))
    return np.asarray(jax.random.key_data(key)).tobytes()


def init_draws(key: jax.Array) -> list[jax.Array]:
    """The keys a model's initialisers draw from ``nnx.Rngs(params=key)``."""
    rngs = nnx.Rngs(params=key)
    return [rngs.params() for _ in range(DRAWS)]


def per_step(key: jax.Array) -> list[jax.Array]:
    fold = jax.vmap(jax.random.fold_in, in_axes=(None, 0))
    keys = fold(key, np.arange(STEPS, dtype=np.uint32))
    return list(keys)


def trainer_streams(seed: int) -> dict[str, list[jax.Array]]:
    """What ``gatezoo.training.train`` derives for one seed."""
    root = data_keys(seed)
    train, probe, evaluate = (jax.random.fold_in(root, t) for t in (_TRAIN, _PROBE, _EVAL))
    return {
        "init": init_draws(jax.random.key(seed)),  # training/run_model.build_model
        "train": per_step(train),                   # step.one_step: fold_in(train, step)
        "probe": [probe],
        "eval": per_step(evaluate),                 # step.evaluate_one: fold_in(eval, j)
    }


def reproduction_streams(seed: int) -> dict[str, list[jax.Array]]:
    """What the reproductions (appendix, S1, S2) derive for one seed."""
    out: dict[str, list[jax.Array]] = {}
    for name in (n for n, (root, _) in STREAMS.items() if root == "seed"):
        key = stream_key(seed, name)
        # the model streams seed initialisers; every other stream is folded per step or index
        out[name] = init_draws(key) if name in ("cell", "readout") else [key, *per_step(key)]
    return out


def is_raw_seed_key(b: bytes) -> bool:
    """Whether key bytes are ``key(n)`` itself for some integer ``n``: a threefry key of ``n <
    2**32`` is the words ``(0, n)``; a key derived by ``fold_in``/``split`` has a random first
    word. This catches ``key(seed + offset)`` for every offset, not only those that land on
    another tested seed."""
    words = np.frombuffer(b, np.uint32)
    return raw(jax.random.key(int(words[-1]))) == b


def assert_distinct(streams_of, seeds) -> int:
    """Fails naming the first two (seed, stream, index) whose keys coincide, or the first key
    that is a raw ``key(n)``; returns the number of keys."""
    seen: dict[bytes, tuple] = {}
    for s in seeds:
        for name, keys in streams_of(s).items():
            for i, key in enumerate(keys):
                where = (s, name, i)
                b = raw(key)
                assert not is_raw_seed_key(b), f"key of {where} is key(n), not derived by fold_in"
                assert b not in seen, f"key of {where} equals the key of {seen[b]}"
                seen[b] = where
    return len(seen)


@pytest.mark.parametrize("family", [trainer_streams, reproduction_streams])
def test_streams_of_64_seeds_are_pairwise_distinct(family):
    n = assert_distinct(family, SEEDS)
    assert n == len(SEEDS) * sum(len(v) for v in family(0).values())


@pytest.mark.slow
def test_trainer_data_streams_differ_from_every_reproduction_stream():
    # Across the two families only the trainer's model initialisation may meet a reproduction
    # stream: it draws ``fold_in(key(seed), i)`` (``nnx.Rngs(params=key(seed))``, the Flax idiom a
    # user's ``model(rngs)`` gets too) where ``stream_key`` folds ``key(seed)`` by a stream
    # number. The two never run in one program; their data streams differ all the same.
    def both(s):
        trainer = {k: v for k, v in trainer_streams(s).items() if k != "init"}
        return {**{f"trainer/{k}": v for k, v in trainer.items()},
                **{f"seeded/{k}": v for k, v in reproduction_streams(s).items()}}

    assert_distinct(both, SEEDS)


def test_the_check_catches_seed_arithmetic():
    # the pattern this replaces: a stream per use as ``key(seed + offset)``; seed 0's stream at
    # offset 1 is seed 1's base stream
    def arithmetic(s):
        return {"base": [jax.random.key(s)], "data": [jax.random.key(s + 1)]}

    with pytest.raises(AssertionError, match="is key\\(n\\)"):
        assert_distinct(arithmetic, SEEDS)

    # derived from the raw key by fold_in, the offsets still meet across seeds
    def folded(s):
        return {"data": [jax.random.fold_in(jax.random.key(s + k), 0) for k in (0, 1)]}

    with pytest.raises(AssertionError, match="equals the key of"):
        assert_distinct(folded, SEEDS)
    # and a large offset, which lands on no tested seed, is still a raw key(n)
    with pytest.raises(AssertionError, match="is key\\(n\\)"):
        assert_distinct(lambda s: {"data": [jax.random.key(s + 123)]}, SEEDS)


def test_stream_names_are_checked():
    with pytest.raises(ValueError, match="unknown key stream 'nope'"):
        stream_key(0, "nope")


@pytest.mark.slow
def test_the_trainer_samples_from_these_keys():
    # ties the derivation above to the trainer's own compiled functions: its probe batch and its
    # evaluation batches are the task's samples at those keys
    from gatezoo.tasks import make_task
    from gatezoo.training import TrainConfig, train
    from gatezoo.training.run_model import build_model

    config = TrainConfig(cell="gru", task="adding", seq_len=6, hidden=4, batch_size=4, steps=0,
                         seeds=(3, 5), eval_batches=2, probe_batch_size=4,
                         instruments=("gates",))
    result = train(config, progress=False)
    task = make_task("adding", 6)
    probe_xs, _ = result.step_fns.probe(result.state.keys, None)
    for i, s in enumerate(config.seeds):
        root = data_keys(s)
        xs, _ = task.sample(jax.random.fold_in(root, _PROBE), 4, split="train")
        np.testing.assert_array_equal(np.asarray(probe_xs[i]), np.asarray(xs))
        model = build_model(config, task, s)
        losses = [task.loss(model(x), y) for x, y in (
            task.sample(k, 4, split="test") for k in per_step(jax.random.fold_in(root, _EVAL))[:2])]
        np.testing.assert_allclose(result.final_eval["loss"][i], np.mean(losses), rtol=1e-5)
