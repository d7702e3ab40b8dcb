"""Registry, presets and errors; custom cells through the hook; one trace under jit/vmap/scan;
the trainer end to end."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import data, make_context, make_model, model_fns

import gatezoo as gz
from gatezoo.instruments import INSTRUMENTS, PRESETS, list_section, make_instruments
from gatezoo.metric_schema import metric_name, parse_metric_name


class MyGate(nnx.Module):
    """A user's vector-gate cell: Flax's recurrent contract plus the two hook methods only."""

    def __init__(self, in_features, hidden_features, *, rngs, dtype=jnp.float64):
        k = rngs.params
        self.in_features, self.hidden_features = in_features, hidden_features
        self.param_dtype = dtype  # SequenceModel gives its readout the cell's dtype
        normal = lambda *s: nnx.Param(0.5 * jax.random.normal(k(), s, dtype))  # noqa: E731
        self.U, self.W, self.b = normal(in_features, hidden_features), normal(
            hidden_features, hidden_features), normal(hidden_features)
        self.U_g, self.W_g, self.b_g = normal(in_features, hidden_features), normal(
            hidden_features, hidden_features), normal(hidden_features)

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(tuple(input_shape[:-1]) + (self.hidden_features,), self.U.dtype)

    @property
    def num_feature_axes(self):
        return 1

    def time_scale(self, carry, x):
        return jax.nn.sigmoid(x @ self.U_g[...] + carry @ self.W_g[...] + self.b_g[...])

    def split_call(self, carry, x, gate_carry):
        phi = jnp.tanh(x @ self.U[...] + carry @ self.W[...] + self.b[...])
        h = carry + self.time_scale(gate_carry, x) * (phi - carry)
        return h, h

    def __call__(self, carry, x):
        return self.split_call(carry, x, carry)


def _all_metrics(fns, params, xs, ys, names=("full",), every=None, opt=None):
    """Every instrument's metrics, named by ``metric_name``, from one compiled call."""
    ctx = make_context(fns, params, xs, ys, optimizer=opt)
    insts = make_instruments(list(names), fns, every=every)

    @jax.jit
    def run(ctx):
        ctx = ctx._replace(fns=fns)
        out = {}
        for inst in insts:
            m, _ = inst.update(ctx, inst.init(ctx.params))
            out.update({metric_name(inst.name, None, k): v for k, v in m.items()})
        return out

    return {k: float(v) for k, v in run(ctx._replace(fns=None)).items()}


