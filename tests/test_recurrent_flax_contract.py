"""Flax's recurrent-layer contract, checked on ``nnx.RNN`` and on ``gz.Recurrent`` alike.

Ported from Flax's own suites (google/flax at 18f8f31): the ``TestRNN`` cases of
``tests/nnx/nn/recurrent_test.py`` (LSTM/GRU cells in the layer, time-major, reverse,
``seq_lengths``, ``keep_order``, unroll, a custom cell, dtypes, batch sizes, recurrent dropout
with ``broadcast_rngs``, equality with ``linen.RNN``) and the RNN numerics, ``flip_sequences``
and ``Bidirectional`` cases of ``tests/linen/linen_recurrent_test.py`` (a manual loop over the
cell, the last valid carry under a mask, single examples, reverse with and without
``keep_order``, several batch dims, spatial feature axes, shared cell, custom merge). The
facts and expected behaviours are Flax's; the code is new and written for gatezoo. Tests about
one of Flax's cells alone (``TestLSTMCell``) are not ported: they do not involve the layer.

Each ported test runs with ``rnn_cls`` in ``[nnx.RNN, gz.Recurrent]`` (ids ``flax`` and
``gatezoo``) and, where it is about cells in general, with every gatezoo cell name and Flax's
four cells. Expected numbers come from a plain Python loop over the cell (:func:`reference`),
never from ``nnx.RNN``, so the ``flax`` ids validate the tests themselves. The ``test_matches_*``
tests then hold ``gz.Recurrent`` to ``nnx.RNN`` directly (1e-6, float32), on the same cell
object, including cells that draw random numbers and subclasses of gatezoo cells that override
``__call__``.

Speed: an eager ``lax.scan`` compiles on every call (~0.2 s each here), so the tests run op by
op under ``jax.disable_jit()`` (an autouse fixture); ``test_compiled_layer_matches_loop`` and
the ``vmap`` test trace the layer for every cell, so tracing-only failures still show.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

import gatezoo as gz

B, T, D_IN, D_H = 3, 4, 3, 4
LENGTHS = (2, 4, 3)  # one short, one full, one nearly full sequence
LENGTHS_2D = ((2, 4, 3), (4, 1, 3))
FLAX_CELLS = ("nnx.GRUCell", "nnx.LSTMCell", "nnx.OptimizedLSTMCell", "nnx.SimpleCell")
CELL_IDS = (*gz.cell_names(), *FLAX_CELLS)
GZ_CLASSES = (
    gz.Elman, gz.Leaky, gz.ScalarGate, gz.VectorGate, gz.GRU, gz.LSTM, gz.MinGRU, gz.MinLSTM,
    gz.RGLRU, gz.S6, gz.models.SLSTM,
)
RNN_CLASSES = [pytest.param(nnx.RNN, id="flax"), pytest.param(gz.Recurrent, id="gatezoo")]

rnn_classes = pytest.mark.parametrize("rnn_cls", RNN_CLASSES)
all_cells = pytest.mark.parametrize("cell_id", CELL_IDS)
# gz.Recurrent runs every ported test on every cell; nnx.RNN, which only validates the tests,
# on Flax's cells and two of the zoo's (the direct equivalence tests below cover the rest)
REFERENCE_CELLS = (*FLAX_CELLS, "gru", "lstm")
layer_and_cell = pytest.mark.parametrize("rnn_cls, cell_id", [
    *[pytest.param(gz.Recurrent, c, id=f"gatezoo-{c}") for c in CELL_IDS],
    *[pytest.param(nnx.RNN, c, id=f"flax-{c}") for c in REFERENCE_CELLS],
])


@pytest.fixture(autouse=True)
def _op_by_op():
    with jax.disable_jit():
        yield


# -- cells, inputs and the reference loop ---------------------------------------------------------
@functools.cache
def make_cell(cell_id: str, seed: int = 0) -> nnx.Module:
    """One shared instance per (cell, seed); no test changes a cell's parameters."""
    if cell_id in FLAX_CELLS:
        return getattr(nnx, cell_id.split(".")[1])(D_IN, D_H, rngs=nnx.Rngs(seed))
    return gz.make_cell(cell_id, D_IN, D_H, rngs=nnx.Rngs(seed))


