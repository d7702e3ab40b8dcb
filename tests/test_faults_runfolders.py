"""Reports rebuilt from damaged run folders say what they cannot tell and never guess it.

A real two-run compare on the ``short`` task (whose trivial baseline, 0.5, is not the adding
task's 0.167) is trained once; each test copies it, or one of its runs as a lone train folder,
damages the copy and checks the exact words of the report or of the one-line error: a folder
without a readable config has no baseline, target or steps to it; a run with no metric says
"no metrics yet"; a damaged run of a compare is shown as damaged and left out of every figure
and finding while the others still report.
"""

import dataclasses
import errno
import html
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

from gatezoo import cli
from gatezoo.experiments.compare import CompareConfig, run_compare
from gatezoo.experiments.partial import resume_parts
from gatezoo.metric_schema import metric_name
from gatezoo.report import ReportWarning, RunFileError, build_report, report_figures, runfiles

RUNS = ("scalar-sgd", "scalar-adam")
SETTINGS = dict(task="short", cells=("scalar",), optimizers=("sgd", "adam"), seq_len=8,
                hidden=4, steps=10, batch_size=4, seeds=1, trials=1, instruments=("gates",),
                eval_every=5, steps_per_call=5)
LOSS = metric_name("train", None, "loss")
LEFT_OUT = ("The task's trivial baseline, the held-out target and the steps to it are left "
            "out (not guessed from a default task), and so is every finding that needs them")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(compare folder, its intact report)``: scalar x (sgd, adam) on ``short``, T 8."""
    out = tmp_path_factory.mktemp("faults") / "cmp"
    run_compare(CompareConfig(**SETTINGS), out, progress=False, log=lambda line: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)  # an intact folder warns of nothing
        intact = report_figures(out)
    return out, intact


@pytest.fixture
def lone(trained, tmp_path):
    """A copy of one run of the compare as a lone train run folder (config.json, metrics)."""
    run = tmp_path / "run"
    shutil.copytree(trained[0] / "scalar-sgd", run)
    (run / "result.json").unlink()
    return run


@pytest.fixture
def compare(trained, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(trained[0], out)
    return out


def _unreadable(path: Path, monkeypatch) -> None:
    """Makes ``path`` unreadable: its permissions, and where they do not stop this process (a
    test run as root) the report's reading of it faulted as the operating system would."""
    path.chmod(0)
    if not os.access(path, os.R_OK):
        return
    real = open

    def guarded(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(runfiles, "open", guarded, raising=False)


def _quiet_figures(path: Path) -> list:
    """The report's figures, the warnings already checked by the caller silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportWarning)
        return report_figures(path)[2]


def _messages(caught) -> list[str]:
    return [str(w.message) for w in caught if w.category is ReportWarning]


def _records(summary: dict) -> dict[str, dict]:
    return {r["run"]: r for r in summary["compare"]["runs"]}


def _cli_error(argv: list[str], capsys) -> str:
    """The CLI's stderr for a command that must fail: exit 2, one line, no traceback."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


# -- a lone train run without a readable config -------------------------------------------------


@pytest.mark.slow
def test_an_intact_run_is_measured_against_its_own_task(lone):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)
        _, _, _, _, summary = report_figures(lone)
    rec = _records(summary)["."]
    assert rec["baseline"] == 0.5 and rec["target"] == 0.25  # short's, not adding's 1/6
    assert "notes" not in summary


def _truncated(path: Path) -> str:
    """Cuts config.json inside the task's name, as an interrupted write leaves it; returns the
    parser's words for it."""
    text = path.read_text()
    at = text.index('"task": "') + len('"task": ')
    path.write_text(text[:at + 3])
    line = text[:at].count("\n") + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    return f"is not valid JSON (Unterminated string starting at: line {line} column {column})"


