"""Old names kept for one release: each still works and warns with the new name."""

import importlib
import sys

import pytest

import gatezoo as gz


def test_model_fns_is_layer_fns_with_a_warning():
    with pytest.warns(DeprecationWarning, match="LayerFns"):
        old = gz.ModelFns
    assert old is gz.LayerFns
    from gatezoo.instruments import protocol

    with pytest.warns(DeprecationWarning, match="NetworkFns"):
        assert protocol.ModelFns is gz.LayerFns
    with pytest.raises(AttributeError):
        gz.NoSuchName  # noqa: B018


def test_training_model_fns_module_is_run_model_with_a_warning():
    sys.modules.pop("gatezoo.training.model_fns", None)
    with pytest.warns(DeprecationWarning, match="gatezoo.training.run_model"):
        old = importlib.import_module("gatezoo.training.model_fns")
    from gatezoo.training.run_model import build_model

    assert old.build_model is build_model
