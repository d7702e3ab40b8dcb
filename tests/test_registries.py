"""The four registries as a user meets them: a cell, a task, an optimizer and an instrument of
one's own, registered the same way, trained with through ``gz.train``, listed by
``gatezoo list``; duplicates refused, the old entry-object form deprecated."""

import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import gatezoo as gz
from gatezoo.cli import main
from gatezoo.instruments.views import Measure
from gatezoo.metric_schema import quantities
from gatezoo.registry_entry import Entry
from gatezoo.tasks import memory


class UserLeaky(gz.VectorGate):
    """A user's cell class (here one of gatezoo's, subclassed), registered under its own name."""

    def __init__(self, d_in, d_h, *, rngs):
        super().__init__(d_in, d_h, rngs=rngs)


def short_adding(seq_len=None, *, channels=2):
    return memory.adding(seq_len or 6, channels=channels)


def carry_rms(fns, *, every=None):
    def measure(ctx, state, views):
        return {"rms": jnp.sqrt(jnp.mean(views.prev ** 2))}, state

    return Measure("user-rms", lambda p: (), measure, every=every)


NAMES = {"cell": "user-leaky", "task": "user-adding", "optimizer": "user-lion",
         "instrument": "user-rms"}


@pytest.fixture
def registered():
    entries = {
        "cell": gz.register_cell(NAMES["cell"], UserLeaky, "a user's leaky cell"),
        "task": gz.register_task(NAMES["task"], short_adding, "adding on 6 steps"),
        "optimizer": gz.register_optimizer(NAMES["optimizer"], lambda lr: optax.lion(lr),
                                           "Lion"),
        "instrument": gz.register_instrument(
            NAMES["instrument"], carry_rms, "RMS of the state", every=2,
            quantities={"rms": "root mean square of the state over batch, time and neurons"}),
    }
    yield entries
    gz.models.CELLS.pop(NAMES["cell"], None)
    gz.tasks.TASKS.pop(NAMES["task"], None)
    gz.training.OPTIMIZERS.pop(NAMES["optimizer"], None)
    gz.instruments.INSTRUMENTS.pop(NAMES["instrument"], None)


def test_every_entry_has_the_one_shape(registered):
    for kind, entry in registered.items():
        assert isinstance(entry, Entry) and entry.name == NAMES[kind]
        assert callable(entry.factory) and entry.description
    assert registered["task"].options == ("channels",)
    assert registered["instrument"].cadence == 2
    assert [q.name for q in quantities(NAMES["instrument"])] == ["rms"]
    for table in (gz.models.CELLS, gz.tasks.TASKS, gz.training.OPTIMIZERS,
                  gz.instruments.INSTRUMENTS):
        assert all(isinstance(e, Entry) for e in table.values())


def test_user_names_train_and_measure(registered):
    config = gz.TrainConfig(cell=NAMES["cell"], task=NAMES["task"], optimizer=NAMES["optimizer"],
                            instruments=(NAMES["instrument"], "gates"), hidden=4, batch_size=4,
                            steps=4, steps_per_call=2, eval_every=4, eval_batches=1,
                            learning_rate=1e-3, devices=1)
    result = gz.train(config, progress=False)
    train = [ln for ln in result.history if ln["split"] == "train"]
    rms = gz.metric_name(NAMES["instrument"], None, "rms")
    measured = [ln[rms] for ln in train if rms in ln and ln[rms] == ln[rms]]  # NaN: not run
    assert len(measured) == 2 and all(v > 0 for v in measured)  # every=2 from the record


def test_make_functions_build_user_names(registered):
    task = gz.make_task(NAMES["task"], channels=3)
    assert task.input_dim == 3
    cell = gz.make_cell(NAMES["cell"], 3, 4, rngs=nnx.Rngs(0))
    assert isinstance(cell, UserLeaky)
    opt = gz.make_optimizer(NAMES["optimizer"], 1e-3)
    assert opt.init({"w": jnp.ones(2)}) is not None
    model = gz.SequenceModel(cell, task.output_dim, rngs=nnx.Rngs(1))
    fns, _ = gz.instruments.model_fns(model, task)
    (inst,) = gz.make_instruments([NAMES["instrument"]], fns)
    assert (inst.every, inst.tier, inst.needs_gates) == (2, "step", False)


def test_gatezoo_list_shows_every_kind(registered, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES.values():
        assert name in out
    assert "RMS of the state" in out and "a user's leaky cell" in out


@pytest.mark.parametrize("kind", sorted(NAMES))
def test_duplicates_are_refused_unless_replaced(registered, kind):
    register = {"cell": gz.register_cell, "task": gz.register_task,
                "optimizer": gz.register_optimizer, "instrument": gz.register_instrument}[kind]
    factory = {"cell": UserLeaky, "task": short_adding, "optimizer": lambda lr: optax.sgd(lr),
               "instrument": carry_rms}[kind]
    with pytest.raises(ValueError, match=f"a {kind} named '{NAMES[kind]}' is already registered"
                                         "; pass replace=True"):
        register(NAMES[kind], factory, "again")
    assert register(NAMES[kind], factory, "again", replace=True).description == "again"


def test_builtin_instruments_declare_their_record_once():
    sens = gz.instruments.INSTRUMENTS["sensitivity"]
    assert (sens.tier, sens.cadence, sens.takes_compat) == ("probe", 50, True)
    table = gz.instruments.INSTRUMENTS
    assert table["lags"].needs_adjoints and table["gates"].needs_gates
    with pytest.raises(ValueError, match="gatezoo's own"):
        gz.register_instrument("gates", carry_rms, replace=True)


def test_the_entry_object_form_still_works_with_a_warning():
    try:
        with pytest.warns(DeprecationWarning, match=r"register_cell\(name, factory"):
            gz.register_cell(gz.models.CellEntry("old-cell", UserLeaky, "old form"))
        with pytest.warns(DeprecationWarning, match=r"register_task\(name, factory"):
            gz.register_task(gz.tasks.TaskEntry("old-task", short_adding, "old form"))
        assert (gz.models.CELLS["old-cell"].description
                == gz.tasks.TASKS["old-task"].description == "old form")
    finally:
        gz.models.CELLS.pop("old-cell", None)
        gz.tasks.TASKS.pop("old-task", None)


def test_register_task_and_instrument_are_exported():
    assert {"register_task", "register_instrument", "register_cell",
            "register_optimizer"} <= set(gz.__all__)
