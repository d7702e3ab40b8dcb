"""Several hosts, for real: two processes on 127.0.0.1 joined by ``jax.distributed`` (gloo CPU
collectives), one CPU device each, train (a) with the batch sharded across them, checkpoint,
resume, and (b) with the seeds, or the learning-rate trials, sharded across them, and give the
losses of a single-process run."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from gatezoo.training import TrainConfig, train

CONFIG = dict(cell="gru", task="adding", seq_len=8, hidden=4, batch_size=8, steps=6,
              seeds=(0, 1), learning_rate=1e-2, steps_per_call=2, eval_every=2,
              eval_batches=1, checkpoint_every=2)

# one process of the run: joins through the environment, exactly as `gatezoo train` does, and
# trains each job [config, run folder, "fresh" | "resume"] of argv[1] in turn
WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    import gatezoo as gz

    for config, run_dir, mode in json.loads(sys.argv[1]):
        config = gz.TrainConfig(**config)
        result = gz.train(config, run_dir, resume=mode == "resume", progress=False)
        lines = [{k: v for k, v in ln.items() if k != "steps_per_sec"} for ln in result.history]
        print("RESULT " + json.dumps({"process": jax.process_index(),
                                      "devices": jax.device_count(),
                                      "local": jax.local_device_count(), "history": lines,
                                      "local_slots": [s.data.shape[0] for s in
                                                      result.state.keys.addressable_shards]}),
              flush=True)
    """
)
TIMEOUT_S = 400  # per launch; the test kills both processes past it, so it can never hang


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, config: dict, run_dir, mode: str) -> list[dict]:
    """Runs one job as processes 0 and 1; returns their RESULT dicts (kills both on failure)."""
    return [jobs[0] for jobs in launch_jobs(tmp_path, [(config, str(run_dir), mode)])]


def launch_jobs(tmp_path, jobs: list) -> list[list[dict]]:
    """Runs the worker on ``jobs`` as processes 0 and 1; per process, the RESULT dict of each
    job (kills both at the first failure or past the deadline)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs = []
    for i in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",  # one CPU device each
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen(
            [sys.executable, str(script), json.dumps(jobs)],
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
        assert len(found) == len(jobs), out[-2000:]
        results.append([json.loads(line[len("RESULT "):]) for line in found])
    return results


def losses(lines) -> dict:
    return {(ln["step"], ln["split"], ln["seed"], ln.get("trial")): ln["loss"] for ln in lines}


@pytest.mark.slow
def test_two_processes_shard_the_batch_and_match_one_process(tmp_path):
    single = train(TrainConfig(**CONFIG, devices=1), progress=False)
    expected = losses(single.history)

    run_dir = tmp_path / "run"
    first = launch(tmp_path, {**CONFIG, "steps": 4, "devices": 2}, run_dir, "fresh")
    assert [r["process"] for r in first] == [0, 1]
    assert all(r["devices"] == 2 and r["local"] == 1 for r in first)  # the batch spans both
    assert all(r["local_slots"] == [2] for r in first)  # every process holds every seed
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


@pytest.mark.slow
def test_two_processes_shard_the_seeds_and_the_trials_and_match_one_process(tmp_path):
    # (b): each process holds and trains half of the slots, whole batches included; the first
    # job splits two seeds, the second two learning-rate trials of one seed
    jobs = [({**CONFIG, "steps": 4}, "seeds"),
            ({**CONFIG, "steps": 4, "seeds": (0,), "lr_trials": (1e-2, 3e-2)}, "trials")]
    expected = [losses(train(TrainConfig(**config, devices=1), progress=False).history)
                for config, _ in jobs]
    results = launch_jobs(tmp_path, [
        ({**config, "devices": 2, "shard": "seeds"}, str(tmp_path / name), "fresh")
        for config, name in jobs
    ])
    for per_process in results:
        for r, want, (_, name) in zip(per_process, expected, jobs, strict=True):
            assert r["devices"] == 2 and r["local"] == 1
            assert r["local_slots"] == [1], name  # one of the two slots per process
            got = losses(r["history"])
            assert sorted(got) == sorted(want), name
            np.testing.assert_allclose([got[k] for k in sorted(got)],
                                       [want[k] for k in sorted(got)], rtol=1e-5, atol=1e-7)
    # the checkpoints hold every slot, written by the two processes together
    for _, name in jobs:
        steps = sorted(p.name for p in (tmp_path / name / "checkpoints").iterdir()
                       if p.name.isdigit())
        assert steps == ["2", "4"]
