"""Instruments on real Flax models and loops: a bidirectional, padded model with dropout and a
learned initial carry measured exactly (per-layer G0 and G1 against brute force in float64), an
``nnx.Optimizer`` + ``nnx.jit`` loop with Dropout and BatchNorm against ``gz.train``, and the
paths that must never be silently wrong (initial carries, subclassed cells, cells with state).
Every model and cell is written here or in tests/helpers.py, as a user would write it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import MGU

import gatezoo as gz
from gatezoo.training.step import data_keys

D_IN, D_H = 3, 4
ADDING_IN = gz.make_task("adding", 6).input_dim


class BiEncoder(nnx.Module):
    """Dropout on the inputs, a bidirectional MGU layer over padded sequences whose forward
    direction starts from a learned carry, a head on both directions' last valid carries."""

    def __init__(self, *, rngs, dtype=jnp.float64):
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.bi = nnx.Bidirectional(
            gz.Recurrent(MGU(D_IN, D_H, rngs=rngs, param_dtype=dtype, scale=0.6, bias=0.3)),
            gz.Recurrent(MGU(D_IN, D_H, rngs=rngs, param_dtype=dtype, scale=0.6, bias=0.3)),
        )
        self.h0 = nnx.Param(0.4 * jax.random.normal(rngs.params(), (D_H,), dtype))
        self.head = nnx.Linear(2 * D_H, 1, rngs=rngs, param_dtype=dtype)

    def __call__(self, xs, lengths):
        x = self.drop(xs)
        start = jnp.broadcast_to(self.h0[...], (xs.shape[0], D_H))
        carry, ys = self.bi(x, seq_lengths=lengths, return_carry=True,
                            initial_carry=(start, jnp.zeros_like(start)))
        return self.head(jnp.concatenate(carry, axis=-1)), ys


def bi_loss(model, xs, ys):
    """Last-carry regression plus a small every-step term on the valid steps only."""
    target, lengths = ys
    pred, outs = model(xs, lengths)
    valid = (jnp.arange(xs.shape[1])[None, :] < lengths[:, None])[..., None]
    return jnp.mean((pred - target) ** 2) + 0.1 * jnp.sum(jnp.where(valid, outs, 0.0) ** 2)


def _direction(cell, x, length, h, eps, reverse):
    """One direction over one example by a Python loop (no gatezoo code): the valid part in
    order or reversed, then the padding (reversed, as Flax flips it); the gates read the
    eps-deformed state when ``eps`` is given. Returns outputs in input order and the carry at
    the last valid step."""
    steps = x.shape[0]
    order = ([*range(length - 1, -1, -1), *range(steps - 1, length - 1, -1)] if reverse
             else list(range(steps)))
    outs, last = {}, None
    for n, t in enumerate(order):
        gate = h if eps is None else jax.lax.stop_gradient(h) + eps * (
            h - jax.lax.stop_gradient(h))
        h, _ = cell.split_call(h, x[t], gate)
        outs[t] = h
        if n == length - 1:
            last = h
    return jnp.stack([outs[t] for t in range(steps)]), last


def brute_force_bi_loss(model, which, eps, xs, ys, lengths_py):
    target, lengths = ys
    x = model.drop(xs)
    preds, rows = [], []
    for b, length in enumerate(lengths_py):
        fwd, c_f = _direction(model.bi.forward_rnn.cell, x[b], length, model.h0[...],
                              eps if which == "forward_rnn" else None, reverse=False)
        bwd, c_b = _direction(model.bi.backward_rnn.cell, x[b], length,
                              jnp.zeros((D_H,), xs.dtype),
                              eps if which == "backward_rnn" else None, reverse=True)
        preds.append(model.head(jnp.concatenate([c_f, c_b])))
        rows.append(jnp.concatenate([fwd, bwd], axis=-1))
    pred, outs = jnp.stack(preds), jnp.stack(rows)
    valid = (jnp.arange(xs.shape[1])[None, :] < lengths[:, None])[..., None]
    return jnp.mean((pred - target) ** 2) + 0.1 * jnp.sum(jnp.where(valid, outs, 0.0) ** 2)


def _assert_trees_close(got, want, rel):
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        scale = max(float(jnp.max(jnp.abs(b))), 1e-3)
        assert float(jnp.max(jnp.abs(a - b))) <= rel * scale, (float(jnp.max(jnp.abs(a - b))),
                                                              scale)