@pytest.mark.slow
def test_custom_cell_through_the_hook_matches_the_builtin(x64):
    builtin = make_model("vector", d_in=2, hidden=4, dtype=jnp.float64, seed=1)
    mine = gz.SequenceModel(MyGate(2, 4, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(2))
    for name in ("U", "W", "b", "U_g", "W_g", "b_g"):
        getattr(mine.cell, name)[...] = getattr(builtin.cell, name)[...]
    mine.W_o[...], mine.b_o[...] = builtin.W_o[...], builtin.b_o[...]
    xs, ys = data(0, 12, 6, 2, dtype=jnp.float64)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    every = {"probe": 1}
    ref = _all_metrics(*model_fns(builtin), xs, ys, every=every, opt=opt)
    got = _all_metrics(*model_fns(mine), xs, ys, every=every, opt=opt)
    assert set(got) == set(ref) and len(ref) > 100
    for k in ref:
        # c2 = E(1e-5) / 1e-10 carries rounding of order 1e-16 / 1e-10 in float64
        # and the slope over eps in [1e-5, 1e-3] a little of it
        rtol = 1e-4 if parse_metric_name(k).instrument == "truncation" else 1e-7
        np.testing.assert_allclose(got[k], ref[k], rtol=rtol, atol=1e-12, err_msg=k)
    precond = metric_name("analogies", None, "precond_corr")
    assert all(np.isfinite(ref[k]) for k in ref if k != precond)


@pytest.mark.slow
def test_cell_without_gates_gets_the_step_function_instruments():
    cell = nnx.SimpleCell(2, 4, rngs=nnx.Rngs(0))  # Flax's own cell, no gate protocol
    model = gz.SequenceModel(cell, 1, rngs=nnx.Rngs(1))
    fns, params = model_fns(model)
    assert not fns.gated
    insts = make_instruments(["economy", "sensitivity", "anisotropy"], fns)
    assert [i.name for i in insts] == ["lags", "optimizer", "sensitivity", "anisotropy"]
    xs, ys = data(0, 10, 5, 2)
    out = _all_metrics(fns, params, xs, ys, names=["economy", "sensitivity", "anisotropy"])
    assert np.isfinite(out[metric_name("sensitivity", None, "profile@2")])
    assert np.isfinite(out[metric_name("lags", None, "ratio@1")])
    for name in ("gates", "expansion", "truncation"):
        with pytest.raises(ValueError, match=f"instrument '{name}' needs a cell with gates"):
            make_instruments([name], fns)


def test_registry_names_presets_and_errors():
    fns, _ = model_fns(make_model("gru"))
    assert set(PRESETS["full"]) == set(INSTRUMENTS)
    assert set(PRESETS["economy"]) < set(INSTRUMENTS)
    assert {"economy", "full"} <= set(list_section())
    assert all(INSTRUMENTS[n].tier == "step" for n in PRESETS["economy"])
    names = [i.name for i in make_instruments("gates,economy", fns)]
    assert names == list(PRESETS["economy"])  # no duplicates, preset order
    insts = make_instruments(["full"], fns, every={"probe": 7, "gates": 3}, compat="paper-code")
    every = {i.name: i.every for i in insts}
    assert every["sensitivity"] == every["truncation"] == 7 and every["gates"] == 3
    assert every["lags"] == 1
    with pytest.raises(ValueError, match="unknown instrument 'gatez'"):
        make_instruments(["gatez"], fns)
    with pytest.raises(ValueError, match="compat must be one of"):
        make_instruments(["gates"], fns, compat="paper")
    with pytest.raises(ValueError, match="every"):
        make_instruments(["gates"], fns, every={"gates": 0})
    with pytest.raises(ValueError, match="every"):
        make_instruments(["gates"], fns, every={"nope": 2})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm"])
def test_one_trace_under_jit_vmap_scan(name):
    """Two seeds (vmap), three steps (scan), instruments with schedules (cond): one trace."""
    chex.clear_trace_counter()
    model = make_model(name, hidden=4)
    fns, params = model_fns(model)
    insts = make_instruments(["economy", "expansion", "sensitivity"], fns,
                             every={"probe": 2})
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(p, xs, ys):
        def one_seed(p):
            def step(carry, i):
                p, s = carry
                ctx = make_context(fns, p, xs, ys, optimizer=opt, opt_state=s, step=i)
                out = {}
                for inst in insts:
                    def go(st, inst=inst, ctx=ctx):
                        return inst.update(ctx, st)[0]
                    shapes = jax.eval_shape(go, inst.init(p))
                    m = jax.lax.cond(
                        i % inst.every == 0, go,
                        lambda st, shapes=shapes: {k: jnp.full(v.shape, jnp.nan, v.dtype)
                                                   for k, v in shapes.items()},
                        inst.init(p))
                    out.update({metric_name(inst.name, None, k): v for k, v in m.items()})
                return (optax.apply_updates(p, ctx.updates), ctx.opt_state), out
            return jax.lax.scan(step, (p, opt.init(p)), jnp.arange(3))[1]
        two = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.9 * a]), p)
        return jax.vmap(one_seed)(two)

    xs, ys = data(0, 3, 5, 3)
    out = run(params, xs, ys)
    out = run(params, xs + 1.0, ys)
    assert out[metric_name("gates", None, "alpha_mean")].shape == (2, 3)
    assert np.all(np.isfinite(out[metric_name("expansion", None, "g1_over_g0")]))
    sens = np.asarray(out[metric_name("sensitivity", None, "profile@1")])
    assert np.all(np.isfinite(sens[:, ::2])) and np.all(np.isnan(sens[:, 1]))


@pytest.mark.slow
def test_trainer_writes_instrument_metrics(tmp_path):
    train_mod = pytest.importorskip("gatezoo.training")
    cfg = train_mod.TrainConfig(
        cell="vector", hidden=8, task="adding", seq_len=12, steps=4, batch_size=8,
        steps_per_call=2, eval_every=4, checkpoint_every=100, probe_batch_size=4,
        instruments=("economy",), optimizer="adam",
    )
    train_mod.train(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r.get("split") == "train"]
    assert len(train) == 4
    for key in (("gates", "alpha_mean"), ("lags", "ratio@1"), ("transport", "candidate_s"),
                ("optimizer", "lr"), ("effective_lr", "envelope@1"),
                ("analogies", "beta_gate"), ("optimizer", "adam_row_mean")):
        key = metric_name(key[0], None, key[1])
        assert key in train[0] and np.isfinite(train[0][key]), key
