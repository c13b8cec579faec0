"""Tests for vpeft.metrics (PPT, rounding, accuracy) and the report layer.

Covers the published tables, aggregation of metrics.json files and the HTML report.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from helpers.report import read_report
from helpers.runs import write_ok_run as _write_ok

from vpeft.metrics import ppt, round_half_up, top1_accuracy
from vpeft.report.html import build_context, format_seconds, human_params, render_report
from vpeft.report.published import FGVC_TASKS, VTAB_GROUPS, VTAB_TASKS, load_published
from vpeft.report.tables import RUN_COLUMNS, cell_table, load_runs, suite_table, write_suite_csv

NOAH_VTAB_TASKS = [
    "cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397",
    "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy",
    "clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
    "smallnorb_azi", "smallnorb_ele",
]  # fmt: skip

# README PPT values that the formula does not reproduce (catalog section 1; the image-table ones).
# Each maps to the value the formula gives after rounding half-up to 2 decimals.
PPT_TYPOS = {
    ("vtab", "bitfit"): 0.62,
    ("vtab", "repadapter"): 0.73,
    ("vtab", "dtl"): 0.74,
    ("fgvc", "gps"): 0.89,
}


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mean", "params", "expected"),
    [(71.44, 160_000, 0.71), (71.70, 2_380_000, 0.65), (75.99, 780_000, 0.74), (52.94, 0, 0.53)],
    ids=["adapter", "lst", "hst", "linear"],
)
def test_ppt_worked_examples(mean, params, expected):
    assert round_half_up(ppt(mean / 100, params), 2) == expected


def test_ppt_worked_examples_unrounded():
    # The catalog's intermediate values (4 decimals).
    assert ppt(0.7144, 160_000) == pytest.approx(0.7095, abs=5e-5)
    assert ppt(0.7170, 2_380_000) == pytest.approx(0.6535, abs=5e-5)
    assert ppt(0.7599, 780_000) == pytest.approx(0.7355, abs=5e-5)
    # Full fine-tuning would score 0.25 on VTAB (the README prints "-").
    assert round_half_up(ppt(0.6557, 85_800_000), 2) == 0.25


def test_ppt_properties():
    for m in (0.0, 0.3, 0.873, 1.0):
        assert ppt(m, 0) == m
        assert ppt(m, 1e7) == pytest.approx(m * math.exp(-math.log10(2)))
    assert math.exp(-math.log10(2)) == pytest.approx(0.740, abs=5e-4)
    # Monotone decreasing in params. The penalty stays under 4 % up to ~0.98M parameters
    # (the catalog's "< 4 % below one million" is a slight overstatement: 1M costs 4.06 %).
    values = [ppt(0.8, p) for p in (0, 1e4, 1e5, 1e6, 1e7, 1e8)]
    assert values == sorted(values, reverse=True)
    assert ppt(0.8, 900_000) > 0.8 * 0.96
    assert ppt(1.0, 1_000_000) == pytest.approx(math.exp(-math.log10(1.1)))
    assert math.isnan(ppt(float("nan"), 100))
    assert math.isnan(ppt(0.5, float("nan")))


def test_ppt_rejects_percentages_and_bad_params():
    with pytest.raises(ValueError, match="fraction"):
        ppt(71.44, 160_000)
    with pytest.raises(ValueError):
        ppt(0.5, -1)


def test_round_half_up():
    assert round_half_up(0.745) == 0.75  # round() gives 0.74 (binary 0.74499999...)
    assert round_half_up(0.125) == 0.13  # round() gives 0.12 (half to even)
    assert round_half_up(75.995) == 76.0
    assert round_half_up(0.7095123) == 0.71
    assert round_half_up(-0.125) == -0.13
    assert round_half_up(1.25, 1) == 1.3
    assert math.isnan(round_half_up(float("nan")))


def test_top1_accuracy():
    import torch
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert top1_accuracy(logits, torch.tensor([1, 0, 0, 0])) == pytest.approx(0.75)
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 0, 1, 0]), 2).float()
    assert top1_accuracy(logits, one_hot) == 1.0
    with pytest.raises(ValueError):
        top1_accuracy(logits, torch.tensor([1, 0]))
    with pytest.raises(ValueError):
        top1_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_report_layer_imports_without_torch():
    code = (
        "import sys; import vpeft.metrics, vpeft.report, vpeft.report.published, vpeft.report.tables, "
        "vpeft.report.html; assert 'torch' not in sys.modules, 'torch imported'"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ---------------------------------------------------------------------------------------------
# published tables
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["vtab", "fgvc"])
def test_published_ppt_reproduces_except_documented_typos(suite):
    table = load_published(suite)
    checked = 0
    typos = set()
    for method, row in table.iterrows():
        if row["ppt_printed"] == "-":
            assert method == "full"
            assert math.isnan(row["ppt"])
            continue
        computed = round_half_up(ppt(row["mean"] / 100, row["params"]), 2)
        printed = float(row["ppt_printed"])
        if (suite, method) in PPT_TYPOS:
            assert computed == PPT_TYPOS[(suite, method)]
            assert round(abs(computed - printed), 6) == 0.01, (method, computed, printed)
            typos.add(method)
        else:
            assert computed == printed, (method, computed, printed)
        checked += 1
    assert typos == {m for (s, m) in PPT_TYPOS if s == suite}
    assert checked == len(table) - 1  # every row but full fine-tuning


def test_published_vtab_table_shape_and_means():
    table = load_published("vtab")
    assert list(VTAB_TASKS) == NOAH_VTAB_TASKS
    assert [c for c in table.columns if c in NOAH_VTAB_TASKS] == NOAH_VTAB_TASKS
    assert len(table) == 20
    assert list(table.index) == [
        "full", "linear", "adapter", "vpt-shallow", "vpt-deep", "bitfit", "lora", "adaptformer", "ssf",
        "noah", "sct", "fact-tk", "repadapter", "hydra", "lst", "dtl", "hst", "gps", "last", "snf",
    ]  # fmt: skip
    recomputed = table[NOAH_VTAB_TASKS].mean(axis=1)
    assert ((recomputed - table["mean"]).abs() <= 0.01).all(), (recomputed - table["mean"]).abs().max()
    assert table.loc["adapter", "params_printed"] == "0.16M"
    assert table.loc["adapter", "params"] == 160_000
    assert table.loc["linear", "params"] == 0
    assert table.loc["full", "params"] == 85_800_000
    assert table.loc["fact-tk", "display_name"] == "FacT"
    assert table.loc["hst", "mean"] == 75.99
    assert table.loc["ssf", "dtd"] == 75.1


def test_published_fgvc_table_shape_and_means():
    table = load_published("fgvc")
    assert list(FGVC_TASKS) == ["cub", "nabirds", "oxford_flowers", "stanford_dogs", "stanford_cars"]
    assert len(table) == 15
    assert {"prefix-tuning", "u-tuning", "gps", "snf"} <= set(table.index)
    recomputed = table[list(FGVC_TASKS)].mean(axis=1)
    assert ((recomputed - table["mean"]).abs() <= 0.01).all()
    assert table.loc["linear", "params_printed"] == "0 M"
    assert table.loc["linear", "params"] == 0
    assert table.loc["lora", "params"] == 770_000


def test_load_published_unknown_suite():
    assert load_published("vtab-mini") is None
    assert load_published("") is None


def _frame(records):
    rows = []
    for rec in records:
        row = dict.fromkeys(RUN_COLUMNS)
        row.update(rec)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    frame["metric"] = frame["metric"].astype(float)
    frame["params"] = frame["params"].astype(float)
    return frame


def test_group_means_of_published_vtab_match_catalog():
    # Catalog 7.3: mean of the three group means, computed from the per-task values.
    expected = {
        "full": 68.97, "linear": 57.64, "adapter": 73.86, "vpt-shallow": 67.82, "vpt-deep": 71.97,
        "bitfit": 65.22, "lora": 74.60, "adaptformer": 74.75, "ssf": 75.69, "noah": 75.48, "sct": 76.00,
        "fact-tk": 75.55, "repadapter": 76.09, "hydra": 76.48, "lst": 74.25, "dtl": 76.76, "hst": 78.13,
        "gps": 77.47, "last": 76.44, "snf": 76.51,
    }  # fmt: skip
    pub = load_published("vtab")
    runs = _frame(
        {"suite": "vtab", "method": m, "task": t, "seed": 0, "status": "ok", "metric": pub.loc[m, t] / 100,
         "params": float(pub.loc[m, "params"])}
        for m in pub.index
        for t in VTAB_TASKS
    )
    table = suite_table(runs, "vtab", list(pub.index), list(VTAB_TASKS), groups=VTAB_GROUPS)
    assert [c for c in table.columns if c.startswith("mean_")] == [
        "mean_natural", "mean_specialized", "mean_structured", "mean_of_groups"
    ]
    for method, value in expected.items():
        assert abs(table.loc[method, "mean_of_groups"] - value) <= 0.005 + 1e-9, method
        assert abs(table.loc[method, "mean"] - pub.loc[method, "mean"]) <= 0.01
    assert table.loc["ssf", "mean_natural"] == pytest.approx(81.57, abs=0.005)
    assert round_half_up(table.loc["adapter", "ppt"], 2) == 0.71
    assert (table["status"] == "ok").all()


# ---------------------------------------------------------------------------------------------
# tables from metrics.json files
# ---------------------------------------------------------------------------------------------

SUITE = "vtab-mini"
METHODS = ["linear", "lora"]
TASKS = ["digits", "shapes", "textures"]
SCRIPT_ERROR = 'CUDA out of memory <script>alert("x")</script> & more'


def _run_path(root: Path, suite: str, method: str, task: str, seed: int) -> Path:
    return root / "results" / suite / method / task / f"seed-{seed}" / "metrics.json"


def _write_failed(root, suite, method, task, seed, error):
    path = _run_path(root, suite, method, task, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": "vpeft.run/1", "status": "failed", "suite": suite, "task": task, "method": method,
            "seed": seed, "error": error}  # fmt: skip
    path.write_text(json.dumps(data))
    return path


VALUES = {  # (method, task) -> {seed: value}; None = failed, absent seed = missing file
    ("linear", "digits"): {1: 0.80, 2: 0.82},
    ("linear", "shapes"): {1: 0.60, 2: 0.64},
    ("linear", "textures"): {1: 0.50, 2: 0.50},
    ("lora", "digits"): {1: 0.90, 2: 0.86},
    ("lora", "shapes"): {1: 0.70, 2: None},
    ("lora", "textures"): {},
}
PARAMS = {"linear": 0, "lora": 12288}


@pytest.fixture()
def run_paths(tmp_path):
    paths = []
    for (method, task), by_seed in VALUES.items():
        for seed in (1, 2):
            if seed not in by_seed:
                paths.append(_run_path(tmp_path, SUITE, method, task, seed))  # never written
            elif by_seed[seed] is None:
                paths.append(_write_failed(tmp_path, SUITE, method, task, seed, SCRIPT_ERROR))
            else:
                paths.append(_write_ok(tmp_path, SUITE, method, task, seed, by_seed[seed], PARAMS[method]))
    return paths


def test_load_runs(run_paths):
    runs = load_runs(run_paths)
    assert list(runs.columns) == list(RUN_COLUMNS)
    assert len(runs) == 12
    assert runs["status"].value_counts().to_dict() == {"ok": 9, "failed": 1, "missing": 2}
    missing = runs[runs["status"] == "missing"].iloc[1]
    identity = (missing["suite"], missing["method"], missing["task"], missing["seed"])
    assert identity == (SUITE, "lora", "textures", 2)
    assert math.isnan(missing["metric"])
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert failed["error"] == SCRIPT_ERROR
    assert (failed["method"], failed["task"], failed["seed"]) == ("lora", "shapes", 2)
    ok = runs[(runs["method"] == "lora") & (runs["task"] == "digits") & (runs["seed"] == 1)].iloc[0]
    assert ok["metric"] == 0.90
    assert ok["metric_name"] == "top1"
    assert ok["params"] == 12288 and ok["params_with_head"] == 12288 + 1290
    assert ok["wall_seconds"] == 13.0 and ok["images_per_second"] == 201.0 and ok["process_peak_memory_mb"] == 512.0
    assert ok["train_memory_mb"] == 41.0 and ok["train_samples_per_second"] == 301.0 and ok["eval_batch"] == 256
    assert (ok["latency_b1_ms"], ok["latency_b1_unmerged_ms"], ok["latency_eval_ms"]) == (2.0, 2.5, 81.0)
    assert ok["adapter_bytes"] == 50_000 + 12288 * 4 and ok["efficiency_device"] == "cpu: test-cpu, 1 threads"
    assert ok["protocol"] == "vtab1k" and ok["backbone"] == "vit-demo"
    assert json.loads(ok["packages"]) == {"timm": "1.0.31", "torch": "2.14.1"}


def test_load_runs_bad_files(tmp_path):
    garbage = _run_path(tmp_path, SUITE, "lora", "digits", 3)
    garbage.parent.mkdir(parents=True)
    garbage.write_text("{not json")
    wrong_schema = _run_path(tmp_path, SUITE, "lora", "digits", 4)
    wrong_schema.parent.mkdir(parents=True)
    wrong_schema.write_text(json.dumps({"schema": "other/9", "status": "ok"}))
    runs = load_runs([garbage, wrong_schema, tmp_path / "elsewhere.json"])
    assert list(runs["status"]) == ["failed", "failed", "missing"]
    assert "unreadable" in runs.loc[0, "error"]
    assert "schema" in runs.loc[1, "error"]
    assert runs.loc[1, "seed"] == 4  # identity still taken from the path layout
    assert pd.isna(runs.loc[2, "suite"])
    assert len(load_runs([])) == 0


def test_suite_table(run_paths, tmp_path):
    runs = load_runs(run_paths)
    table = suite_table(runs, SUITE, METHODS, TASKS)
    assert list(table.index) == METHODS
    assert list(table.columns[:3]) == TASKS
    assert list(table.columns[3:6]) == [f"{t}_std" for t in TASKS]

    linear = table.loc["linear"]
    assert linear["digits"] == pytest.approx(81.0)
    assert linear["shapes"] == pytest.approx(62.0)
    assert linear["textures"] == pytest.approx(50.0)
    assert linear["digits_std"] == pytest.approx(math.sqrt(2) * 1.0)  # sample std of 80, 82
    assert linear["textures_std"] == pytest.approx(0.0)
    assert linear["mean"] == pytest.approx((81 + 62 + 50) / 3)
    assert linear["params"] == 0 and linear["params_note"] == ""
    assert linear["ppt"] == pytest.approx(linear["mean"] / 100)
    assert linear["n_seeds"] == 2
    assert linear["status"] == "ok"

    lora = table.loc["lora"]
    assert lora["digits"] == pytest.approx(88.0)
    assert lora["shapes"] == pytest.approx(70.0)
    assert math.isnan(lora["shapes_std"])  # a single ok seed
    assert math.isnan(lora["textures"])  # both seeds missing
    assert math.isnan(lora["textures_std"])
    assert math.isnan(lora["mean"])  # a task without any successful run
    assert math.isnan(lora["ppt"])
    assert lora["params"] == 12288
    assert lora["n_seeds"] == 2
    assert lora["status"] == "incomplete: 2 missing, 1 failed"


def test_suite_table_missing_seed_keeps_task_mean(run_paths):
    # One of two seeds missing: the task mean uses the remaining seed, the row is flagged incomplete.
    run_paths[5].unlink()  # linear/textures/seed-2
    table = suite_table(load_runs(run_paths), SUITE, METHODS, TASKS)
    row = table.loc["linear"]
    assert row["textures"] == pytest.approx(50.0)
    assert math.isnan(row["textures_std"])
    assert row["mean"] == pytest.approx((81 + 62 + 50) / 3)
    assert row["status"] == "incomplete: 1 missing"


def test_suite_table_method_without_runs(run_paths):
    runs = load_runs(run_paths)
    # A method with no rows at all counts one missing run per task.
    table = suite_table(runs, SUITE, ["linear", "vpt-deep"], TASKS)
    assert table.loc["vpt-deep", "status"] == "incomplete: 3 missing"
    assert table.loc["vpt-deep", "n_seeds"] == 0
    assert math.isnan(table.loc["vpt-deep", "params"])


def test_suite_table_params_differ_and_groups(tmp_path):
    paths = [
        _write_ok(tmp_path, SUITE, "fact-tk", "digits", 1, 0.5, 1000),
        _write_ok(tmp_path, SUITE, "fact-tk", "shapes", 1, 0.7, 3000),
        _write_ok(tmp_path, SUITE, "fact-tk", "textures", 1, 0.9, 2000),
    ]
    groups = {"digits": "natural", "shapes": "structured", "textures": "natural"}
    table = suite_table(load_runs(paths), SUITE, ["fact-tk"], TASKS, groups=groups)
    row = table.loc["fact-tk"]
    assert row["params"] == pytest.approx(2000)
    assert "differ" in row["params_note"] and "mean over 3 tasks" in row["params_note"]
    assert row["mean_natural"] == pytest.approx(70.0)
    assert row["mean_structured"] == pytest.approx(70.0)
    assert row["mean_of_groups"] == pytest.approx(70.0)
    assert row["mean"] == pytest.approx(70.0)
    with pytest.raises(ValueError, match="without a group"):
        suite_table(load_runs(paths), SUITE, ["fact-tk"], TASKS, groups={"digits": "natural"})


def test_write_suite_csv(run_paths, tmp_path):
    table = suite_table(load_runs(run_paths), SUITE, METHODS, TASKS)
    out = tmp_path / "tables" / "vtab-mini.csv"
    write_suite_csv(table, out)
    back = pd.read_csv(out, index_col="method")
    assert list(back.index) == METHODS
    assert back.loc["linear", "digits"] == pytest.approx(81.0)
    assert back.loc["lora", "status"] == "incomplete: 2 missing, 1 failed"
    assert math.isnan(back.loc["lora", "mean"])
    assert "30000000000" not in out.read_text()  # floats written to 10 significant digits


def test_cell_table_problems(run_paths):
    cells = cell_table(load_runs(run_paths), SUITE, METHODS, TASKS).set_index(["method", "task"])
    assert cells.loc[("lora", "shapes"), "n_failed"] == 1
    assert cells.loc[("lora", "textures"), "n_missing"] == 2
    assert cells.loc[("lora", "textures"), "n_ok"] == 0
    assert cells.loc[("lora", "shapes"), "problems"] == [(2, "failed", SCRIPT_ERROR)]
    assert cells.loc[("linear", "digits"), "seeds_ok"] == [1, 2]


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _StrictChecker(HTMLParser):
    """Fails on unclosed, unopened or badly nested tags; records the doctype and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.doctype = None
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"end tag for void element {tag}")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _check_html(text: str) -> _StrictChecker:
    checker = _StrictChecker()
    checker.feed(text)
    checker.close()
    assert checker.doctype is not None and checker.doctype.lower() == "doctype html"
    assert not checker.errors, checker.errors
    assert not checker.stack, f"unclosed: {checker.stack}"
    return checker


