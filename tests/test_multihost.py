"""Several hosts, for real: two processes on 127.0.0.1 joined by ``jax.distributed`` (gloo CPU
collectives), one CPU device each, train with the batch sharded across them, checkpoint, resume,
and give the losses of a single-process run."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np

from gatezoo.training import TrainConfig, train

CONFIG = dict(cell="gru", task="adding", seq_len=8, hidden=4, batch_size=8, steps=6,
              seeds=(0, 1), learning_rate=1e-2, steps_per_call=2, eval_every=2,
              eval_batches=1, checkpoint_every=2)

# one process of the run: joins through the environment, exactly as `gatezoo train` does
WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    import gatezoo as gz

    config = gz.TrainConfig(**json.loads(sys.argv[1]))
    result = gz.train(config, sys.argv[2], resume=sys.argv[3] == "resume", progress=False)
    lines = [{k: v for k, v in ln.items() if k != "steps_per_sec"} for ln in result.history]
    print("RESULT " + json.dumps({"process": jax.process_index(), "devices": jax.device_count(),
                                  "local": jax.local_device_count(), "history": lines}))
    """
)
TIMEOUT_S = 400  # per launch; the test kills both processes past it, so it can never hang


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, config: dict, run_dir, mode: str) -> list[dict]:
    """Runs the worker as processes 0 and 1; returns their RESULT dicts (kills both on failure)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs = []
    for i in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",  # one CPU device each
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen(
            [sys.executable, str(script), json.dumps(config), str(run_dir), mode],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # a process that fails leaves its peer waiting for it: stop at the first failure
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, f"process exited with {p.returncode}: {err[-3000:]}"
    results = []
    for out, _ in outs:
        found = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert len(found) == 1, out[-2000:]
        results.append(json.loads(found[0][len("RESULT "):]))
    return results


def losses(lines) -> dict:
    return {(ln["step"], ln["split"], ln["seed"]): ln["loss"] for ln in lines}


def test_two_processes_shard_the_batch_and_match_one_process(tmp_path):
    single = train(TrainConfig(**CONFIG, devices=1), progress=False)
    expected = losses(single.history)

    run_dir = tmp_path / "run"
    first = launch(tmp_path, {**CONFIG, "steps": 4, "devices": 2}, run_dir, "fresh")
    assert [r["process"] for r in first] == [0, 1]
    assert all(r["devices"] == 2 and r["local"] == 1 for r in first)  # the batch spans both
    # both processes see the same (all-reduced) losses, equal to the one-process run's
    for r in first:
        got = losses(r["history"])
        assert got and set(got) <= set(expected)
        np.testing.assert_allclose([got[k] for k in sorted(got)],
                                   [expected[k] for k in sorted(got)], rtol=1e-5, atol=1e-7)
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == ["2", "4"]

    # both processes restore the checkpoint written together and carry on to step 6
    second = launch(tmp_path, {**CONFIG, "devices": 2}, run_dir, "resume")
    for r in second:
        assert min(ln["step"] for ln in r["history"] if ln["split"] == "train") == 4
    # only process 0 wrote the metric lines; all of them match the one-process run
    written = [json.loads(t) for t in (run_dir / "metrics.jsonl").read_text().splitlines()]
    got = losses(written)
    assert sorted(got) == sorted(expected) and len(written) == len(got)
    np.testing.assert_allclose([got[k] for k in sorted(got)],
                               [expected[k] for k in sorted(got)], rtol=1e-5, atol=1e-7)
