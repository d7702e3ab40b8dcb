"""The metric schema: every name the instruments and the trainer write is a declared quantity,
every declared quantity is written by some configuration, nothing outside the schema spells a
full metric name, and a mistyped quantity is refused with the closest one named."""

import ast
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from helpers import MGU

import gatezoo as gz
from gatezoo.instruments import INSTRUMENTS
from gatezoo.metric_schema import (
    QUANTITIES,
    TRAINER,
    declare,
    instruments,
    metric_name,
    parse_metric_name,
    quantities,
    quantity_of,
    series_name,
)

ROOT = Path(__file__).resolve().parents[1]
# the fields of a metrics.jsonl line that are not metrics
LINE_FIELDS = {"step", "seed", "split", "trial"}
# a task's own metric_fn may return any name: no built-in configuration writes that pattern
OPEN_ENDED = {("eval", "{metric}")}
T, D_H = 6, 4


class TwoLayers(nnx.Module):
    """A projection, a user's gated cell and Flax's own cell (no gate protocol) stacked."""

    def __init__(self, d_in, d_out, *, rngs):
        self.proj = nnx.Linear(d_in, D_H, rngs=rngs)
        self.lower = gz.Recurrent(MGU(D_H, D_H, rngs=rngs))
        self.upper = gz.Recurrent(nnx.SimpleCell(D_H, D_H, rngs=rngs))
        self.head = nnx.Linear(D_H, d_out, rngs=rngs)

    def __call__(self, xs):
        return self.head(self.upper(self.lower(self.proj(xs)))[:, -1])


def _attached_metrics(model, task, self_check=False) -> dict:
    """One measured step of every instrument (preset ``full``, probes included) on ``model``."""
    att = gz.attach(model, task, ["full"], self_check=self_check)
    params = nnx.state(model, nnx.Param)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)  # the rate is read back
    xs, ys = task.sample(jax.random.key(0), 4)
    out = jax.jit(lambda p: att.update(p, att.init(p), xs, ys, step=0, optimizer=opt,
                                       opt_state=opt.init(p)))(params)
    return out.metrics


@pytest.fixture(scope="module")
def written():
    """``{configuration: [(split, name, layers of the model)]}`` of every metric written.

    gz.train writes its own metrics and an instrument's through the same attach update that
    measures the other configurations (compiling every instrument once per model: the cost of
    this file)."""
    task = gz.make_task("adding", T)
    config = gz.TrainConfig(cell="gru", task="adding", seq_len=T, hidden=D_H, batch_size=4,
                            steps=1, steps_per_call=1, eval_every=1, eval_batches=1,
                            instruments=("gates",), devices=1)
    lines = gz.train(config, progress=False).history
    out = {"gz.train": [(ln["split"], k, ("",)) for ln in lines for k in ln
                        if k not in LINE_FIELDS]}
    gru = gz.SequenceModel(gz.GRU(task.input_dim, D_H, rngs=nnx.Rngs(0)), task.output_dim,
                           rngs=nnx.Rngs(1))
    out["one gated layer"] = [("train", k, ("",))
                              for k in _attached_metrics(gru, task, self_check=True)]
    # the upper layer has no gate protocol: the preset keeps its step-function instruments
    two = TwoLayers(task.input_dim, task.output_dim, rngs=nnx.Rngs(0))
    out["two layers"] = [("train", k, ("lower", "upper")) for k in _attached_metrics(two, task)]
    # held-out metrics are the task's own: the trainer writes task.metrics of each task
    for name in ("copy", "selective-copy", "mqar"):
        t = gz.make_task(name)
        xs, ys = t.sample(jax.random.key(0), 2)
        pred = jnp.zeros(ys.shape + (t.output_dim,))
        out[name] = [("eval", metric_name("eval", None, k), ("",)) for k in t.metrics(pred, ys)]
    return out


@pytest.mark.slow
def test_every_written_name_is_a_declared_quantity(written):
    for config, names in written.items():
        assert names, config
        for split, name, layers in names:
            instrument, layer, quantity = parse_metric_name(name, split)
            found = quantity_of(name, split)
            assert found.instrument == instrument, (config, name)
            if instrument in TRAINER or len(layers) == 1:
                assert layer is None, (config, name)
            else:
                assert layer in layers, (config, name)
            assert metric_name(instrument, layer, quantity) == name


@pytest.mark.slow
def test_every_declared_quantity_is_written_by_some_configuration(written):
    emitted = {quantity_of(name, split) for names in written.values()
               for split, name, _ in names}
    declared = {q for q in QUANTITIES if q.instrument in INSTRUMENTS or q.instrument in TRAINER}
    missing = sorted(f"{q.instrument}: {q.name}" for q in declared - emitted
                     if (q.instrument, q.name) not in OPEN_ENDED)
    assert not missing, f"declared but written by no configuration: {missing}"
    # the two-layer model names its layers, and measures its gate-less one without gates
    two = {n for _, n, _ in written["two layers"]}
    assert metric_name("gates", "lower", "alpha_mean") in two
    assert metric_name("lags", "upper", "decay_rate") in two
    assert not any(parse_metric_name(n).layer == "upper" and quantity_of(n).instrument in
                   ("gates", "expansion", "truncation") for n in two)
    assert {q.instrument for q in QUANTITIES} == set(INSTRUMENTS) | set(TRAINER)