def inputs(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def zero_carry(cell, input_shape):
    return cell.initialize_carry(tuple(input_shape), nnx.Rngs(0))


def random_carry(cell, batch, seed=2):
    like = zero_carry(cell, (*batch, D_IN))
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten(
        [0.5 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)]
    )


def reference(cell, xs, carry=None, *, seq_lengths=None, reverse=False, keep_order=False):
    """``(carry, outputs)`` of the layer's contract, by a Python loop over ``cell``.

    ``xs`` is batch-major, ``(*batch, T, *features)``. With ``reverse`` the cell reads each
    sequence back to front within its length; the padding after it is read after the sequence,
    also back to front (step ``t`` reads input ``(length - 1 - t) mod T``). Outputs are in the
    cell's reading order unless ``keep_order``. The carry is the one after the last step, or,
    with ``seq_lengths``, after each sequence's last valid step.
    """
    xs = np.asarray(xs)
    n_batch = xs.ndim - cell.num_feature_axes - 1
    batch, steps = xs.shape[:n_batch], xs.shape[n_batch]
    lengths = np.full(batch, steps) if seq_lengths is None else np.asarray(seq_lengths)
    t = np.arange(steps)
    read = (lengths[..., None] - 1 - t) % steps if reverse else np.broadcast_to(t, (*batch, steps))
    feat = (1,) * cell.num_feature_axes
    x_read = np.take_along_axis(xs, read.reshape(read.shape + feat), axis=n_batch)
    if carry is None:
        carry = zero_carry(cell, batch + xs.shape[n_batch + 1 :])
    carries, ys = [], []
    for step in range(steps):
        carry, y = cell(carry, jnp.asarray(np.take(x_read, step, axis=n_batch)))
        carries.append(carry)
        ys.append(y)
    ys = jnp.stack(ys, axis=n_batch)
    if reverse and keep_order:  # put each output back at the position of the input it read
        back = np.argsort(read, axis=-1)
        ys = jnp.take_along_axis(ys, back.reshape(back.shape + feat), axis=n_batch)
    if seq_lengths is None:
        return carry, ys
    last = lengths - 1

    def at_length(*leaves):
        stacked = np.stack(leaves)  # (T, *batch, ...)
        idx = last.reshape((1, *batch) + (1,) * (stacked.ndim - 1 - n_batch))
        return jnp.asarray(np.take_along_axis(stacked, idx, axis=0)[0])

    return jax.tree.map(at_length, *carries), ys


def assert_close(actual, expected, tol=1e-5):
    """Same pytree structure, shapes and dtypes; values within ``tol`` (relative and absolute)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.shape == e.shape, (a.shape, e.shape)
        assert a.dtype == e.dtype, (a.dtype, e.dtype)
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=tol, atol=tol)


def differs(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return not all(np.allclose(x, y, atol=1e-6) for x, y in pairs)


def rng_numbers(state):
    """The keys (as raw data) and counts of an ``nnx.RngState`` state, as plain arrays."""
    return [
        jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a
        for a in jax.tree.leaves(state)
    ]


def time_major(x, n_batch=1):
    return jnp.moveaxis(x, n_batch, 0)


# -- small cells written for these tests ------------------------------------------------------
class Delegating(nnx.Module):
    """Base of the wrappers below: the wrapped cell's step, carry and feature axes."""

    def __init__(self, cell):
        self.cell = cell

    def __call__(self, carry, x):
        return self.cell(carry, x)

    def initialize_carry(self, input_shape, rngs=None):
        return self.cell.initialize_carry(input_shape, rngs)

    @property
    def num_feature_axes(self):
        return 1


class RandomCarry(Delegating):
    """Draws its initial carry from the ``rngs`` it is given (one key per carry leaf)."""

    def initialize_carry(self, input_shape, rngs=None):
        leaves, treedef = jax.tree.flatten(zero_carry(self.cell, input_shape))
        return treedef.unflatten([jax.random.normal(rngs(), a.shape, a.dtype) for a in leaves])


class InputDropout(Delegating):
    """Drops the cell's input with a mask from the ``drop`` stream; appends the mask to ``y``."""

    def __init__(self, cell, rngs):
        super().__init__(cell)
        self.drop = nnx.Dropout(0.5, rng_collection="drop", rngs=rngs)

    def __call__(self, carry, x):
        mask = self.drop(jnp.ones_like(x))
        carry, y = self.cell(carry, x * mask)
        return carry, jnp.concatenate([y, mask], axis=-1)