def _damage_config(kind: str, path: Path, monkeypatch) -> str:
    """Damages ``path`` (a config.json) as ``kind``; returns what the report must say of it."""
    if kind == "missing":
        path.unlink()
        return "does not exist"
    if kind == "truncated":
        return _truncated(path)
    if kind == "list":
        path.write_text(json.dumps([json.loads(path.read_text())]))
        return "holds a list, not a JSON object"
    if kind == "folder":
        path.unlink()
        path.mkdir()
        return "is not a file"
    if kind == "no task":
        cfg = json.loads(path.read_text())
        del cfg["task"]
        path.write_text(json.dumps(cfg))
        return "names no task"
    _unreadable(path, monkeypatch)
    return "cannot be read (Permission denied)"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "truncated", "list", "folder", "no task",
                                  "unreadable"])
def test_without_a_readable_config_nothing_that_needs_the_task_is_guessed(lone, kind,
                                                                          monkeypatch):
    path = lone / "config.json"
    problem = f"{str(path)!r} {_damage_config(kind, path, monkeypatch)}"
    note = (f"No readable config: {problem}. {LEFT_OUT}; whether the run trained all its "
            "steps is unknown.")
    with pytest.warns(ReportWarning) as caught:
        page = build_report(lone)
    assert _messages(caught) == [note]
    summary = json.loads((lone / "summary.json").read_text())
    assert summary["notes"] == [note]
    assert html.escape(note) in page.read_text()
    rec = _records(summary)["."]
    assert rec["finished"] and rec["steps_done"] == 10  # its losses are still reported
    for key in ("baseline", "target", "loss_over_baseline", "eval_over_baseline",
                "steps_to_target", "seconds_to_target", "steps_to_target_train"):
        assert rec[key] is None, key
    assert summary.get("findings", []) == []  # each one needs the baseline or the target
    rows = [line.strip("|").split("|") for line in (lone / "table.md").read_text().splitlines()]
    header, row = [c.strip() for c in rows[2]], [c.strip() for c in rows[4]]
    assert header[7:9] == ["held-out loss / baseline", "steps to target"]
    assert row[7:10] == ["-", "-", "-"]  # not "not reached": there is no target to reach
    caption = json.dumps([f.caption for f in _quiet_figures(lone)])
    assert "The dashed line is the task's trivial baseline" not in caption


# -- a lone train run without metrics, and folders that are not run folders -------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["empty", "missing", "garbage", "folder", "unreadable"])
def test_a_run_without_usable_metrics_gets_one_line_naming_it(lone, kind, monkeypatch, capsys):
    path = lone / "metrics.jsonl"
    error: type[Exception] = RunFileError
    if kind == "empty":
        path.write_text("")
        error, message = FileNotFoundError, f"{str(lone)!r}: no metrics yet (its metrics.jsonl " \
                                            "holds no line)"
    elif kind == "missing":
        path.unlink()
        error, message = FileNotFoundError, f"{str(lone)!r}: no metrics yet (a train run " \
                                            "folder with no metrics.jsonl)"
    elif kind == "garbage":
        path.write_text('not json\n[1, 2]\n{"seed": 0, "loss": 1.0}\n{"step": "x"}\n')
        message = (f"{str(path)!r} holds no metric record (4 lines, none a JSON object with a "
                   "whole-number step)")
    elif kind == "folder":
        path.unlink()
        path.mkdir()
        message = f"{str(path)!r} is not a file"
    else:
        _unreadable(path, monkeypatch)
        message = f"{str(path)!r} cannot be read (Permission denied)"
    with pytest.raises(error) as err:
        build_report(lone)
    assert str(err.value) == message
    assert not (lone / "report.html").exists()
    assert _cli_error(["report", str(lone)], capsys) == f"gatezoo report: error: {message}"


def test_a_path_that_is_no_run_folder_gets_one_line(tmp_path, capsys):
    missing, file = tmp_path / "nope", tmp_path / "file"
    file.write_text("x")
    for path, what in ((missing, "does not exist"), (file, "is a file, not a folder")):
        with pytest.raises(FileNotFoundError) as err:
            build_report(path)
        message = f"run folder {str(path)!r} {what}"
        assert str(err.value) == message
        assert _cli_error(["report", str(path)], capsys) == f"gatezoo report: error: {message}"