def _suites():
    return {
        SUITE: {
            "title": "VTAB-mini <demo>", "kind": "image", "protocol": "vtab1k",
            "backbone": "vit-demo (vit_demo_patch4_32.fractal)", "methods": METHODS, "tasks": TASKS,
            "groups": {"digits": "natural", "shapes": "structured", "textures": "natural"},
            "published": "vtab", "notes": ["pretrained vs random-init linear probe: +12.3 points"],
        },
        "vtab-real": {
            "title": "VTAB subset", "kind": "image", "protocol": "vtab1k", "backbone": "vit-b16",
            "methods": ["lora", "ln-tune"], "tasks": ["cifar100", "dtd"], "groups": None,
            "published": "vtab", "notes": [],
        },
    }  # fmt: skip


def test_html_report(run_paths, tmp_path):
    paths = list(run_paths)
    paths.append(_write_ok(tmp_path, "vtab-real", "lora", "cifar100", 1, 0.70, 294912, git_commit="def456"))
    paths.append(_write_ok(tmp_path, "vtab-real", "lora", "dtd", 1, 0.68, 294912))
    paths.append(_run_path(tmp_path, "vtab-real", "ln-tune", "cifar100", 1))
    runs = load_runs(paths)
    context = build_context(runs, _suites(), generated=datetime(2026, 11, 29, 5, 0, tzinfo=timezone.utc))
    out = tmp_path / "reports" / "index.html"
    render_report(context, out)
    html = out.read_text(encoding="utf-8")
    checker = _check_html(html)
    text = " ".join(checker.text)

    for method in ("linear", "lora", "ln-tune"):
        assert f">{method}<" in html
    assert "2026-11-29 05:00:00 UTC" in html
    assert " ".join(text.split()).count("Results \u00b7 protocol vtab1k") == 2  # each results table names it
    # missing / failed cells and the failure list
    titles = [attrs.get("title", "") for tag, attrs in checker.tags if tag == "td"]
    shown = read_report(out)[SUITE]
    missing = shown.cell("lora", "textures")  # no seed ran: the cell says so
    assert missing.text == "missing" and "missing" in missing.classes
    partial = shown.cell("lora", "shapes")  # seed 1 ok, seed 2 failed: the value of seed 1, marked partial
    assert partial.text == "70.00" and "partial" in partial.classes
    assert SCRIPT_ERROR in partial.title  # error text in a title attribute, unescaped after parsing
    assert not shown.cell("lora", "digits").classes & {"missing", "failed", "partial"}
    assert shown.cell("lora", "Status").text == "incomplete: 2 missing, 1 failed"
    assert shown.cell("linear", "Status").text == "ok"
    entries = {(f["method"], f["task"], f["seed"]): f for f in shown.failures()}
    assert sorted(entries) == [("lora", "shapes", "2"), ("lora", "textures", "1"), ("lora", "textures", "2")]
    assert entries["lora", "shapes", "2"]["status_class"] == "failed" and SCRIPT_ERROR in entries[
        "lora", "shapes", "2"]["reason"]
    assert entries["lora", "textures", "1"]["status_class"] == "missing"
    assert "no metrics.json at" in entries["lora", "textures", "1"]["reason"]
    assert sorted((f["method"], f["task"], f["status"]) for f in read_report(out)["vtab-real"].failures()) == [
        ("ln-tune", "cifar100", "missing"), ("ln-tune", "dtd", "missing")]  # one listed, one never run
    # escaping: the error message never appears as markup
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    assert "VTAB-mini &lt;demo&gt;" in html
    # numbers: mean ± std, best in bold, params, PPT
    assert "81.00" in text and "\u00b1 1.41" in text
    bolds = html.split("<strong>")[1:]
    assert any(b.startswith("88.00</strong>") for b in bolds)  # lora digits beats linear digits
    assert "12.3K" in text and "0.29M" in text
    assert any("12,288 trainable parameters" in t for t in titles)
    # published comparison on the suite with real VTAB task names (cifar100 is an alias of cifar)
    assert "V-PETL: LoRA" in text
    assert "67.1" in text and "\u0394 +2.90" in text  # 70.0 - 67.1
    assert "No published row for: ln-tune." in text
    assert "V-PETL Bench README" in text
    # notes, cost table, provenance (commits differ between runs)
    assert "pretrained vs random-init linear probe: +12.3 points" in text
    assert "Total wall time" in text
    # cost: the method's own figures and the device that measured them, not the process's RSS (512 MB)
    flat = " ".join(text.split())
    assert "Peak memory" not in text and "512 MB" not in text
    assert "Measured on: cpu: test-cpu, 1 threads" in flat and "Training memory" in text and "Adapter size" in text
    assert "41.0 MiB" in text  # helpers.runs records 40 + seed MiB: a method with only its seed-1 run
    # VTAB-style suites label both means; every count here is << 1e7: the PPT note points to the plots
    assert "Mean (tasks)" in text and "Mean (groups)" in text and "V-PETL\u2019s \u201cMean\u201d" in flat
    assert "PPT ranks the methods almost exactly as the metric does" in flat
    assert "abc123" in text and "def456" in text and "differs between runs" in text
    assert "2.14.1" in text


