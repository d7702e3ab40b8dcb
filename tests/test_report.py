"""The report is built only from a run folder's files: figure data equals what metrics.jsonl
holds, the page is self-contained, and an interrupted run still gets a report."""

import json
import re

import numpy as np
import pytest

from gatezoo.report import build_report, report_figures
from gatezoo.report.compare_report import load_compare
from gatezoo.report.runfiles import read_metrics

STEPS, SEEDS, LAGS = 40, (0, 1), (1, 2, 4)
RUNS = (("scalar", "sgd"), ("scalar", "adam"), ("gru", "sgd"))


def _value(run_i, name, step, seed):
    """A deterministic, distinct value per (run, metric, step, seed)."""
    h = sum(ord(c) for c in name) % 97
    return 0.2 + 0.01 * run_i + 1e-3 * h + 1e-4 * step + 1e-5 * seed


def _write_run(d, run_i, cell, opt, steps=STEPS):
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"cell": cell, "optimizer": opt,
                                               "task": "adding", "seq_len": 20}))
    with open(d / "metrics.jsonl", "w") as fh:
        for step in range(steps):
            for seed in SEEDS:
                rec = {"step": step, "seed": seed, "split": "train",
                       "loss": _value(run_i, "loss", step, seed), "steps_per_sec": 100.0}
                if step % 10 == 0:  # tracked every 10 steps, named as the trainer writes
                    names = ["expansion/g1_over_g0", "analogies/beta_gate",
                             "analogies/gate_step", "analogies/lr", "analogies/gate_anisotropy",
                             "analogies/adam_anisotropy", "anisotropy/grad_ai"]
                    names += [f"lags/ratio@{ell}" for ell in LAGS]
                    names += [f"transport/candidate@{ell}" for ell in LAGS]
                    names += [f"anisotropy/jac_ai@{ell}" for ell in LAGS]
                    for n in names:
                        rec[n] = _value(run_i, n, step, seed)
                fh.write(json.dumps(rec) + "\n")
            if step % 20 == 0:
                for seed in SEEDS:
                    fh.write(json.dumps({"step": step, "seed": seed, "split": "eval",
                                         "loss": _value(run_i, "eval", step, seed)}) + "\n")


@pytest.fixture
def compare_dir(tmp_path):
    grid = [{"name": f"{c}-{o}", "cell": c, "optimizer": o, "schedule": "constant"}
            for c, o in RUNS]
    (tmp_path / "compare.json").write_text(json.dumps({
        "experiment": "compare", "config": {"task": "adding", "seq_len": 20}, "grid": grid,
        "status": {g["name"]: "done" for g in grid}}))
    for i, (c, o) in enumerate(RUNS):
        _write_run(tmp_path / f"{c}-{o}", i, c, o)
        (tmp_path / f"{c}-{o}" / "result.json").write_text(json.dumps({"wall_time_s": 1.5}))
    return tmp_path


def _parse(path):
    """Independent parse of metrics.jsonl: {(split, name): {step: [values by seed]}}."""
    out = {}
    for line in open(path):
        rec = json.loads(line)
        for k, v in rec.items():
            if k in ("step", "seed", "split"):
                continue
            out.setdefault((rec["split"], k), {}).setdefault(rec["step"], []).append(v)
    return out