def test_declared_quantities_round_trip_and_are_defined():
    assert len({(q.instrument, q.name) for q in QUANTITIES}) == len(QUANTITIES)
    fill = {"lag": "4", "group": "cell.W_z", "metric": "score"}
    for q in QUANTITIES:
        assert q.definition.strip() and q.definition.rstrip().endswith("."), q
        concrete = re.sub(r"\{(\w+)\}", lambda m: fill[m[1]], q.name)
        for layer in (None,) if q.instrument in TRAINER else (None, "layers.1"):
            name = metric_name(q.instrument, layer, concrete)
            split = q.instrument if q.instrument in TRAINER else "train"
            assert parse_metric_name(name, split) == (q.instrument, layer, concrete)
            assert quantity_of(name, split) == q
    assert series_name("sensitivity", "layers.1", "profile") == "sensitivity/layers.1/profile"


def test_a_mistyped_name_is_refused_with_the_closest_quantity():
    with pytest.raises(ValueError, match=r"^unknown quantity 'profle@4' of instrument "
                                         r"'sensitivity'; closest: 'profile@\{lag\}'$"):
        metric_name("sensitivity", None, "profle@4")
    with pytest.raises(ValueError, match="closest: 'alpha_mean'"):
        metric_name("gates", "layers.0", "alpha_maen")
    with pytest.raises(ValueError, match="closest: 'grad_norm'"):
        metric_name("train", None, "grad_nrom")
    with pytest.raises(ValueError, match="closest: 'ratio@{lag}'"):
        series_name("lags", None, "ratios")
    with pytest.raises(ValueError, match="closest: 'g1_over_g0'"):
        quantity_of("expansion/g1_over_g1")
    with pytest.raises(ValueError, match="not layer 'rnn'"):
        metric_name("train", "rnn", "loss")
    with pytest.raises(ValueError, match="without '/'"):
        metric_name("gates", "a/b", "alpha_mean")
    with pytest.raises(ValueError, match="not a metric name"):
        parse_metric_name("gates//alpha_mean")
    with pytest.raises(ValueError, match="declares no quantities"):
        quantity_of("my_probe/score")


def test_an_instrument_of_your_own_is_named_alike_and_may_be_declared():
    assert metric_name("schema_test_probe", "rnn", "score") == "schema_test_probe/rnn/score"
    declare(gz.metric_schema.Quantity("schema_test_probe", "score@{lag}", "A test score by lag."))
    assert quantity_of("schema_test_probe/score@3").name == "score@{lag}"
    assert quantities("schema_test_probe")[0].definition == "A test score by lag."
    with pytest.raises(ValueError, match="closest: 'score@{lag}'"):
        metric_name("schema_test_probe", None, "scores@3")
    with pytest.raises(ValueError, match="gatezoo's own"):
        declare(gz.metric_schema.Quantity("gates", "extra", "Not allowed."))


# -- no metric name is spelled outside the schema ----------------------------------------------

# TensorBoard's tags are "<split>/<metric>/seed<s>" (training/sinks.py), not metric names
_TENSORBOARD_TAG = re.compile(r"^(train|eval)/.+/seed\d+$")


def _spelled(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, literal head)`` of every string constant or f-string of ``tree`` whose literal
    start is an instrument's (or the trainer's) namespace followed by ``/``."""
    namespaces = sorted({q.instrument for q in QUANTITIES})  # gatezoo's own and the trainer's
    spelled = re.compile(rf"^({'|'.join(map(re.escape, namespaces))})/")
    inside = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        head = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            head = None if id(node) in inside else node.value
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            head = first.value if isinstance(first, ast.Constant) else None
        if head is not None and spelled.match(head) and not _TENSORBOARD_TAG.match(head):
            found.append((node.lineno, head))
    return found


def _named_instruments(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, instrument)`` of the ``metric_name``/``series_name`` calls with a constant
    instrument, and the names of the ``Instrument(...)`` objects built, in ``tree``."""
    calls, own = [], set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args
                and isinstance(node.args[0], ast.Constant)):
            continue
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(
            node.func, "id", "")
        if func in ("metric_name", "series_name"):
            calls.append((node.lineno, node.args[0].value))
        elif func == "Instrument":
            own.add(node.args[0].value)
    return [(line, name) for line, name in calls if name not in own]


def _sources() -> dict[str, ast.AST]:
    # the schema itself, and this file, which spells names to check that they read back
    skip = {ROOT / "gatezoo" / "metric_schema.py", Path(__file__).resolve()}
    files = [p for d in ("gatezoo", "tests", "benchmarks")
             for p in sorted((ROOT / d).rglob("*.py")) if p not in skip]
    out = {str(p.relative_to(ROOT)): ast.parse(p.read_text(), str(p)) for p in files}
    readme = (ROOT / "README.md").read_text()
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", readme, re.S)):
        out[f"README.md (python block {i + 1})"] = ast.parse(block)
    return out


def test_no_metric_name_is_spelled_outside_the_schema():
    sources = _sources()
    assert len(sources) > 50
    spelled = [f"{where}:{line}: {head!r}" for where, tree in sources.items()
               for line, head in _spelled(tree)]
    assert not spelled, "build these with gatezoo.metric_name:\n" + "\n".join(spelled)
    # and the instruments those calls name exist (a quantity is checked when the call runs)
    known = set(instruments())
    unknown = [f"{where}:{line}: {name!r}" for where, tree in sources.items()
               for line, name in _named_instruments(tree) if name not in known]
    assert not unknown, "metric_name of an instrument the schema does not know:\n" + "\n".join(
        unknown)


def test_the_scan_finds_spelled_names():
    tree = ast.parse('a = "gates/alpha_mean"\nb = f"lags/ratio@{ell}"\nc = "lags"\n'
                     'd = f"{x}/gates/alpha_mean"\ne = "train/loss/seed0"\n'
                     'f = metric_name("gatse", None, "alpha_mean")\n')
    assert _spelled(tree) == [(1, "gates/alpha_mean"), (2, "lags/ratio@")]
    assert _named_instruments(tree) == [(6, "gatse")]