class Echo(nnx.Module):
    """Outputs its input unchanged: what the layer feeds the cell becomes visible."""

    def __call__(self, carry, x):
        return carry + 1.0, x

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1])

    @property
    def num_feature_axes(self):
        return 1


class ConcatCell(nnx.Module):
    """A user's cell outside ``RNNCellBase``: ``h = tanh(W [x, h])``."""

    def __init__(self, in_features, hidden_features, rngs):
        self.hidden_features = hidden_features
        self.dense = nnx.Linear(in_features + hidden_features, hidden_features, rngs=rngs)

    def __call__(self, carry, x):
        h = jnp.tanh(self.dense(jnp.concatenate([x, carry], axis=-1)))
        return h, h

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros((*input_shape[:-1], self.hidden_features))

    @property
    def num_feature_axes(self):
        return 1


class PointwiseCell(nnx.Module):
    """A cell on ``(positions, channels)`` features (two feature axes), standing in for
    ``ConvLSTMCell`` of the linen test, which ``nnx`` does not have."""

    def __init__(self, in_features, hidden_features, rngs):
        self.hidden_features = hidden_features
        self.inp = nnx.Linear(in_features, hidden_features, rngs=rngs)
        self.rec = nnx.Linear(hidden_features, hidden_features, use_bias=False, rngs=rngs)

    def __call__(self, carry, x):
        h = jnp.tanh(self.inp(x) + self.rec(carry) + jnp.roll(carry, 1, axis=-2))
        return h, h

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros((*input_shape[:-1], self.hidden_features))

    @property
    def num_feature_axes(self):
        return 2


class DroppedInputGRU(nnx.GRUCell):
    """Flax's GRU cell reading a dropped-out input."""

    def __init__(self, in_features, hidden_features, *, rngs):
        super().__init__(in_features, hidden_features, rngs=rngs)
        self.drop = nnx.Dropout(0.4, rng_collection="drop", rngs=rngs)

    def __call__(self, carry, x):
        return super().__call__(carry, self.drop(x))


class DroppedCarryCell(nnx.Module):
    """A tiny cell holding its own ``Rngs``: dropout on the carry before the update."""

    def __init__(self, in_features, hidden_features, *, rngs):
        self.hidden_features = hidden_features
        self.rngs = rngs
        self.dense = nnx.Linear(in_features + hidden_features, hidden_features, rngs=rngs)
        self.drop = nnx.Dropout(0.4, rng_collection="drop")

    def __call__(self, carry, x):
        kept = self.drop(carry, rngs=self.rngs)
        h = jnp.tanh(self.dense(jnp.concatenate([x, kept], axis=-1)))
        return h, h

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros((*input_shape[:-1], self.hidden_features))

    @property
    def num_feature_axes(self):
        return 1


class DroppedCarryGRU(gz.GRU):
    """gatezoo's GRU whose new carry is dropped out (an overridden ``__call__``)."""

    def __init__(self, in_features, hidden_features, *, rngs):
        super().__init__(in_features, hidden_features, rngs=rngs)
        self.drop = nnx.Dropout(0.4, rng_collection="drop", rngs=rngs)

    def __call__(self, carry, x):
        new, _ = super().__call__(carry, x)
        new = self.drop(new)
        return new, new


def halved(cls):
    """A subclass of a gatezoo cell whose ``__call__`` halves the new carry."""

    def __call__(self, carry, x):
        new, y = cls.__call__(self, carry, x)
        return jax.tree.map(lambda c: 0.5 * c, new), y

    return type(f"Halved{cls.__name__}", (cls,), {"__call__": __call__})


