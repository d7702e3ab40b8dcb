"""Old names kept for one release: each still works and warns with the new name."""

import importlib
import sys

import pytest

import gatezoo as gz


def test_model_fns_is_layer_fns_with_a_warning():
    with pytest.warns(DeprecationWarning, match="LayerFns"):
        old = gz.ModelFns
    assert old is gz.instruments.LayerFns
    from gatezoo.instruments import protocol

    with pytest.warns(DeprecationWarning, match="NetworkFns"):
        assert protocol.ModelFns is gz.instruments.LayerFns
    with pytest.raises(AttributeError):
        gz.NoSuchName  # noqa: B018


def test_training_model_fns_module_is_run_model_with_a_warning():
    sys.modules.pop("gatezoo.training.model_fns", None)
    with pytest.warns(DeprecationWarning, match="gatezoo.training.run_model"):
        old = importlib.import_module("gatezoo.training.model_fns")
    from gatezoo.training.run_model import build_model

    assert old.build_model is build_model


# -- the curated top level (gz.__all__) and the names that moved out of it --------------------


def test_the_top_level_is_curated():
    assert len(gz.__all__) <= 35
    assert len(set(gz.__all__)) == len(gz.__all__)
    assert all(hasattr(gz, n) for n in gz.__all__)
    for name in ("attach", "train", "TrainConfig", "Recurrent", "SequenceModel", "make_task",
                 "register_task", "register_cell", "register_instrument", "make_optimizer"):
        assert name in gz.__all__
    for namespace in ("models", "jacobians", "tasks", "training", "instruments",
                      "metric_schema", "experiments", "report"):
        assert importlib.import_module(f"gatezoo.{namespace}") is getattr(gz, namespace)


@pytest.mark.parametrize("name", sorted(gz.MOVED))
def test_a_moved_name_still_works_for_a_release_and_names_its_new_place(name):
    home = gz.MOVED[name]
    with pytest.warns(DeprecationWarning, match=rf"gatezoo\.{name} moved to {home}\.{name}"):
        old = getattr(gz, name)
    assert old is getattr(importlib.import_module(home), name)
    assert name not in dir(gz)


def test_nothing_in_the_project_uses_a_moved_name():
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.rst"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.split()
    names = "|".join(sorted(gz.MOVED, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.])(?:gz|gatezoo)\.({names})\b")
    used = [f"{f}: {m.group(0)}" for f in files if f != "tests/test_deprecations.py"
            for m in pattern.finditer((root / f).read_text())]
    assert used == []
