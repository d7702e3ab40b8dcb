"""One implementation of S(t, k): ``gatezoo train --instruments sensitivity`` and ``gatezoo
reproduce s1`` execute the same Python functions for the lag sensitivity (recorded by a profiler
while each command runs, in this process, through the CLI users call)."""

import json
import sys

import pytest

import gatezoo.instruments.products as products
import gatezoo.instruments.sensitivity as sensitivity
from gatezoo.cli import main
from gatezoo.models import jacobians

#: the functions that form the products, their norms and the fitted profile
SHARED = {
    "lag_sensitivity": sensitivity.lag_sensitivity.__code__,
    "lag_products": products.lag_products.__code__,
    "extend_product": jacobians.extend_product.__code__,
}


def _codes_run_by(argv):
    seen = set()

    def record(frame, event, arg):
        if event == "call":
            seen.add(frame.f_code)

    sys.setprofile(record)
    try:
        rc = main(argv)
    finally:
        sys.setprofile(None)
    assert rc == 0
    return seen


@pytest.mark.slow
def test_train_sensitivity_and_reproduce_s1_run_the_same_sensitivity_code(tmp_path):
    train = _codes_run_by([
        "train", "--cell", "vector", "--task", "adding", "--seq-len", "6", "--hidden", "4",
        "--batch-size", "4", "--steps", "2", "--eval-every", "2", "--eval-batches", "1",
        "--instruments", "sensitivity", "--every", "sensitivity=1", "--probe-batch", "2",
        "--devices", "1", "--quiet", "--out", str(tmp_path / "train"),
    ])
    s1 = _codes_run_by([
        "reproduce", "s1", "--seeds", "1", "--models", "vector", "--steps", "2",
        "--set", "checkpoints=0,2", "--set", "seq_len=6", "--set", "hidden=4",
        "--set", "probe_batch=2", "--set", "batch_size=4", "--quiet",
        "--out", str(tmp_path / "s1"),
    ])
    for name, code in SHARED.items():
        assert code in train, f"gatezoo train did not run {name}"
        assert code in s1, f"gatezoo reproduce s1 did not run {name}"
    # and both wrote their sensitivity results
    summary = json.loads((tmp_path / "s1" / "s1.json").read_text())
    assert "vector" in summary["tasks"]["adding"]["models"]
    lines = (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()
    assert any("sensitivity" in line for line in lines)
