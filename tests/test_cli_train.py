"""`gatezoo train`: defaults that work, config file + flag overrides, resume, one-line errors."""

import json

import pytest

from gatezoo.cli import main

TINY = ["--task", "adding", "--seq-len", "8", "--hidden", "4", "--batch-size", "4",
        "--eval-every", "2", "--eval-batches", "1", "--checkpoint-every", "2", "--devices", "1",
        "--quiet"]


@pytest.mark.slow
def test_train_config_file_flags_and_resume(tmp_path, capsys):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"cell": "elman", "hidden": 16, "steps": 4,
                                       "optimizer": "momentum", "learning_rate": 0.05}))
    out = tmp_path / "run"
    rc = main(["train", "--config", str(config_file), *TINY, "--seeds", "0,3",
               "--cell-option", "alpha=1.0", "--cell", "leaky", "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "eval loss" in stdout and "baseline 0.1667" in stdout and str(out) in stdout
    stored = json.loads((out / "config.json").read_text())
    # the file's values, overridden by the flags
    assert stored["cell"] == "leaky" and stored["cell_options"] == {"alpha": 1.0}
    assert stored["hidden"] == 4 and stored["optimizer"] == "momentum"
    assert stored["seeds"] == [0, 3] and stored["steps"] == 4
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(t)["step"] for t in lines) == 4

    # --resume with only --out and a longer horizon continues the stored run
    rc = main(["train", "--out", str(out), "--resume", "--steps", "6", "--quiet"])
    assert rc == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["steps"] == 6 and stored["cell"] == "leaky"
    steps = [json.loads(t)["step"] for t in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(t)["split"] == "train"]
    assert sorted(steps) == sorted([i for i in range(6) for _ in (0, 3)])  # no duplicates


def test_defaults_parse_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--cell", "--task", "--optimizer", "--schedule", "--steps", "--batch-size",
                 "--seeds", "--dtype", "--out", "--config", "--resume", "--instruments"):
        assert flag in text


def test_list_shows_tasks_and_optimizers(capsys):
    assert main(["list", "optimizers"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("optimizers:") and "nesterov" in out and "rmsprop" in out
    assert main(["list", "tasks"]) == 0
    assert "adding" in capsys.readouterr().out
    assert main(["list", "schedules"]) == 0
    assert "warmup-cosine" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "nope"], "unknown task 'nope'; choose one of: adding"),
        (["--optimizer", "lion"], "unknown optimizer 'lion'; choose one of: adam"),
        (["--cell", "transformer"], "unknown cell 'transformer'; choose one of"),
        (["--steps", "-3"], "steps must be an integer >= 0, got -3"),
        (["--batch-size", "7", "--devices", "2"], "batch size 7 does not divide over 2 devices"),
        (["--seeds", "3", "--devices", "2", "--shard", "seeds"],
         "3 slots (seeds x lr trials) do not divide over 2 devices"),
        (["--shard", "model"], "unknown shard 'model'; choose one of: batch, seeds"),
        (["--schedule", "linear"], "unknown schedule 'linear'"),
        (["--seeds", "a,b"], "seeds must be a count like '4' or a list like '0,1,2'"),
        (["--dtype", "float16"], "unknown dtype 'float16'"),
        (["--config", "missing.json"], "config file 'missing.json' does not exist"),
        (["--resume"], "--resume needs --out RUN_DIR"),
        (["--gate-bias", "big"], "--gate-bias must be a number or 'chrono'"),
        (["--task-option", "channels"], "--task-option takes NAME=VALUE"),
        (["--instruments", "no-such-instrument"], "no-such-instrument"),
    ],
)
def test_bad_input_is_one_error_line(argv, message, tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "run"), *argv] if "--resume" not in argv
              else ["train", *argv])
    assert rc != 0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("gatezoo train:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was started


def test_unprepared_dataset_is_one_error_line(tmp_path, capsys):
    rc = main(["train", "--task", "smnist", "--task-option", f"data_dir={tmp_path / 'tfds'}",
               "--out", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("gatezoo train:")]
    assert len(errors) == 1 and "not prepared" in errors[0] and "tfds build" in errors[0], err


@pytest.mark.slow
def test_divergence_is_one_line_and_nonzero(tmp_path, capsys):
    rc = main(["train", *TINY, "--cell", "elman", "--optimizer", "sgd", "--lr", "1e4",
               "--steps", "20", "--out", str(tmp_path / "run")])
    assert rc == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("gatezoo train:")]
    assert len(errors) == 1 and "diverged" in errors[0] and "seed" in errors[0], err
    assert "Traceback" not in err


def test_old_batch_spelling_still_works_with_a_note(tmp_path, capsys):
    # --batch sets the same field as --batch-size (the value reaches the device check) and says
    # the flag was renamed
    rc = main(["train", "--out", str(tmp_path / "run"), "--batch", "7", "--devices", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--batch is now --batch-size" in err
    assert "batch size 7 does not divide over 2 devices" in err


@pytest.mark.slow
def test_resume_with_no_readable_checkpoint_is_one_error_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--cell", "elman", "--steps", "2", "--out", str(out)]) == 0
    for step in (out / "checkpoints").iterdir():  # every step damaged: files lost
        for f in step.rglob("*"):
            if f.is_file():
                f.unlink()
    capsys.readouterr()
    rc = main(["train", "--out", str(out), "--resume", "--steps", "4", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("gatezoo train:")]
    assert len(errors) == 1 and "no checkpoint restores (checkpoint step 2 " in errors[0], err
    assert "Traceback" not in err