@pytest.mark.slow
def test_bidirectional_padded_dropout_learned_carry_g0_g1_equal_brute_force(x64):
    model = BiEncoder(rngs=nnx.Rngs(params=0, dropout=1))
    lengths_py = [5, 3, 1]
    xs = jax.random.normal(jax.random.key(1), (3, 5, D_IN), jnp.float64)
    lengths = jnp.asarray(lengths_py, jnp.int32)
    xs = jnp.where((jnp.arange(5)[None, :] < lengths[:, None])[..., None], xs, 0.0)
    ys = (jax.random.normal(jax.random.key(2), (3, 1), jnp.float64), lengths)
    att = gz.attach(model, bi_loss, ["gates", "expansion"], self_check=True)
    assert sorted({i.layer for i in att.instruments}) == ["bi.backward_rnn", "bi.forward_rnn"]
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    state = nnx.as_pure(state)  # arrays: merged under grad and jvp traces below
    first = att.first_order(params, xs, ys, model_state=state)
    for which in ("forward_rnn", "backward_rnn"):
        def grad_at(eps, which=which):
            return jax.grad(lambda p: brute_force_bi_loss(
                nnx.merge(graphdef, p, state), which, eps, xs, ys, lengths_py))(params)

        g0 = grad_at(0.0)
        _, g1 = jax.jvp(grad_at, (0.0,), (1.0,))
        fo = first[f"bi.{which}"]
        _assert_trees_close(fo.g0, g0, 1e-10)
        _assert_trees_close(fo.g1, g1, 1e-10)
    # the learned carry receives a first-order correction through the forward layer's gates
    assert float(jnp.max(jnp.abs(first["bi.forward_rnn"].g1["h0"][...]))) > 1e-6
    # the instruments of one step see the same state: the self check is at rounding level
    out = jax.jit(lambda p, s: att.update(p, att.init(p), xs, ys, step=0, model_state=s))(
        params, state)
    for which in ("forward_rnn", "backward_rnn"):
        assert float(out.metrics[gz.metric_name("expansion", f"bi.{which}", "self_check")]) < 1e-10
    assert out.updates is None and out.opt_state is None  # measure-only: no optimizer


