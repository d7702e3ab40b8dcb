"""An interrupted `gatezoo compare`, as a user meets it: the report counts only the runs that
finished and marks the others "not finished"; SIGTERM stops the worker processes and leaks no
semaphore; NaN/Inf metrics do not flood the console through the TensorBoard writer."""

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from gatezoo.experiments.compare import CompareConfig, run_compare
from gatezoo.report import build_report

TINY = dict(seq_len=6, hidden=4, batch_size=4, seeds=1, trials=1, instruments=("gates", "lags"),
            eval_every=2, steps_per_call=2)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A real two-run compare, then the second run made as SIGTERM leaves it: status
    "interrupted", no result.json, metrics up to its step-0 evaluation only."""
    out = tmp_path_factory.mktemp("cmp") / "run"
    config = CompareConfig(cells=("scalar",), optimizers=("sgd", "adam"), steps=4, **TINY)
    run_compare(config, out, progress=False, log=lambda line: None)
    cut = out / "scalar-adam"
    (cut / "result.json").unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text(
        "".join(t + "\n" for t in lines if json.loads(t)["step"] == 0))
    doc = json.loads((out / "compare.json").read_text())
    doc["status"]["scalar-adam"] = "interrupted"
    (out / "compare.json").write_text(json.dumps(doc))
    build_report(out)
    return out


@pytest.mark.slow
def test_unfinished_run_is_marked_and_holds_no_measurement(interrupted):
    runs = {r["run"]: r for r in
            json.loads((interrupted / "summary.json").read_text())["compare"]["runs"]}
    assert runs["scalar-sgd"]["finished"] and "final_eval_loss" in runs["scalar-sgd"]
    cut = runs["scalar-adam"]
    assert not cut["finished"] and cut["status"] == "interrupted"
    assert cut["steps_done"] == 1 and cut["steps"] == 4
    assert not any("loss" in k or "target" in k or "wall" in k for k in cut)
    rows = {}
    for line in (interrupted / "table.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[tuple(cells[:2])] = cells
    assert rows["scalar", "adam"][4:] == ["1 of 4"] + ["not finished"] * 6
    assert rows["scalar", "sgd"][4] == "4" and "not finished" not in rows["scalar", "sgd"]


@pytest.mark.slow
def test_findings_count_only_finished_runs(interrupted):
    summary = json.loads((interrupted / "summary.json").read_text())
    findings = summary["findings"]
    first = findings[0]
    assert "1 of the 2 runs of the grid did not finish (scalar-adam)" in first["text"]
    assert first["value"] == {"not_finished": ["scalar-adam"], "finished": 1, "grid": 2}
    outcome = [f for f in findings if "runs end with a held-out loss" in f["text"]]
    assert len(outcome) == 1 and outcome[0]["value"]["runs"] == 1
    assert " of 1 finished runs end with" in outcome[0]["text"]
    for f in findings[1:]:
        assert "scalar-adam" not in json.dumps(f), f["text"]
    page = (interrupted / "report.html").read_text()
    assert "did not finish" in page and "not finished" in page


@pytest.mark.slow
def test_report_of_a_compare_where_no_run_finished(interrupted, tmp_path):
    import shutil

    out = tmp_path / "none"
    shutil.copytree(interrupted, out)
    shutil.rmtree(out / "figures")
    (out / "scalar-sgd" / "result.json").unlink()
    build_report(out)  # a partial report still, of nothing measured
    summary = json.loads((out / "summary.json").read_text())
    assert [r["finished"] for r in summary["compare"]["runs"]] == [False, False]
    assert [f["value"] for f in summary["findings"]] == [
        {"not_finished": ["scalar-sgd", "scalar-adam"], "finished": 0, "grid": 2}]
    assert not list((out / "figures").glob("*.png"))
    assert (out / "table.md").read_text().count("not finished") == 12


# -- SIGTERM of a real `gatezoo compare` with two worker processes ---------------------------


def _wait_training(out, names, proc, timeout=240.0):
    """Until every run named has written a training line past step 0."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"gatezoo ended early: {proc.communicate()[1][-3000:]}")
        ready = 0
        for name in names:
            path = out / name / "metrics.jsonl"
            if path.is_file() and any(
                    '"split": "train"' in t and '"step": 0,' not in t
                    for t in path.read_text().splitlines()[-3:]):
                ready += 1
        if ready == len(names):
            return
        time.sleep(0.5)
    pytest.fail("the runs did not start training in time")