def test_a_cut_reproduction_document_is_named_in_one_line(tmp_path, capsys):
    path = tmp_path / "s1.json"
    path.write_text('{"experiment": "s1", "tasks": {"adding": {"mod')
    message = (f"{str(path)!r} is not valid JSON (Unterminated string starting at: line 1 "
               "column 43)")
    with pytest.raises(RunFileError) as err:
        build_report(tmp_path)
    assert str(err.value) == message
    assert _cli_error(["report", str(tmp_path)], capsys) == f"gatezoo report: error: {message}"

    @dataclasses.dataclass
    class Config:
        steps: int = 1

    # and a reproduction rerun into that folder refuses it instead of a bare JSONDecodeError
    with pytest.raises(ValueError) as err:
        resume_parts(tmp_path, "s1", Config(), lambda line: None)
    assert str(err.value) == (f"{str(path)!r} is not a valid s1 document (not a JSON object); "
                              "move it away to start again, or choose another --out")


@pytest.mark.slow
def test_lines_that_are_not_records_are_counted_a_cut_last_line_is_not(lone):
    path = lone / "metrics.jsonl"
    lines = path.read_text().splitlines()
    assert any(LOSS in json.loads(t) for t in lines)
    path.write_text("\n".join(lines[:3] + ["garbage", "[]"] + lines[3:]) + '\n{"step": 9, "se')
    with pytest.warns(ReportWarning) as caught:
        _, _, _, _, summary = report_figures(lone)
    note = (f"Run {str(lone)}: 2 lines of metrics.jsonl that are not metric records were "
            "skipped.")
    assert _messages(caught) == [note] and summary["notes"] == [note]
    assert _records(summary)["."]["baseline"] == 0.5


# -- a compare with one damaged run -------------------------------------------------------------


def _damage_run(kind: str, run: Path, monkeypatch) -> str:
    """Damages the compare run folder ``run`` as ``kind``; returns the problem the report names."""
    metrics, result = run / "metrics.jsonl", run / "result.json"
    if kind.startswith("config "):
        path = run / "config.json"
        return f"{str(path)!r} {_damage_config(kind.removeprefix('config '), path, monkeypatch)}"
    if kind == "metrics garbage":
        metrics.write_text("garbage\n")
        return (f"{str(metrics)!r} holds no metric record (1 line, none a JSON object with a "
                "whole-number step)")
    if kind == "metrics unreadable":
        _unreadable(metrics, monkeypatch)
        return f"{str(metrics)!r} cannot be read (Permission denied)"
    if kind == "metrics empty":
        metrics.write_text("")
        return f"{str(metrics)!r} holds no metric, yet result.json says the run finished"
    if kind == "result truncated":
        result.write_text(result.read_text()[:1])
        return f"{str(result)!r} is not valid JSON (Expecting property name enclosed in double " \
               "quotes: line 1 column 2)"
    result.write_text("[]")
    return f"{str(result)!r} holds a list, not a JSON object"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["config missing", "config truncated", "config list",
                                  "config unreadable", "metrics garbage", "metrics unreadable",
                                  "metrics empty", "result truncated", "result list"])