class Normed(nnx.Module):
    """BatchNorm and dropout on the inputs, a vector-gated layer, a head on the last step."""

    def __init__(self, rngs):
        self.norm = nnx.BatchNorm(ADDING_IN, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.rnn = gz.Recurrent(gz.VectorGate(ADDING_IN, D_H, rngs=rngs))
        self.head = nnx.Linear(D_H, 1, rngs=rngs)

    def __call__(self, xs):
        return self.head(self.rnn(self.drop(self.norm(xs)))[:, -1])


@pytest.mark.slow
def test_nnx_optimizer_and_nnx_jit_loop_equals_gz_train():
    names = ("gates", "lags", "optimizer", "expansion")
    steps, seed = 3, 0
    config = gz.TrainConfig(task="adding", seq_len=6, batch_size=4, steps=steps, seeds=(seed,),
                            learning_rate=1e-2, steps_per_call=steps, eval_every=steps,
                            devices=1, seed_batch=1, instruments=names)
    task = gz.make_task("adding", 6)
    result = gz.train(config, progress=False, task=task, model=Normed)
    lines = [ln for ln in result.history if ln["split"] == "train"]

    model = Normed(nnx.Rngs(jax.random.key(seed)))
    optimizer = nnx.Optimizer(model, gz.make_optimizer("adam", 1e-2), wrt=nnx.Param)
    att = gz.attach(model, task, names)
    inst_state = att.init(nnx.state(model, nnx.Param))
    key = jax.random.fold_in(data_keys(seed), 0)

    @nnx.jit
    def train_step(model, optimizer, inst_state, xs, ys):
        out = att.nnx_update(model, optimizer, inst_state, xs, ys)
        return out.loss, out.metrics, out.state

    stats = []
    for i in range(steps):
        xs, ys = task.sample(jax.random.fold_in(key, i), config.batch_size)
        loss, metrics, inst_state = train_step(model, optimizer, inst_state, xs, ys)
        stats.append(np.asarray(model.norm.mean[...]))
        for name, value in {"loss": loss, **metrics}.items():
            want = lines[i].get(name, np.nan)
            # float32 rounding of two compiled programs (one vmapped over seeds): 1e-6, absolute
            # and relative; Adam's per-row rates lr / (sqrt(nu_hat) + eps) divide by gradients
            # near eps at step 0, which amplifies that rounding (2e-5 seen on another CPU)
            rtol = 1e-4 if "adam_row" in name else 1e-6
            assert np.isclose(float(value), want, rtol=rtol, atol=1e-6, equal_nan=True), (
                i, name, float(value), want)
    assert int(optimizer.step[...]) == steps
    # the batch statistics moved at every step, as in a plain nnx.jit loop
    assert not np.allclose(stats[0], stats[-1])
    final = result.state.model_state["norm"]["mean"][...][0]
    np.testing.assert_allclose(np.asarray(final), stats[-1], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_measure_only_nnx_update_leaves_the_parameters():
    model = Normed(nnx.Rngs(0))
    task = gz.make_task("adding", 6)
    att = gz.attach(model, task, ["gates"])
    before = jax.tree_util.tree_map(np.asarray, nnx.state(model, nnx.Param))
    xs, ys = task.sample(jax.random.key(3), 4)
    out = nnx.jit(lambda m, s: att.nnx_update(m, None, s, xs, ys))(
        model, att.init(nnx.state(model, nnx.Param)))
    alpha_mean = float(out.metrics[gz.metric_name("gates", None, "alpha_mean")])
    assert np.isfinite(float(out.loss)) and 0 < alpha_mean < 1
    after = nnx.state(model, nnx.Param)
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after),
                    strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    moved = model.norm.mean[...]
    assert int(moved.size) == ADDING_IN and float(jnp.abs(moved).sum()) > 0


def test_update_refuses_an_nnx_optimizer_and_an_uncalled_factory_in_one_line():
    model = gz.SequenceModel(gz.GRU(2, D_H, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
    att = gz.attach(model, lambda m, x, y: jnp.mean((m(x) - y) ** 2), ["gates"])
    params = nnx.state(model, nnx.Param)
    xs, ys = jnp.ones((2, 4, 2)), jnp.zeros((2, 1))
    with pytest.raises(TypeError, match="nnx_update"):
        att.update(params, att.init(params), xs, ys, step=0,
                   optimizer=nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param), opt_state=())
    with pytest.raises(TypeError, match=r"call the factory: optax.adam\(1e-3\)"):
        att.update(params, att.init(params), xs, ys, step=0, optimizer=optax.adam, opt_state=())


class WithCarry(nnx.Module):
    """A vector-gated layer started from a learned carry, a head on the last step."""

    def __init__(self, rngs):
        self.rnn = gz.Recurrent(gz.VectorGate(ADDING_IN, D_H, rngs=rngs))
        self.h0 = nnx.Param(0.8 * jax.random.normal(rngs.params(), (D_H,)))
        self.head = nnx.Linear(D_H, 1, rngs=rngs)

    def __call__(self, xs):
        start = jnp.broadcast_to(self.h0[...], (xs.shape[0], D_H))
        return self.head(self.rnn(xs, initial_carry=start)[:, -1])


@pytest.mark.slow
def test_a_nonzero_initial_carry_enters_the_gate_trace_and_the_adjoints():
    model = WithCarry(nnx.Rngs(0))
    task = gz.make_task("adding", 6)
    xs, ys = task.sample(jax.random.key(4), 8)
    att = gz.attach(model, task, ["gates", "expansion"], self_check=True)
    params = nnx.state(model, nnx.Param)
    out = jax.jit(lambda p: att.update(p, att.init(p), xs, ys, step=0))(params)
    cell, h, alphas = model.rnn.cell, jnp.broadcast_to(model.h0[...], (8, D_H)), []
    for t in range(xs.shape[1]):  # the gate trace by a loop from the true initial state
        alphas.append(cell.time_scale(h, xs[:, t]))
        h, _ = cell(h, xs[:, t])
    assert float(out.metrics[gz.metric_name("gates", None, "alpha_mean")]) == pytest.approx(
        float(jnp.mean(jnp.stack(alphas))), rel=1e-6)
    assert float(out.metrics[gz.metric_name("expansion", None, "self_check")]) < 1e-5


class HalfGRU(gz.GRU):
    """A subclass whose own step halves the new state (Flax's pattern of a changed cell)."""

    def __call__(self, carry, x):
        new, _ = super().__call__(carry, x)
        return 0.5 * new, 0.5 * new


def test_a_subclass_step_is_run_and_its_broken_gate_protocol_refused_in_one_line():
    cell = HalfGRU(2, D_H, rngs=nnx.Rngs(0))
    xs = jax.random.normal(jax.random.key(5), (3, 5, 2))
    np.testing.assert_allclose(gz.Recurrent(cell)(xs), nnx.RNN(cell)(xs), rtol=1e-6, atol=1e-7)
    model = gz.SequenceModel(cell, 1, rngs=nnx.Rngs(1))
    with pytest.raises(gz.models.GateProtocolError, match="differs from split_call"):
        gz.attach(model, lambda m, x, y: jnp.mean((m(x) - y) ** 2), ["gates"])


class DropoutCell(nnx.Module):
    """A GRU cell with dropout on its input: it draws random numbers at every step."""

    def __init__(self, rngs):
        self.cell = nnx.GRUCell(2, D_H, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    num_feature_axes = 1

    def __call__(self, carry, x):
        return self.cell(carry, self.drop(x))

    def initialize_carry(self, input_shape, rngs=None):
        return self.cell.initialize_carry(input_shape, rngs)


@pytest.mark.slow
def test_a_cell_with_step_state_trains_but_its_step_instruments_refuse_in_one_line():
    layer = gz.Recurrent(DropoutCell(nnx.Rngs(0, dropout=1)), broadcast_rngs="dropout")
    reference = nnx.RNN(DropoutCell(nnx.Rngs(0, dropout=1)), broadcast_rngs="dropout")
    xs = jnp.ones((2, 4, 2))
    np.testing.assert_allclose(layer(xs), reference(xs), rtol=1e-6)
    with pytest.raises(ValueError, match="holds state that changes at every step"):
        gz.attach(layer, lambda m, x, y: jnp.mean((m(x) - y) ** 2), ["lags"])


@pytest.mark.slow
def test_gate_statistics_of_a_padded_batch_leave_the_padding_out():
    layer = gz.Recurrent(gz.VectorGate(2, D_H, rngs=nnx.Rngs(0)))
    xs = jax.random.normal(jax.random.key(6), (3, 6, 2))
    lengths = jnp.array([6, 2, 4])
    att = gz.attach(layer, lambda m, x, y: jnp.mean(m(x, seq_lengths=y) ** 2), ["gates"])
    params = nnx.state(layer, nnx.Param)
    metrics = att.update(params, att.init(params), xs, lengths, step=0).metrics
    cell, alphas = layer.cell, []
    for b, length in enumerate([6, 2, 4]):  # the gate of every valid step, by a loop
        h = jnp.zeros((D_H,))
        for t in range(length):
            alphas.append(cell.time_scale(h, xs[b, t]))
            h, _ = cell(h, xs[b, t])
    alphas = jnp.stack(alphas)
    gate = {q: float(metrics[gz.metric_name("gates", None, q)])
            for q in ("alpha_mean", "alpha_max", "tau_mean")}
    assert gate["alpha_mean"] == pytest.approx(float(jnp.mean(alphas)), rel=1e-6)
    assert gate["alpha_max"] == pytest.approx(float(jnp.max(alphas)), rel=1e-6)
    assert gate["tau_mean"] == pytest.approx(float(jnp.mean(1 / alphas)), rel=1e-6)


@pytest.mark.slow
def test_variable_length_adding_trains_and_its_padding_changes_nothing():
    task = gz.make_task("adding", 8, min_len=3)
    assert task.variable_length
    xs, ys = task.sample(jax.random.key(7), 6)
    assert isinstance(ys, gz.tasks.Padded)
    model = gz.SequenceModel(gz.VectorGate(task.input_dim, D_H, rngs=nnx.Rngs(0)), 1,
                             rngs=nnx.Rngs(1))
    att = gz.attach(model, task, ["gates", "expansion"])
    params = nnx.state(model, nnx.Param)
    padding = jnp.arange(8)[None, :, None] >= ys.lengths[:, None, None]
    noisy = jnp.where(padding, jax.random.normal(jax.random.key(8), xs.shape), xs)
    run = jax.jit(lambda x: att.update(params, att.init(params), x, ys, step=0))
    clean, dirty = run(xs), run(noisy)
    assert float(clean.loss) == pytest.approx(float(dirty.loss), rel=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(clean.grads), jax.tree_util.tree_leaves(dirty.grads),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for name in (gz.metric_name("gates", None, "alpha_mean"),
                 gz.metric_name("expansion", None, "g1_over_g0")):
        assert float(clean.metrics[name]) == pytest.approx(float(dirty.metrics[name]), rel=1e-5)
    config = gz.TrainConfig(cell="gru", task="adding", seq_len=8, hidden=D_H, batch_size=8,
                            steps=4, seeds=(0,), steps_per_call=2, eval_every=2,
                            task_options={"min_len": 3}, instruments=("gates",))
    lines = [ln for ln in gz.train(config, progress=False).history if ln["split"] == "train"]
    alpha_mean = gz.metric_name("gates", None, "alpha_mean")
    assert all(np.isfinite(ln["loss"]) and np.isfinite(ln[alpha_mean]) for ln in lines)


@pytest.mark.slow
def test_probe_instruments_refuse_a_padded_layer_in_one_line():
    layer = gz.Recurrent(gz.VectorGate(2, D_H, rngs=nnx.Rngs(0)))
    att = gz.attach(layer, lambda m, x, y: jnp.mean(m(x, seq_lengths=y) ** 2), ["sensitivity"])
    params = nnx.state(layer, nnx.Param)
    with pytest.raises(ValueError, match="does not yet leave padded steps out"):
        att.update(params, att.init(params), jnp.ones((2, 5, 2)), jnp.array([5, 3]), step=0)


def _valid_sum_loss(model, xs, lengths):
    outs = model(xs, seq_lengths=lengths)
    valid = jnp.arange(xs.shape[1])[None, :, None] < lengths[:, None, None]
    return jnp.sum(jnp.where(valid, outs, 0.0) ** 2)


@pytest.mark.slow
def test_lag_profiles_of_a_padded_batch_count_from_each_sequence_end():
    layer = gz.Recurrent(gz.VectorGate(2, D_H, rngs=nnx.Rngs(0)))
    lengths_py = [8, 3, 6, 5]
    xs = jax.random.normal(jax.random.key(9), (4, 8, 2))
    lengths = jnp.asarray(lengths_py)
    names = ["lags", "transport", "effective_lr", "analogies", "ratios", "gates"]
    att = gz.attach(layer, _valid_sum_loss, names)
    params = nnx.state(layer, nnx.Param)
    opt = optax.sgd(0.1)
    metrics = att.update(params, att.init(params), xs, lengths, step=0, optimizer=opt,
                         opt_state=opt.init(params)).metrics
    assert all(np.isfinite(float(v)) for v in metrics.values()), [
        k for k, v in metrics.items() if not np.isfinite(float(v))]
    cell, norms = layer.cell, []
    for b, length in enumerate(lengths_py):  # dL/dh_t of each sequence by a loop and jax.grad
        def loss_of(offsets, b=b, length=length):
            h, total = jnp.zeros((D_H,)), 0.0
            for t in range(length):
                h = cell(h, xs[b, t])[0] + offsets[t]
                total = total + jnp.sum(h ** 2)
            return total

        lam = jax.grad(loss_of)(jnp.zeros((length, D_H)))
        norms.append(np.linalg.norm(np.asarray(lam), axis=-1)[::-1])  # by lag from its end
    profile = [np.median([n[ell] for n in norms if len(n) > ell]) for ell in range(8)]
    assert float(metrics[gz.metric_name("lags", None, "adjoint_last")]) == pytest.approx(
        profile[0], rel=1e-5)
    for ell in (1, 2, 4):
        assert float(metrics[gz.metric_name("lags", None, f"ratio@{ell}")]) == pytest.approx(
            profile[ell] / profile[0], rel=1e-5)


@pytest.mark.slow
def test_model_state_is_checkpointed_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    config = gz.TrainConfig(task="adding", seq_len=6, batch_size=4, steps=2, seeds=(0, 1),
                            learning_rate=1e-2, steps_per_call=2, eval_every=2, devices=1,
                            instruments=("gates",))
    task = gz.make_task("adding", 6)
    longer = dataclasses.replace(config, steps=4)
    whole = gz.train(longer, progress=False, task=task, model=Normed)
    gz.train(config, tmp_path / "run", progress=False, task=task, model=Normed)
    resumed = gz.train(longer, tmp_path / "run", resume=True, progress=False, task=task,
                       model=Normed)
    np.testing.assert_array_equal(resumed.final_loss, whole.final_loss)
    for a, b in zip(jax.tree_util.tree_leaves(whole.state.model_state),
                    jax.tree_util.tree_leaves(resumed.state.model_state), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the batch statistics are per seed and moved
    means = np.asarray(whole.state.model_state["norm"]["mean"][...])
    assert means.shape == (2, ADDING_IN) and not np.allclose(means[0], means[1])


@pytest.mark.slow
def test_measure_only_refuses_an_instrument_that_reads_the_optimizer_and_a_missing_state():
    model = gz.SequenceModel(gz.GRU(2, D_H, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
    att = gz.attach(model, lambda m, x, y: jnp.mean((m(x) - y) ** 2), ["optimizer"])
    params = nnx.state(model, nnx.Param)
    xs, ys = jnp.ones((2, 4, 2)), jnp.zeros((2, 1))
    with pytest.raises(ValueError, match="reads the optimizer's updates or state"):
        att.update(params, att.init(params), xs, ys, step=0)
    with pytest.raises(TypeError, match="without its opt_state"):
        att.update(params, att.init(params), xs, ys, step=0, optimizer=optax.sgd(0.1))
