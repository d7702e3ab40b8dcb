"""README's "Flax's own loop" section, executed from the README itself as written."""

import re
from pathlib import Path

import pytest

from gatezoo.metric_schema import metric_name

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_flax_loop_runs_and_measures_both_directions(capsys):
    text = README.read_text()
    start = text.index("## Flax's own loop")
    blocks = re.findall(r"```python\n(.*?)```", text[start:text.index("\n## ", start + 10)], re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.count("backward G1/G0") == 3
    assert int(namespace["optimizer"].step[...]) == 30
    metrics = namespace["metrics"]
    assert {metric_name("gates", f"bi.{d}_rnn", "alpha_mean")
            for d in ("forward", "backward")} <= set(metrics)
    first, last = (float(v) for v in re.findall(r"loss (\S+)", printed)[::2])
    assert last < first  # it trains