@pytest.mark.slow
@pytest.mark.parametrize("to", ["parent", "group"])
def test_sigterm_stops_the_workers_and_leaks_no_semaphore(tmp_path, to):
    # "parent": `kill PID`, `timeout`; "group": a job scheduler or a terminal's process group
    out = tmp_path / "run"
    names = ("scalar-sgd", "scalar-adam")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # a grid that cannot finish in the test's time, trained by two worker processes (the
    # worker's TensorBoard writer holds named semaphores: the leak of the issue)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatezoo.cli", "compare", "--cells", "scalar",
         "--optimizers", "sgd,adam", "--steps", "1000000", "--seeds", "1", "--hidden", "4",
         "--seq-len", "6", "--batch-size", "4", "--trials", "1", "--instruments", "gates",
         "--eval-every", "1000000", "--workers", "2", "--quiet", "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        _wait_training(out, names, proc)
        if to == "parent":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        # stderr closes when every process holding it ended: parent, workers, resource tracker
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("gatezoo compare (or a worker of it) went on after SIGTERM")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err[-3000:]
    assert "leaked semaphore" not in err and "Traceback" not in err, err[-3000:]
    sizes = {n: (out / n / "metrics.jsonl").stat().st_size for n in names}
    time.sleep(1.0)
    assert sizes == {n: (out / n / "metrics.jsonl").stat().st_size for n in names}
    status = json.loads((out / "compare.json").read_text())["status"]
    assert status == {n: "interrupted" for n in names}
    for n in names:
        assert not (out / n / "result.json").exists()
        assert (out / n / "checkpoints").is_dir()  # saved on the interrupt: a rerun continues
    summary = json.loads((out / "summary.json").read_text())
    assert [r["finished"] for r in summary["compare"]["runs"]] == [False, False]
    assert "2 of the 2 runs of the grid did not finish" in summary["findings"][0]["text"]
    assert (out / "table.md").read_text().count("not finished") == 12


# -- NaN and Inf metrics in the TensorBoard writer ---------------------------------------------


def test_tensorboard_sink_takes_nan_and_inf_quietly(tmp_path, capfd, caplog):
    pytest.importorskip("tensorboardX", reason="the test extra installs tensorboardX")
    from gatezoo.training.sinks import TensorBoardSink

    sink = TensorBoardSink(tmp_path / "events")
    bad = {"a/ratio": math.inf, "a/neg": -math.inf, "a/undefined": math.nan}
    with caplog.at_level(logging.WARNING):
        for step in range(200):
            sink.write([{"step": step, "seed": 0, "split": "train", "loss": 0.5, **bad}])
        sink.close()
    err = capfd.readouterr().err
    assert "NaN or Inf" not in err and err == "", err[:2000]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sink.skipped == 600
    from tensorboardX.proto.event_pb2 import Event

    tags = set()
    for path in (tmp_path / "events").rglob("*tfevents*"):
        data, at = path.read_bytes(), 0
        while at < len(data):  # TFRecord framing: u64 length, u32 crc, record, u32 crc
            length = int.from_bytes(data[at:at + 8], "little")
            tags |= {v.tag for v in Event.FromString(data[at + 12:at + 12 + length])
                     .summary.value}
            at += 12 + length + 4
    assert tags == {"train/loss/seed0"}


def test_report_of_runs_whose_instrument_values_are_all_non_finite(interrupted, tmp_path,
                                                                  capfd):
    # NaN/Inf are by design for some cells and quantities: the report still builds, quietly
    import shutil

    out = tmp_path / "inf"
    shutil.copytree(interrupted, out)
    path = out / "scalar-sgd" / "metrics.jsonl"
    lines = [json.loads(t) for t in path.read_text().splitlines()]
    for line in lines:
        for k in line:
            if "/" in k:  # every instrument quantity, lag-indexed ones included
                line[k] = math.inf
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    capfd.readouterr()
    build_report(out)
    assert capfd.readouterr().err == ""
    runs = json.loads((out / "summary.json").read_text())["compare"]["runs"]
    assert runs[0]["finished"] and math.isfinite(runs[0]["final_eval_loss"])