# -- scenarios: one layer call each, shared by the ported and the direct tests ---------------------
# name -> (leading batch dims, time-major input, constructor options, call options, random carry)
SCENARIOS = {
    "plain": ((B,), False, {}, {}, False),
    "return_carry": ((B,), False, {"return_carry": True}, {}, False),
    "initial_carry": ((B,), False, {"return_carry": True}, {}, True),
    "batch1-unroll": ((1,), False, {"unroll": 3}, {}, False),  # T = 4: a partial unroll too
    "seq_lengths": ((B,), False, {"return_carry": True}, {"seq_lengths": LENGTHS}, False),
    "seq_lengths-no_carry": ((B,), False, {}, {"seq_lengths": LENGTHS}, False),
    "reverse": ((B,), False, {"reverse": True, "return_carry": True}, {}, False),
    "keep_order": (
        (B,), False, {"reverse": True, "keep_order": True}, {"return_carry": True}, False,
    ),
    "reverse-seq_lengths": (
        (B,), False, {}, {"reverse": True, "return_carry": True, "seq_lengths": LENGTHS}, False,
    ),
    "keep_order-seq_lengths": (
        (B,), False, {"reverse": True, "keep_order": True, "return_carry": True},
        {"seq_lengths": LENGTHS}, False,
    ),
    "time_major": ((B,), True, {"time_major": True, "return_carry": True}, {}, False),
    "overrides-off": (
        (B,), False,
        {"time_major": True, "return_carry": True, "reverse": True, "keep_order": True},
        {"time_major": False, "return_carry": False, "reverse": False, "keep_order": False}, False,
    ),
    "overrides-on": (
        (B,), True, {},
        {"time_major": True, "return_carry": True, "reverse": True, "keep_order": True}, True,
    ),
    "time_major-keep_order-seq_lengths": (
        (B,), True, {"time_major": True},
        {"reverse": True, "keep_order": True, "return_carry": True, "seq_lengths": LENGTHS}, False,
    ),
    "batch2": ((2, B), False, {"return_carry": True}, {}, True),
    "batch2-keep_order-seq_lengths": (
        (2, B), False, {"reverse": True, "keep_order": True}, {"seq_lengths": LENGTHS_2D}, False,
    ),
    "batch2-time_major-reverse": (
        (2, B), True, {}, {"time_major": True, "reverse": True, "return_carry": True}, False,
    ),
}


def scenario_args(cell, name):
    """``(batch-major inputs, constructor options, call arguments, merged options)``."""
    batch, tm_input, ctor, call, random = SCENARIOS[name]
    xs = inputs((*batch, T, D_IN))
    call = dict(call)
    if random:
        call["initial_carry"] = random_carry(cell, batch)
    if "seq_lengths" in call:
        call["seq_lengths"] = jnp.array(call["seq_lengths"])
    options = {"time_major": False, "return_carry": False, "reverse": False, "keep_order": False}
    options.update({k: v for k, v in {**ctor, **call}.items() if k in options})
    assert options["time_major"] == tm_input
    return xs, ctor, call, options


def run_scenario(rnn_cls, cell, name, **extra):
    xs, ctor, call, options = scenario_args(cell, name)
    layer_input = time_major(xs, xs.ndim - 2) if options["time_major"] else xs
    return rnn_cls(cell, **ctor, **extra)(layer_input, **call)


@functools.cache
def layer_output(rnn_cls, cell_id, name):
    """The layer's answer for a scenario, computed once per (layer class, cell, scenario)."""
    return run_scenario(rnn_cls, make_cell(cell_id), name)


@functools.cache
def expected(cell_id, name, seed=0):
    """What the contract says for a scenario, by :func:`reference`."""
    cell = make_cell(cell_id, seed)
    xs, _, call, options = scenario_args(cell, name)
    carry, ys = reference(
        cell, xs, call.get("initial_carry"), seq_lengths=call.get("seq_lengths"),
        reverse=options["reverse"], keep_order=options["keep_order"],
    )
    if options["time_major"]:
        ys = time_major(ys, xs.ndim - 2)
    return (carry, ys) if options["return_carry"] else ys


def check(rnn_cls, cell_id, name):
    got = layer_output(rnn_cls, cell_id, name)
    assert_close(got, expected(cell_id, name))
    return got


# -- ported: the layer against a loop over its cell -----------------------------------------------
@pytest.mark.slow
@layer_and_cell
def test_outputs_and_carry_match_manual_loop(rnn_cls, cell_id):
    carry, ys = check(rnn_cls, cell_id, "initial_carry")
    cell = make_cell(cell_id)
    out_dim = cell(carry, inputs((B, T, D_IN))[:, 0])[1].shape[-1]
    assert ys.shape == (B, T, out_dim)
    default = check(rnn_cls, cell_id, "plain")  # no initial carry: the cell's own
    assert differs(default, ys)
    assert_close(check(rnn_cls, cell_id, "return_carry")[1], default)