def test_html_report_all_ok_and_no_published(tmp_path):
    paths = [_write_ok(tmp_path, SUITE, "linear", t, 1, 0.5, 0) for t in TASKS]
    suites = {SUITE: {"title": "Mini", "methods": ["linear"], "tasks": TASKS, "published": None}}
    context = build_context(load_runs(paths), suites)
    out = tmp_path / "r.html"
    render_report(context, out)
    html = out.read_text(encoding="utf-8")
    _check_html(html)
    assert "all 3 runs succeeded" in html
    assert "V-PETL:" not in html
    assert "differs between runs" not in html


def test_report_shows_the_speed_benchmark_and_refuses_other_json(tmp_path):
    bench = {"schema": "vpeft.bench/1", "args": {"device": "cpu", "threads": 1, "arch": "vit_small_patch16_224"},
             "provenance": {"git_commit": "0123456789abcdef", "created": "2026-11-29T10:00:00+00:00",
                            "hardware": {"cpu": "Test CPU", "cpu_count": 2, "cuda": None}},
             "summary": [{"measure": "LoRA train step, ours / peft", "value": "0.987", "goal": "<= 0.9", "met": "no"},
                         {"measure": "  floor / peft", "value": "0.951", "goal": "-", "met": "-"}]}
    bench_path = tmp_path / "latest.json"
    bench_path.write_text(json.dumps(bench))
    paths = [_write_ok(tmp_path, SUITE, "linear", t, 1, 0.5, 0) for t in TASKS]
    suites = {SUITE: {"title": "Mini", "methods": ["linear"], "tasks": TASKS, "published": None}}
    out = tmp_path / "r.html"
    from vpeft.report.build import build_report

    build_report(paths, suites, out, bench_path=bench_path)
    text = " ".join(_check_html(out.read_text(encoding="utf-8")).text)
    assert "Speed benchmark" in text and "LoRA train step, ours / peft" in text and "0.987" in text
    # measured at another commit than the report's: every row says when and at which commit
    assert "Test CPU, 2 CPUs, no GPU" in text and "2026-11-29, 0123456" in text and "Measured (older)" in text
    build_report(paths, suites, out)  # no benchmark record: no section
    assert "Speed benchmark" not in out.read_text(encoding="utf-8")
    bench_path.write_text(json.dumps({"schema": "vpeft.run/1"}))
    with pytest.raises(ValueError, match="not a speed benchmark record"):
        build_report(paths, suites, out, bench_path=bench_path)


