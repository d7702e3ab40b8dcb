"""`gatezoo compare`, `gatezoo report` and `gatezoo reproduce` from the command line."""

import json

import pytest

from gatezoo.cli import main


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "run"
    rc = main(["compare", "--cells", "scalar", "--optimizers", "sgd,momentum", "--steps", "20",
               "--seeds", "2", "--hidden", "8", "--seq-len", "10", "--batch-size", "8",
               "--instruments", "economy", "--every", "step=5", "--eval-every", "10",
               "--lr", "sgd=0.05", "--trials", "2", "--lr-range", "momentum=0.001:0.1",
               "--out", str(out), "--quiet"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_compare_end_to_end(compare_run):
    out = compare_run
    for name in ("scalar-sgd", "scalar-momentum"):
        assert (out / name / "metrics.jsonl").is_file()
        assert (out / name / "result.json").is_file()
        cfg = json.loads((out / name / "config.json").read_text())
        assert cfg["steps"] == 20 and cfg["seeds"] == [0, 1] and cfg["hidden"] == 8
    assert json.loads((out / "scalar-sgd" / "config.json").read_text())["learning_rate"] == 0.05
    # sgd pinned by --lr: no search; momentum: two trials over the given range, one selected
    assert not json.loads((out / "scalar-sgd" / "result.json").read_text())["tuning"]["searched"]
    tuning = json.loads((out / "scalar-momentum" / "result.json").read_text())["tuning"]
    assert tuning["rates"] == pytest.approx([1e-3, 1e-1]) and tuning["chosen"] in (0, 1)
    assert len(tuning["eval_loss"]) == 2 and len(tuning["eval_loss"][0]) == 2
    assert tuning["chosen_rate"] == tuning["rates"][tuning["chosen"]]
    for f in ("report.html", "summary.json", "table.md", "figures/loss_curves.png"):
        assert (out / f).is_file(), f
    doc = json.loads((out / "compare.json").read_text())
    assert doc["status"] == {"scalar-sgd": "done", "scalar-momentum": "done"}
    summary = json.loads((out / "summary.json").read_text())
    assert {r["run"] for r in summary["compare"]["runs"]} == {"scalar-sgd", "scalar-momentum"}
    assert all(r["steps_done"] == 20 for r in summary["compare"]["runs"])


@pytest.mark.slow
def test_report_command_rebuilds(compare_run, tmp_path, capsys):
    assert main(["report", str(compare_run), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").is_file()
    assert "report:" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_continues_where_it_stopped(compare_run, capsys):
    # both runs are finished, so a second call keeps them and only rebuilds the report
    assert main(["compare", "--cells", "scalar", "--optimizers", "sgd,momentum", "--steps",
                 "20", "--seeds", "2", "--hidden", "8", "--seq-len", "10", "--batch-size", "8",
                 "--instruments", "economy", "--out", str(compare_run), "--quiet"]) == 0
    assert "already finished" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["compare", "--cells", "gruu"], "unknown cell 'gruu'"),
    (["compare", "--optimizers", "adom"], "unknown optimizer 'adom'"),
    (["compare", "--task", "nope"], "nope"),
    (["report", "/nonexistent/run"], "does not exist"),
    (["compare", "--lr-range", "sgd=1:0.1"], "needs 0 < LO <= HI"),
    (["compare", "--lr-range", "sgd=0.1"], "LO:HI"),
    (["compare", "--lr-range", "rmsprop=0.1:1"], "not in the grid"),
    (["compare", "--trials", "0"], "trials must be a positive integer"),
])
def test_bad_input_is_one_line(argv, message, capsys, tmp_path):
    if argv[0] == "compare":
        argv = [*argv, "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_reproduce_appendix_cli(tmp_path, capsys):
    assert main(["reproduce", "appendix", "--seeds", "2", "--out", str(tmp_path),
                 "--quiet"]) == 0
    doc = json.loads((tmp_path / "appendix.json").read_text())
    assert doc["config"]["seeds"] == 2 and doc["config"]["seq_len"] == 100
    for gate in ("scalar", "vector"):
        assert abs(doc["gates"][gate]["aggregate"]["slope_median"] - 2) < 0.05
    assert (tmp_path / "figures" / "appendix_vector_E.png").is_file()
    assert "report:" in capsys.readouterr().out


def test_reproduce_rejects_zero_seeds_and_steps_instead_of_using_defaults(capsys):
    from gatezoo.cli import main

    assert main(["reproduce", "s1", "--seeds", "0"]) == 2
    assert "seeds must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["reproduce", "s2", "--seeds", "1", "--steps", "0"]) == 2
    assert "steps must be a positive integer, got 0" in capsys.readouterr().err