@pytest.mark.slow
@layer_and_cell
def test_batch_size_one_and_unroll(rnn_cls, cell_id):
    assert check(rnn_cls, cell_id, "batch1-unroll").shape[:2] == (1, T)


@layer_and_cell
def test_seq_lengths_select_each_sequences_last_carry(rnn_cls, cell_id):
    carry, ys = check(rnn_cls, cell_id, "seq_lengths")
    last_carry, unmasked = expected(cell_id, "return_carry")
    assert_close(ys, unmasked)  # the outputs are not masked
    short = jax.tree.map(lambda c: c[0], (carry, last_carry))
    assert differs(*short)  # sequence 0 (length 2) keeps its carry after step 2, not step T
    # without return_carry, seq_lengths leaves a forward layer's outputs as they are
    assert_close(check(rnn_cls, cell_id, "seq_lengths-no_carry"), unmasked)


@layer_and_cell
def test_reverse(rnn_cls, cell_id):
    check(rnn_cls, cell_id, "reverse")


@layer_and_cell
def test_reverse_keep_order(rnn_cls, cell_id):
    check(rnn_cls, cell_id, "keep_order")


@layer_and_cell
@pytest.mark.parametrize("keep_order", [False, True], ids=["reading-order", "keep-order"])
def test_reverse_with_seq_lengths(rnn_cls, cell_id, keep_order):
    check(rnn_cls, cell_id, "keep_order-seq_lengths" if keep_order else "reverse-seq_lengths")


@layer_and_cell
def test_time_major(rnn_cls, cell_id):
    carry, ys = check(rnn_cls, cell_id, "time_major")
    assert ys.shape[:2] == (T, B)
    for leaf in jax.tree.leaves(carry):
        assert leaf.shape[0] == B and not np.allclose(leaf, 0.0)


@pytest.mark.slow
@layer_and_cell
def test_multiple_batch_dims(rnn_cls, cell_id):
    assert check(rnn_cls, cell_id, "batch2")[1].shape[:3] == (2, B, T)
    check(rnn_cls, cell_id, "batch2-keep_order-seq_lengths")


@layer_and_cell
def test_call_arguments_override_constructor(rnn_cls, cell_id):
    assert isinstance(check(rnn_cls, cell_id, "overrides-off"), jax.Array)
    check(rnn_cls, cell_id, "overrides-on")


@pytest.mark.slow
@layer_and_cell
def test_unbatched_inputs_and_vmap(rnn_cls, cell_id):
    cell = make_cell(cell_id)
    xs = inputs((B, T, D_IN))
    lengths = jnp.array(LENGTHS)
    batched = expected(cell_id, "reverse-seq_lengths")
    layer = rnn_cls(cell, reverse=True, return_carry=True)
    row = jax.tree.map(lambda a: a[1], batched)
    assert_close(layer(xs[1], seq_lengths=lengths[1]), row)  # one (T, in) sequence
    mapped = nnx.vmap(lambda m, x, n: m(x, seq_lengths=n), in_axes=(None, 0, 0))(
        layer, xs, lengths
    )
    assert_close(mapped, batched)
    graphdef, state = nnx.split(layer)
    pure = jax.vmap(
        lambda st, x, n: nnx.merge(graphdef, st)(x, seq_lengths=n), in_axes=(None, 0, 0)
    )(state, xs, lengths)
    assert_close(pure, batched)


@layer_and_cell
def test_bidirectional_with_seq_lengths(rnn_cls, cell_id):
    forward, backward = make_cell(cell_id), make_cell(cell_id, seed=1)
    xs = inputs((B, T, D_IN))
    layer = nnx.Bidirectional(rnn_cls(forward), rnn_cls(backward), return_carry=True)
    (carry_f, carry_b), ys = layer(xs, seq_lengths=jnp.array(LENGTHS))
    ref_f = expected(cell_id, "seq_lengths")
    ref_b = expected(cell_id, "keep_order-seq_lengths", seed=1)
    assert_close((carry_f, carry_b), (ref_f[0], ref_b[0]))
    assert_close(ys, jnp.concatenate([ref_f[1], ref_b[1]], axis=-1))
    assert ys.shape == (B, T, 2 * ref_f[1].shape[-1])