def test_formatting_helpers():
    assert human_params(294912) == "0.29M"
    assert human_params(160_000) == "0.16M"
    assert human_params(12288) == "12.3K"
    assert human_params(512) == "512"
    assert human_params(0) == "0"
    assert human_params(85_798_656) == "85.80M"
    assert human_params(float("nan")) == "\u2013"
    assert format_seconds(12.34) == "12.3 s"
    assert format_seconds(245) == "4 min 05 s"
    assert format_seconds(3725) == "1 h 02 min"


def test_html_report_groups_methods_by_family_and_flags_mergeable(tmp_path):
    methods = ["lora", "linear", "dtl", "adapter"]  # deliberately out of family order
    paths = [_write_ok(tmp_path, SUITE, m, t, 1, 0.5, 10) for m in methods for t in TASKS]
    families = {"linear": {"family": "baseline", "mergeable": True, "paper": "probe, 2019"},
                "adapter": {"family": "addition", "mergeable": False, "paper": "Houlsby et al., 2019"},
                "lora": {"family": "reparameterization", "mergeable": True, "paper": "Hu et al., 2022"},
                "dtl": {"family": "side", "mergeable": False, "paper": "Fu et al., 2024"}}
    suites = {SUITE: {"title": "Mini", "methods": methods, "tasks": TASKS, "published": None, "families": families}}
    context = build_context(load_runs(paths), suites)
    rows = context["suites"][0]["rows"]
    assert [r["method"] for r in rows] == ["linear", "adapter", "lora", "dtl"]
    out = tmp_path / "r.html"
    render_report(context, out)
    text = out.read_text()
    headings = [text.index(h) for h in ("Baselines", "Addition", "Reparameterization", "Side-tuning")]
    assert headings == sorted(headings)
    lora_row = text[text.index(">lora"):text.index("</tr>", text.index(">lora"))]
    adapter_row = text[text.index(">adapter"):text.index("</tr>", text.index(">adapter"))]
    assert 'class="merge"' in lora_row and 'class="merge"' not in adapter_row