def test_figure_data_equals_metrics(compare_dir):
    _, _, figures, tables, summary = report_figures(compare_dir)
    figs = {f.name: f for f in figures}
    assert {"loss_curves", "effective_lr_by_lag", "gate_correction", "gate_vs_optimizer",
            "anisotropy"} <= set(figs)
    for c, o in RUNS:
        name = f"{c}-{o}"
        raw = _parse(compare_dir / name / "metrics.jsonl")
        loss = raw[("train", "loss")]
        d = figs["loss_curves"].data[name]
        assert d["step"] == sorted(loss)
        np.testing.assert_allclose(d["loss_mean"], [np.mean(loss[s]) for s in sorted(loss)])
        ev = raw[("eval", "loss")]
        np.testing.assert_allclose(d["eval_loss_mean"], [np.mean(ev[s]) for s in sorted(ev)])
        g = raw[("train", "expansion/g1_over_g0")]
        d = figs["gate_correction"].data[name]
        assert d["step"] == sorted(g)
        np.testing.assert_allclose(d["g1_over_g0_mean"], [np.mean(g[s]) for s in sorted(g)])
        last = max(g)
        d = figs["effective_lr_by_lag"].data[name]
        for key in ("lags/ratio", "transport/candidate"):
            assert d[key]["lags"] == list(LAGS) and d[key]["step"] == last
            np.testing.assert_allclose(
                d[key]["mean"], [np.mean(raw[("train", f"{key}@{ell}")][last]) for ell in LAGS])
        # each analogy shows the runs of the optimizer it is about
        panel, key = ("schedule", "gate_step") if o == "sgd" else ("adam", "gate_anisotropy")
        other = "adam" if o == "sgd" else "schedule"
        vals = raw[("train", f"analogies/{key}")]
        np.testing.assert_allclose(figs["gate_vs_optimizer"].data[panel][name][key],
                                   [np.mean(vals[s]) for s in sorted(vals)])
        assert name not in figs["gate_vs_optimizer"].data[other]
    d = figs["anisotropy"].data
    cells = d["cells"]
    for c, o in RUNS:
        raw = _parse(compare_dir / f"{c}-{o}" / "metrics.jsonl")
        last = max(raw[("train", "anisotropy/grad_ai")])
        upd = np.mean(raw[("train", "anisotropy/grad_ai")][last])
        assert d["update_ai"][o][cells.index(c)] == pytest.approx(upd)
        prop = np.median([np.mean(raw[("train", f"anisotropy/jac_ai@{ell}")][last])
                          for ell in LAGS])
        assert d["propagation_ai"][o][cells.index(c)] == pytest.approx(prop)
    runs = {r["run"]: r for r in summary["compare"]["runs"]}
    raw = _parse(compare_dir / "gru-sgd" / "metrics.jsonl")[("train", "loss")]
    final = np.mean([np.mean(raw[s]) for s in sorted(raw)[-10:]])
    assert runs["gru-sgd"]["final_train_loss"] == pytest.approx(final)
    assert runs["gru-sgd"]["wall_time_s"] == 1.5
    assert runs["gru-sgd"]["baseline"] == pytest.approx(2 / 12, rel=1e-6)
    assert len(tables[0].rows) == len(RUNS)


def test_every_figure_has_a_caption_and_the_page_is_self_contained(compare_dir):
    page = build_report(compare_dir)
    html = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:)?//""", html)
    assert "<script" not in html
    pngs = list((compare_dir / "figures").glob("*.png"))
    assert html.count("data:image/png;base64,") == len(pngs)
    for cap in re.findall(r"<figcaption>(.*?)</figcaption>", html, re.S):
        assert len(cap) > 80
    assert (compare_dir / "table.md").read_text().startswith("**Cells x optimizers**")
    summary = json.loads((compare_dir / "summary.json").read_text())
    assert len(summary["compare"]["runs"]) == len(RUNS)


def test_report_rebuilds_from_interrupted_run(compare_dir):
    # the last run was cut mid-write: no result.json, a truncated last line; one never started
    d = compare_dir / "gru-sgd"
    (d / "result.json").unlink()
    text = (d / "metrics.jsonl").read_text()
    (d / "metrics.jsonl").write_text(text[: len(text) // 2] + '{"step": 99, "se')
    doc = json.loads((compare_dir / "compare.json").read_text())
    doc["grid"].append({"name": "lstm-sgd", "cell": "lstm", "optimizer": "sgd",
                        "schedule": "constant"})
    (compare_dir / "compare.json").write_text(json.dumps(doc))
    page = build_report(compare_dir)
    assert page.is_file()
    runs = {r["run"]: r for r in json.loads((compare_dir / "summary.json").read_text())
            ["compare"]["runs"]}
    assert set(runs) == {f"{c}-{o}" for c, o in RUNS}
    assert not runs["gru-sgd"]["finished"] and runs["gru-sgd"]["steps_done"] < STEPS
    m = read_metrics(d)
    assert m.steps["train"].max() == runs["gru-sgd"]["steps_done"] - 1


def test_single_train_run_folder(tmp_path):
    _write_run(tmp_path / "run", 0, "vector", "adam")
    page = build_report(tmp_path / "run")
    assert "loss_curves" in page.read_text()


def test_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no run files"):
        build_report(tmp_path)


def test_load_compare_skips_runs_not_started(compare_dir):
    doc = json.loads((compare_dir / "compare.json").read_text())
    doc["grid"].append({"name": "x-y", "cell": "x", "optimizer": "y"})
    (compare_dir / "compare.json").write_text(json.dumps(doc))
    assert "x-y" not in load_compare(compare_dir).runs