@rnn_classes
@pytest.mark.parametrize("cell_id", ["gru", "nnx.LSTMCell"])
def test_bidirectional_shared_cell_and_merge_fn(rnn_cls, cell_id):
    cell = make_cell(cell_id)
    layer = nnx.Bidirectional(rnn_cls(cell), rnn_cls(cell), merge_fn=jnp.add)
    ys = layer(inputs((B, T, D_IN)))
    assert ys.shape == (B, T, D_H)
    assert_close(ys, expected(cell_id, "plain") + expected(cell_id, "keep_order")[1])


@layer_and_cell
def test_carry_rngs(rnn_cls, cell_id):
    cell = RandomCarry(make_cell(cell_id))
    xs = inputs((B, 2, D_IN))
    shape = (B, D_IN)

    def from_carry(carry):
        return reference(cell, xs, carry)[1]

    layer = rnn_cls(cell)
    given = layer(xs, rngs=nnx.Rngs(carry=7))  # an Rngs at the call: its carry stream, forked
    assert_close(given, from_carry(cell.initialize_carry(shape, nnx.Rngs(carry=7).carry.fork())))
    # the layer's own stream (rngs=True) is RngStream(0, tag='carry'), advancing call by call
    own, stream = rnn_cls(cell), nnx.RngStream(0, tag="carry")
    first = own(xs)
    assert_close(first, from_carry(cell.initialize_carry(shape, stream)))
    assert_close(own(xs)[:, 0], from_carry(cell.initialize_carry(shape, stream))[:, 0])
    built = rnn_cls(cell, rngs=nnx.Rngs(carry=3))  # an Rngs at construction: forked too
    forked = nnx.Rngs(carry=3).carry.fork()
    assert_close(built(xs)[:, 0], from_carry(cell.initialize_carry(shape, forked))[:, 0])
    assert differs(given, first)


@layer_and_cell
@pytest.mark.parametrize("broadcast", [False, True], ids=["per-step", "broadcast"])
def test_dropout_cell_and_broadcast_rngs(rnn_cls, cell_id, broadcast):
    cell = InputDropout(make_cell(cell_id), nnx.Rngs(drop=1))
    layer = rnn_cls(cell, broadcast_rngs="drop" if broadcast else None)
    xs = inputs((B, T, D_IN))
    assert cell.drop.rngs.count[...] == 0
    masks = []
    for call in (1, 2):
        ys = layer(xs)
        # a broadcast stream advances once per call, a carried one once per step
        assert cell.drop.rngs.count[...] == call * (1 if broadcast else T)
        mask = ys[..., -D_IN:]
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0.0, 2.0}
        same_over_time = all(np.array_equal(mask[:, 0], mask[:, t]) for t in range(T))
        assert same_over_time == broadcast
        if call == 1:  # the rest of the output is the cell run on the masked inputs
            assert_close(ys[..., :-D_IN], reference(cell.cell, xs * mask)[1])
        masks.append(mask)
    assert differs(*masks)  # a new call draws new masks


@pytest.mark.slow
@layer_and_cell
def test_compiled_layer_matches_loop(rnn_cls, cell_id):
    """The other tests run op by op; here the scan is traced and compiled, as users run it."""
    name = "time_major-keep_order-seq_lengths"
    with jax.disable_jit(False):
        got = run_scenario(rnn_cls, make_cell(cell_id), name)
    assert_close(got, expected(cell_id, name))


