"""The TensorBoard writer (the ``tensorboard`` extra, installed by the ``test`` extra): every
scalar of ``metrics.jsonl`` is in the event files, under ``<split>/<metric>/seed<s>``."""

import json
import struct

import pytest

from gatezoo.training import TrainConfig, train

tensorboardX = pytest.importorskip("tensorboardX", reason="the test extra installs tensorboardX")
from tensorboardX.proto.event_pb2 import Event  # noqa: E402


def read_events(path):
    """Events of one file, read from the TFRecord framing by hand: u64 length, u32 crc, the
    record, u32 crc."""
    data = path.read_bytes()
    events, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        events.append(Event.FromString(data[at + 12: at + 12 + length]))
        at += 12 + length + 4
    return events


@pytest.mark.slow
def test_tensorboard_events_hold_every_metric_line(tmp_path):
    config = TrainConfig(cell="gru", task="adding", seq_len=8, hidden=4, batch_size=4, steps=4,
                         seeds=(0, 2), steps_per_call=2, eval_every=2, eval_batches=1,
                         devices=1)
    run_dir = tmp_path / "run"
    train(config, run_dir, progress=False)
    scalars = {}
    for path in (run_dir / "events").rglob("*tfevents*"):
        for event in read_events(path):
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    expected = {}
    for text in (run_dir / "metrics.jsonl").read_text().splitlines():
        line = json.loads(text)
        for k, v in line.items():
            if k not in ("step", "seed", "split"):
                expected[(f"{line['split']}/{k}/seed{line['seed']}", line["step"])] = v
    assert len(expected) > 20 and set(scalars) == set(expected)
    for key, value in expected.items():
        assert scalars[key] == pytest.approx(value, rel=1e-6), key  # stored as float32