def test_a_damaged_run_is_shown_as_such_and_the_rest_still_report(trained, compare, kind,
                                                                  monkeypatch):
    problem = _damage_run(kind, compare / "scalar-adam", monkeypatch)
    note = f"Run scalar-adam is damaged and left out of every figure and finding: {problem}."
    with pytest.warns(ReportWarning) as caught:
        build_report(compare)
    assert _messages(caught) == [note]
    summary = json.loads((compare / "summary.json").read_text())
    assert summary["notes"] == [note]
    runs = _records(summary)
    assert runs["scalar-adam"] == {"run": "scalar-adam", "cell": "scalar", "optimizer": "adam",
                                   "finished": False, "status": "damaged", "problem": problem}
    intact = _records(json.loads(json.dumps(trained[1][4], default=float)))
    assert runs["scalar-sgd"] == intact["scalar-sgd"]  # measured as in the intact folder
    assert runs["scalar-sgd"]["baseline"] == 0.5
    findings = summary["findings"]
    assert findings[0]["text"] == (
        '1 of the 2 runs of the grid is damaged (scalar-adam): its files cannot be used (the '
        'notes say why), the table marks it "damaged" and every finding and figure leaves it '
        "out.")
    assert findings[0]["value"] == {"damaged": ["scalar-adam"], "grid": 2}
    assert not any("did not finish" in f["text"] for f in findings)  # not known to be cut
    assert " of 1 finished runs end with" in findings[1]["text"]
    for f in findings[1:]:
        assert "scalar-adam" not in json.dumps(f), f["text"]
    for fig in _quiet_figures(compare):
        assert "scalar-adam" not in json.dumps(fig.data, default=str), fig.name
    table = (compare / "table.md").read_text()
    assert "| scalar | adam |" + " damaged |" * 9 in table


@pytest.mark.slow
def test_a_compare_run_with_no_metric_yet_says_so(compare):
    (compare / "scalar-adam" / "result.json").unlink()
    (compare / "scalar-adam" / "metrics.jsonl").write_text("")
    build_report(compare)
    runs = _records(json.loads((compare / "summary.json").read_text()))
    assert runs["scalar-adam"]["status"] == "no metrics yet"
    assert runs["scalar-adam"]["steps_done"] == 0 and not runs["scalar-adam"]["finished"]
    table = (compare / "table.md").read_text()
    assert "| scalar | adam | 0.01 | 1 | 0 of 10 |" + " no metrics yet |" * 6 in table


@pytest.mark.slow
def test_a_compare_whose_runs_are_all_damaged_still_says_what_it_holds(compare):
    for name in RUNS:
        (compare / name / "config.json").unlink()
    with pytest.warns(ReportWarning):
        build_report(compare)
    summary = json.loads((compare / "summary.json").read_text())
    assert [r["status"] for r in summary["compare"]["runs"]] == ["damaged", "damaged"]
    assert [f["value"] for f in summary["findings"]] == [
        {"damaged": list(RUNS), "grid": 2}]
    assert summary["findings"][0]["text"].startswith("2 of the 2 runs of the grid are damaged "
                                                     "(scalar-sgd, scalar-adam): their files")
    assert not list((compare / "figures").glob("*.png"))


@pytest.mark.slow
def test_a_compare_without_its_config_leaves_the_task_out(compare):
    path = compare / "compare.json"
    doc = json.loads(path.read_text())
    del doc["config"]
    path.write_text(json.dumps(doc))
    with pytest.warns(ReportWarning) as caught:
        _, _, _, _, summary = report_figures(compare)
    note = f"No readable config: {str(path)!r} holds no config object. {LEFT_OUT}."
    assert _messages(caught) == [note] and summary["notes"] == [note]
    assert all(r["baseline"] is None and r["target"] is None
               for r in summary["compare"]["runs"])


@pytest.mark.slow
def test_a_cut_compare_json_is_named_and_a_rerun_rebuilds_it(compare, capsys):
    path = compare / "compare.json"
    path.write_text(path.read_text()[:1])
    message = (f"{str(path)!r} is not valid JSON (Expecting property name enclosed in double "
               "quotes: line 1 column 2)")
    with pytest.raises(RunFileError) as err:
        build_report(compare)
    assert str(err.value) == message
    assert _cli_error(["report", str(compare)], capsys) == f"gatezoo report: error: {message}"
    # every run finished, so the rerun trains nothing: it says what it lost and rewrites it
    lines: list[str] = []
    run_compare(CompareConfig(**SETTINGS), compare, progress=False, log=lines.append)
    assert lines[0] == f"{path} is not valid JSON; the status of each run is rebuilt from its " \
                       "folder"
    assert json.loads(path.read_text())["status"] == {n: "done" for n in RUNS}
    assert not list(compare.rglob(".result.json.tmp"))