# -- ported: single Flax cells and custom cells -----------------------------------------------
@pytest.mark.slow
@rnn_classes
def test_recurrent_dropout_model(rnn_cls):
    class RecurrentDropoutLSTM(nnx.OptimizedLSTMCell):
        def __init__(self, in_features, hidden_features, *, rngs):
            super().__init__(in_features, hidden_features, rngs=rngs)
            self.hidden_drop = nnx.Dropout(0.25, rng_collection="recurrent_dropout", rngs=rngs)

        def __call__(self, carry, x):
            (c, h), _ = super().__call__(carry, x)
            h = self.hidden_drop(h)
            return (c, h), h

    class Model(nnx.Module):
        def __init__(self, rngs):
            cell = RecurrentDropoutLSTM(D_IN, 6, rngs=rngs)
            self.lstm = rnn_cls(cell, broadcast_rngs="recurrent_dropout")
            self.drop = nnx.Dropout(0.2, rngs=rngs)
            self.head = nnx.Linear(6, 1, rngs=rngs)

        def __call__(self, x):
            return self.head(self.drop(self.lstm(x))[:, -1])

    model = Model(nnx.Rngs(0, recurrent_dropout=1))
    x = jnp.ones((2, T, D_IN))
    assert model.lstm.cell.hidden_drop.rngs.count[...] == 0
    first = model(x)
    assert first.shape == (2, 1)
    assert model.lstm.cell.hidden_drop.rngs.count[...] == 1
    second = model(x)
    assert model.lstm.cell.hidden_drop.rngs.count[...] == 2
    assert differs(first, second)


@pytest.mark.slow
@rnn_classes
def test_custom_cell(rnn_cls):
    cell = ConcatCell(D_IN, D_H, nnx.Rngs(7))
    xs = inputs((2, T, D_IN))
    carry0 = cell.initialize_carry((2, D_IN))
    ys = rnn_cls(cell)(xs, initial_carry=carry0)
    assert ys.shape == (2, T, D_H)
    assert_close(ys, reference(cell, xs, carry0)[1])


@rnn_classes
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_dtypes(rnn_cls, dtype):
    cell = nnx.LSTMCell(D_IN, D_H, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(8))
    xs = inputs((2, T, D_IN)).astype(dtype)
    ys = rnn_cls(cell)(xs, initial_carry=zero_carry(cell, (2, D_IN)))
    assert ys.dtype == dtype and ys.shape == (2, T, D_H)
    assert_close(ys, reference(cell, xs)[1], tol=2e-2)


@pytest.mark.slow
@rnn_classes
def test_two_feature_axes(rnn_cls):
    cell = PointwiseCell(2, D_H, nnx.Rngs(9))
    xs = inputs((2, T, 3, 2))  # (batch, time, positions, channels)
    carry, ys = rnn_cls(cell, return_carry=True)(xs)
    assert ys.shape == (2, T, 3, D_H) and carry.shape == (2, 3, D_H)
    assert not np.allclose(carry, 0.0)
    assert_close((carry, ys), reference(cell, xs))
    lengths = jnp.array([3, T])
    got = rnn_cls(cell, time_major=True, reverse=True, return_carry=True)(
        time_major(xs), seq_lengths=lengths
    )
    ref_carry, ref_ys = reference(cell, xs, seq_lengths=lengths, reverse=True)
    assert_close(got, (ref_carry, time_major(ref_ys)))


@pytest.mark.slow
@rnn_classes
@pytest.mark.parametrize("is_time_major", [False, True], ids=["batch-major", "time-major"])
@pytest.mark.parametrize("features", [1, 3])
def test_flip_sequences_seen_by_the_cell(rnn_cls, is_time_major, features):
    xs = jnp.arange(2 * 5 * features, dtype=jnp.float32).reshape(2, 5, features)
    lengths = jnp.array([4, 2])

    def run(**options):
        layer = rnn_cls(Echo(), time_major=is_time_major, **options)
        out = layer(time_major(xs) if is_time_major else xs, seq_lengths=lengths)
        return time_major(out) if is_time_major else out

    got = run(reverse=True)
    # each sequence is read back to front within its length, then its padding back to front
    np.testing.assert_array_equal(got[0], xs[0, np.array([3, 2, 1, 0, 4])])
    np.testing.assert_array_equal(got[1], xs[1, np.array([1, 0, 4, 3, 2])])
    np.testing.assert_array_equal(run(reverse=True, keep_order=True), xs)


@rnn_classes
def test_lstm_matches_linen_rnn(rnn_cls):
    xs = inputs((2, T, D_IN), seed=42)
    linen_rnn = linen.RNN(linen.LSTMCell(features=D_H))
    variables = linen_rnn.init(jax.random.key(1), xs)
    cell = nnx.LSTMCell(D_IN, D_H, rngs=nnx.Rngs(0))
    for name, params in variables["params"]["cell"].items():
        dense = getattr(cell, "if_" if name == "if" else name)
        dense.kernel[...] = params["kernel"]
        if "bias" in params:
            dense.bias[...] = params["bias"]
    reference_ys = linen_rnn.apply(variables, xs)
    np.testing.assert_allclose(rnn_cls(cell)(xs), reference_ys, rtol=1e-5, atol=1e-5)


