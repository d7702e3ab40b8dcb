"""Your own model, optimizer and loop: a stacked model of a user cell (tests/helpers.py),
per-layer G0 and G1 against a brute-force jax.jvp, gz.attach inside a user's jitted step
against gz.train, and Optax optimizers gatezoo does not name."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import MGU

import gatezoo as gz
from gatezoo.training.run_model import build_model
from gatezoo.training.step import data_keys

D_IN, D_H = 3, 4


class Stacked(nnx.Module):
    """Input projection, two stacked MGU layers, a linear head on the last step."""

    def __init__(self, d_in, d_h, d_out, *, rngs, dtype=jnp.float32):
        self.proj = nnx.Linear(d_in, d_h, rngs=rngs, param_dtype=dtype)
        self.layers = nnx.List([
            gz.Recurrent(MGU(d_h, d_h, rngs=rngs, param_dtype=dtype)) for _ in range(2)
        ])
        self.head = nnx.Linear(d_h, d_out, rngs=rngs, param_dtype=dtype)

    def __call__(self, xs):
        h = self.proj(xs)
        for layer in self.layers:
            h = layer(h)
        return self.head(h[:, -1])


def mse(model, xs, ys):
    return jnp.mean((model(xs) - ys) ** 2)


def brute_force_loss(model, k, eps, xs, ys):
    """The model's loss with layer ``k``'s gate path deformed by ``eps``, written out with a
    Python loop over time (no gatezoo code)."""
    h = model.proj(xs)
    for i, layer in enumerate(model.layers):
        cell, state, outs = layer.cell, jnp.zeros(h.shape[:1] + (D_H,), h.dtype), []
        for t in range(h.shape[1]):
            if i == k:
                gate = jax.lax.stop_gradient(state)
                gate = gate + eps * (state - gate)
                state, _ = cell.split_call(state, h[:, t], gate)
            else:
                state, _ = cell(state, h[:, t])
            outs.append(state)
        h = jnp.stack(outs, axis=1)
    return jnp.mean((model.head(h[:, -1]) - ys) ** 2)


@pytest.mark.slow
def test_stacked_layers_g0_g1_equal_brute_force_jvp(x64):
    model = Stacked(D_IN, D_H, 2, rngs=nnx.Rngs(0), dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (3, 6, D_IN), jnp.float64)
    ys = jax.random.normal(jax.random.key(2), (3, 2), jnp.float64)
    att = gz.attach(model, mse, ["gates", "expansion"])
    assert [(inst.name, inst.layer) for inst in att.instruments] == [
        ("gates", "layers.0"), ("expansion", "layers.0"), ("gates", "layers.1"),
        ("expansion", "layers.1")]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # gz.Recurrent holds a carry stream
    first = att.first_order(params, xs, ys)
    assert sorted(first) == ["layers.0", "layers.1"]
    for k, path in enumerate(("layers.0", "layers.1")):
        def grad_at(eps, k=k):
            return jax.grad(
                lambda p: brute_force_loss(nnx.merge(graphdef, p, rest), k, eps, xs, ys))(params)

        g0 = grad_at(0.0)
        _, g1 = jax.jvp(grad_at, (0.0,), (1.0,))
        for got, want in ((first[path].g0, g0), (first[path].g1, g1)):
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
                            strict=True):
                scale = max(float(jnp.max(jnp.abs(b))), 1e-3)
                assert float(jnp.max(jnp.abs(a - b))) <= 1e-10 * scale
        # G1 is not zero in the projection below either layer: the deformed adjoints reach it
        assert float(jnp.max(jnp.abs(first[path].g1["proj"]["kernel"][...]))) > 1e-6
    # the same numbers come out of the instruments of a jitted step, named by layer path
    out = jax.jit(lambda p: att.update(p, att.init(p), xs, ys, step=0, optimizer=optax.sgd(0.1),
                                       opt_state=optax.sgd(0.1).init(p)))(params)
    assert 0 < float(out.metrics[gz.metric_name("gates", "layers.1", "alpha_mean")]) < 1
    assert np.isfinite(float(out.metrics[gz.metric_name("expansion", "layers.0", "g1_over_g0")]))


def _user_loop(config, task, names, optimizer, steps):
    """A user's own loop: model from build_model, batches as gz.train draws them, one jitted
    step calling gz.attach's update."""
    model = build_model(config, task, seed=config.seeds[0])
    att = gz.attach(model, task, names, example=task.sample(jax.random.key(0), 2))
    params = nnx.state(model, nnx.Param)
    opt_state, inst_state = optimizer.init(params), att.init(params)
    key = jax.random.fold_in(data_keys(config.seeds[0]), 0)

    @jax.jit
    def step(params, opt_state, inst_state, i):
        xs, ys = task.sample(jax.random.fold_in(key, i), config.batch_size)
        out = att.update(params, inst_state, xs, ys, step=i, optimizer=optimizer,
                         opt_state=opt_state)
        return optax.apply_updates(params, out.updates), out.opt_state, out.state, out

    history = []
    for i in range(steps):
        params, opt_state, inst_state, out = step(params, opt_state, inst_state, i)
        history.append({"loss": out.loss, **out.metrics})
    return history