def test_speed_table_marks_older_rows_and_leaves_developer_rows_out(tmp_path):
    from vpeft.report.speed import load_speed_benchmark

    old = {"git_commit": "aaaaaaa1111", "git_dirty": False, "created": "2026-11-29T12:00:00+00:00"}
    now = {"git_commit": "bbbbbbb2222", "git_dirty": False, "created": "2026-12-08T01:00:00+00:00"}
    bench = {"schema": "vpeft.bench/1", "args": {}, "provenance": now,
             "section_provenance": {"lora": old, "imports": now, "vtab1k-gpu": now, "concurrency": now},
             "summary": [{"measure": "LoRA train step, ours / peft", "value": "0.98", "goal": "-", "met": "-"},
                         {"measure": "  no-adapter floor / peft", "value": "0.88", "goal": "-", "met": "-"},
                         {"measure": "training job imports, baseline f2693f9 / now", "value": "1.58x", "goal": "-",
                          "met": "-"},
                         {"measure": "  whole job CPU time, baseline / now", "value": "1.52x", "goal": "-", "met": "-"},
                         {"measure": "VTAB-1k x 30 methods x 1 seed (570 runs), device-hours", "value": "30.27 h",
                          "goal": "-", "met": "-"},
                         {"measure": "concurrent runs on one cpu", "value": "K=1: 271/h", "goal": "-", "met": "-"}]}
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(bench))
    speed = load_speed_benchmark(path, current_commit="bbbbbbb2222")
    rows = {r["measure"]: r["measured"] for r in speed["rows"]}
    assert list(rows) == ["LoRA train step, ours / peft", "no-adapter floor / peft", "concurrent runs on one cpu"]
    assert rows["LoRA train step, ours / peft"] == rows["no-adapter floor / peft"] == "2026-11-29, aaaaaaa"
    assert rows["concurrent runs on one cpu"] == "" and not speed["all_current"]
    assert all(r["measured"] for r in load_speed_benchmark(path, current_commit=None)["rows"])  # nothing current


def test_docs_speed_page_is_written_from_the_benchmark_record():
    """docs/speed.md holds the committed record's figures as bench/run.py writes them, not retyped ones."""
    from vpeft.report.speed import speed_markdown

    root = Path(__file__).resolve().parents[1]
    assert (root / "docs/speed.md").read_text() == speed_markdown(root / "bench/results/latest.json"), \
        "docs/speed.md is stale: run `python -m vpeft.report.speed`"