@rnn_classes
def test_constructor_keeps_options(rnn_cls):
    cell = make_cell("gru")
    layer = rnn_cls(
        cell, time_major=True, return_carry=True, reverse=True, keep_order=True, unroll=2,
        broadcast_rngs="drop",
    )
    assert layer.cell is cell
    assert (layer.time_major, layer.return_carry, layer.reverse, layer.keep_order) == (
        True, True, True, True
    )
    assert (layer.unroll, layer.broadcast_rngs) == (2, "drop")
    with pytest.raises(ValueError):
        rnn_cls(cell, rngs="not rngs")


def test_signatures_match_nnx_rnn():
    for method in ("__init__", "__call__"):
        ours = inspect.signature(getattr(gz.Recurrent, method)).parameters
        flax = inspect.signature(getattr(nnx.RNN, method)).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in flax.values()
        ], method


# -- gz.Recurrent against nnx.RNN on the same cell ---------------------------------------------
@all_cells
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_matches_nnx_rnn(cell_id, scenario):
    assert_close(
        layer_output(gz.Recurrent, cell_id, scenario), layer_output(nnx.RNN, cell_id, scenario),
        1e-6,
    )


RANDOM_CELLS = {
    "dropped-input-GRUCell": DroppedInputGRU,
    "dropped-carry-custom": DroppedCarryCell,
    "dropped-carry-gz.GRU": DroppedCarryGRU,
}


@pytest.mark.parametrize("kind", list(RANDOM_CELLS))
@pytest.mark.parametrize("broadcast", [False, True], ids=["per-step", "broadcast"])
@pytest.mark.parametrize("scenario", ["initial_carry", "keep_order-seq_lengths"])
def test_random_cell_matches_nnx_rnn(kind, broadcast, scenario):
    def run(rnn_cls):  # a fresh copy of the cell, seeded alike, for each layer class
        cell = RANDOM_CELLS[kind](D_IN, D_H, rngs=nnx.Rngs(0, drop=5))
        extra = {"broadcast_rngs": "drop"} if broadcast else {}
        layer_calls = [run_scenario(rnn_cls, cell, scenario, **extra) for _ in range(2)]
        return layer_calls, nnx.state(cell, nnx.RngState)

    (flax_calls, flax_rngs), (gz_calls, gz_rngs) = run(nnx.RNN), run(gz.Recurrent)
    assert differs(flax_calls[0], flax_calls[1])  # dropout is active and redrawn
    assert_close(gz_calls, flax_calls, 1e-6)
    assert_close(rng_numbers(gz_rngs), rng_numbers(flax_rngs), 0.0)  # same keys and counts


@all_cells
def test_carry_rngs_match_nnx_rnn(cell_id):
    cell = RandomCarry(make_cell(cell_id))
    xs = inputs((B, 2, D_IN))

    def calls(rnn_cls):
        own = rnn_cls(cell, return_carry=True)
        built = rnn_cls(cell, rngs=nnx.Rngs(carry=3), reverse=True)
        return [
            own(xs), own(xs), own(xs, rngs=nnx.Rngs(carry=4)), built(xs),
            built(xs, rngs=nnx.Rngs(carry=5).carry),
        ]

    assert_close(calls(gz.Recurrent), calls(nnx.RNN), 1e-6)


@pytest.mark.parametrize("cls", GZ_CLASSES, ids=[c.__name__ for c in GZ_CLASSES])
def test_overridden_call_matches_nnx_rnn(cls):
    cell = halved(cls)(D_IN, D_H, rngs=nnx.Rngs(0))
    parent = cls(D_IN, D_H, rngs=nnx.Rngs(0))  # the same parameters, the parent's step
    for scenario in ("initial_carry", "keep_order-seq_lengths"):
        flax_ys = run_scenario(nnx.RNN, cell, scenario)
        assert differs(flax_ys, run_scenario(nnx.RNN, parent, scenario))
        assert_close(run_scenario(gz.Recurrent, cell, scenario), flax_ys, 1e-6)