@pytest.mark.slow
@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-6), ("float64", 1e-12)])
def test_own_loop_equals_gz_train(dtype, rtol):
    names = ("gates", "lags", "optimizer", "expansion")
    config = gz.TrainConfig(cell="vector", task="adding", seq_len=6, hidden=D_H, batch_size=4,
                            steps=3, seeds=(0,), learning_rate=1e-2, steps_per_call=3,
                            eval_every=3, devices=1, seed_batch=1, dtype=dtype,
                            instruments=names)
    result = gz.train(config, progress=False)  # float64: x64 on inside train only
    with jax.enable_x64(dtype == "float64"):  # the user's own loop sets its own precision
        task = gz.make_task("adding", 6)
        optimizer = gz.make_optimizer("adam", 1e-2)
        mine = _user_loop(config, task, names, optimizer, 3)
    lines = [ln for ln in result.history if ln["split"] == "train"]
    for line, got in zip(lines, mine, strict=True):
        for name, value in got.items():
            want = line.get(name, np.nan)
            # cancellations are compared on their own scale: the remainder ||G - G0 - G1|| / ||G||
            # in units of ||G||, a correlation in units of 1
            atol = rtol if ("remainder" in name or "corr" in name) else 0.0
            assert np.isclose(float(value), want, rtol=rtol, atol=atol, equal_nan=True), (
                name, float(value), want)


# -- optimizers gatezoo does not name ----------------------------------------------------------

def _lines(result):
    return [ln for ln in result.history if ln["split"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", [
    lambda lr: optax.lion(lr),
    lambda lr: optax.adafactor(lr),
    lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr)),
    optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2)),
], ids=["lion", "adafactor", "clip-adamw-factory", "clip-adamw-built"])
def test_any_optax_optimizer_trains_with_optimizer_metrics(optimizer):
    config = gz.TrainConfig(cell="gru", task="adding", seq_len=6, hidden=D_H, batch_size=4,
                            steps=2, seeds=(0,), learning_rate=1e-2, steps_per_call=2,
                            eval_every=2, devices=1, optimizer=optimizer,
                            instruments=("optimizer",))
    line = _lines(gz.train(config, progress=False))[-1]
    assert np.isfinite(line["loss"])
    assert np.isfinite(line[gz.metric_name("optimizer", None, "step_mean")])
    factory = not isinstance(optimizer, optax.GradientTransformation)
    # a factory's rate is injected state
    assert line[gz.metric_name("optimizer", None, "found_lr")] == float(factory)
    if factory:
        assert line["lr"] == pytest.approx(1e-2)


def _optimizer_metrics(out) -> dict[str, float]:
    """The ``optimizer`` instrument's metrics of one step, by bare quantity."""
    names = {k: gz.metric_schema.parse_metric_name(k) for k in out.metrics}
    return {n.quantity: float(out.metrics[k]) for k, n in names.items()
            if n.instrument == "optimizer"}


@pytest.mark.slow
def test_effective_step_is_the_rate_for_sgd_and_correlates_with_the_gate():
    task = gz.make_task("adding", 6)
    model = build_model(gz.TrainConfig(cell="vector", hidden=D_H), task, seed=0)
    att = gz.attach(model, task, ["optimizer"])
    params = nnx.state(model, nnx.Param)
    xs, ys = task.sample(jax.random.key(0), 8)
    opt = gz.make_optimizer("sgd", 0.05)
    out = att.update(params, att.init(params), xs, ys, step=0, optimizer=opt,
                     opt_state=opt.init(params))
    m = _optimizer_metrics(out)
    assert m["step_mean"] == pytest.approx(0.05, rel=1e-5)
    assert m["step_cv"] < 1e-5
    assert m["found_lr"] == 1.0 and m["found_nu"] == 0.0
    # Adam: the per-neuron step is a real measurement, found nu, finite correlation with gates
    opt = gz.make_optimizer("adam", 0.05)
    state = opt.init(params)
    for _ in range(2):
        out = att.update(params, att.init(params), xs, ys, step=0, optimizer=opt,
                         opt_state=state)
        state = out.opt_state
    m = _optimizer_metrics(out)
    assert m["found_nu"] == 1.0 and m["step_cv"] > 1e-3
    assert -1.0 <= m["step_gate_corr"] <= 1.0


@pytest.mark.slow
def test_registered_optimizer_names_work_for_train_and_compare():
    gz.training.OPTIMIZERS.pop("test-lion", None)
    gz.register_optimizer("test-lion", lambda lr: optax.lion(lr), "Lion for the test")
    with pytest.raises(ValueError, match="already registered"):
        gz.register_optimizer("test-lion", optax.lion)
    with pytest.raises(TypeError, match="factory learning_rate"):
        gz.register_optimizer("built", optax.lion(1e-3))
    from gatezoo.experiments.compare import CompareConfig, validate

    validate(CompareConfig(cells=("gru",), optimizers=("test-lion",)))  # compare's own check
    config = dataclasses.replace(
        gz.TrainConfig(cell="gru", task="adding", seq_len=6, hidden=D_H, batch_size=4, steps=1,
                       steps_per_call=1, devices=1), optimizer="test-lion")
    assert np.isfinite(_lines(gz.train(config, progress=False))[-1]["loss"])
    gz.training.OPTIMIZERS.pop("test-lion")


@pytest.mark.slow
def test_every_instrument_runs_per_layer_of_a_stacked_model():
    model = Stacked(D_IN, D_H, 2, rngs=nnx.Rngs(0))
    xs = jax.random.normal(jax.random.key(1), (4, 6, D_IN))
    ys = jax.random.normal(jax.random.key(2), (4, 2))
    att = gz.attach(model, mse, ["full"], every={"probe": 1})
    params = nnx.state(model, nnx.Param)
    opt = optax.adam(1e-2)
    out = jax.jit(lambda p: att.update(p, att.init(p), xs, ys, step=0, optimizer=opt,
                                       opt_state=opt.init(p)))(params)
    for path in ("layers.0", "layers.1"):
        for name in ("sensitivity", "anisotropy", "truncation", "ratios", "transport"):
            got = {k: v for k, v in out.metrics.items() if k.startswith(f"{name}/{path}/")}
            assert got, (name, path)
            assert any(np.isfinite(float(v)) for v in got.values()), (name, path)
