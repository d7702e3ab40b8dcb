"""README's "Your own model, optimizer and loop", executed from the README itself as written."""

import re
from pathlib import Path

import numpy as np
import pytest

import gatezoo as gz

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks():
    text = README.read_text()
    start = text.index("## Your own model, optimizer and loop")
    end = text.index("\n## ", start + 10)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


@pytest.mark.slow
def test_readme_own_model_loop_and_gz_train(capsys):
    blocks = readme_blocks()
    assert len(blocks) == 2, "the README section has its loop example and its gz.train example"
    gz.models.CELLS.pop("mgu", None)
    gz.training.OPTIMIZERS.pop("clipped-lion", None)
    namespace: dict = {}
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
        printed = capsys.readouterr().out
        assert printed.count("layer 2 mean gate") == 3
        first = namespace["first"]
        assert sorted(first) == ["rnn1", "rnn2"]
        g1 = np.concatenate([np.ravel(x) for x in
                             __import__("jax").tree_util.tree_leaves(first["rnn2"].g1)])
        assert np.linalg.norm(g1) > 0
        result = namespace["result"]
        train = [ln for ln in result.history if ln["split"] == "train"]
        assert {ln["seed"] for ln in train} == {0, 1}
        assert all(np.isfinite(ln[gz.metric_name("expansion", "rnn1", "g1_over_g0")])
                   for ln in train)
        assert gz.metric_name("gates", "rnn2", "alpha_mean") in train[-1]
        # compare accepts the registered names
        from gatezoo.experiments.compare import CompareConfig, validate

        validate(CompareConfig(cells=("mgu", "gru"), optimizers=("clipped-lion", "adam"),
                               seq_len=20))
    finally:
        gz.models.CELLS.pop("mgu", None)
        gz.training.OPTIMIZERS.pop("clipped-lion", None)
