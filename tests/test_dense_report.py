"""The dense part of the report: published COCO / VOC / ADE20K tables (catalog 7.5-7.6), the
multi-metric table (box AP, mask AP, mIoU, params, PPT per metric, training memory) and its HTML."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vpeft.metrics import ppt, round_half_up
from vpeft.report.html import build_context, render_html
from vpeft.report.published import DENSE_TABLES, load_published_dense
from vpeft.report.tables import dense_table, load_runs
from vpeft.runs import RUN_SCHEMA

# Catalog section 1: the three dense PPT values the README prints 0.01 off the formula.
DENSE_PPT_TYPOS = {("coco", "lora", "mask_ap"): 0.39, ("voc", "ln-tune", "box_ap50"): 0.85,
                   ("ade20k", "partial", "miou"): 0.26}


@pytest.mark.parametrize("key", list(DENSE_TABLES))
def test_published_dense_ppt_reproduces_except_documented_typos(key):
    table = load_published_dense(key)
    assert list(table.index) == ["full", "linear", "bitfit", "ln-tune", "partial", "adapter", "lora", "adaptformer",
                                 "lorand", "e3va", "mona"]
    for method, row in table.iterrows():
        for metric in DENSE_TABLES[key][1]:
            if method == "full":
                assert math.isnan(row[f"{metric}_ppt"])
                continue
            computed = round_half_up(ppt(row[metric] / 100, row["params"]), 2)
            expected = DENSE_PPT_TYPOS.get((key, method, metric), row[f"{metric}_ppt"])
            assert computed == expected, (key, method, metric, computed)
            if (key, method, metric) in DENSE_PPT_TYPOS:
                assert round(abs(row[f"{metric}_ppt"] - computed), 6) == 0.01
                assert "catalog section 1" in row["note"]


def test_published_dense_values():
    coco = load_published_dense("coco")
    assert coco.loc["mona", ["box_ap", "mask_ap"]].tolist() == [53.4, 46.0]
    assert coco.loc["linear", "memory_mb"] == 7137 and coco.loc["partial", "params"] == 12_600_000
    assert load_published_dense("voc").loc["e3va", "box_ap50"] == 86.5
    assert load_published_dense("ade20k").loc["mona", "miou"] == 51.36
    assert load_published_dense("vtab") is None


def write_run(root: Path, suite, method, task, seed, metrics, params, memory, primary="box_ap"):
    path = root / "results" / suite / method / task / f"seed-{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "schema": RUN_SCHEMA, "status": "ok", "suite": suite, "task": task, "method": method, "seed": seed,
        "protocol": {"name": "coco2017"}, "metric": {"name": primary, "value": metrics[primary]}, "metrics": metrics,
        "params": {"trainable": params, "trainable_with_head": params + 1000},
        "train": {"process_peak_memory_mb": 2 * memory, "images_per_second": 3.0, "wall_seconds": 10.0},
        "efficiency": {"device": "NVIDIA H100", "train_memory_mb": memory, "train_memory_kind": "cuda_max_allocated",
                       "train_samples_per_second": 3.0, "trained_tensors_bytes": 4 * params + 1000},
        "eval": {"wall_seconds": 1.0}, "config": {"backbone": {"name": "swin-b-in22k", "arch": "swin_base"}},
        "provenance": {"git_commit": "abc", "packages": {"mmdet": "3.3.0"}}}))
    return path


@pytest.fixture
def dense_runs(tmp_path):
    paths = [
        write_run(tmp_path, "coco", "linear", "coco2017", 42, {"box_ap": 0.40, "mask_ap": 0.35, "box_ap50": 0.6}, 0, 7000),
        write_run(tmp_path, "coco", "mona", "coco2017", 42, {"box_ap": 0.50, "mask_ap": 0.44, "box_ap50": 0.7},
                  3_667_456, 9000),
        write_run(tmp_path, "coco", "mona", "coco2017", 43, {"box_ap": 0.52, "mask_ap": 0.46, "box_ap50": 0.7},
                  3_667_456, 9500),
        tmp_path / "results" / "coco" / "lora" / "coco2017" / "seed-42" / "metrics.json",  # never ran
    ]
    return load_runs(paths)


def test_dense_table(dense_runs):
    table = dense_table(dense_runs, "coco", ["linear", "mona", "lora"], [("coco2017", "box_ap"), ("coco2017", "mask_ap")])
    assert table.loc["mona", "coco2017:box_ap"] == pytest.approx(51.0)
    assert table.loc["mona", "coco2017:mask_ap_std"] == pytest.approx(math.sqrt(2.0))
    assert table.loc["mona", "ppt:coco2017:box_ap"] == pytest.approx(ppt(0.51, 3_667_456))
    assert table.loc["mona", "train_memory_mb"] == 9500 and table.loc["mona", "n_seeds"] == 2
    assert table.loc["linear", "params"] == 0 and table.loc["linear", "ppt:coco2017:mask_ap"] == pytest.approx(0.35)
    assert math.isnan(table.loc["lora", "coco2017:box_ap"]) and table.loc["lora", "status"] == "incomplete: 1 missing"


def test_dense_html_has_metrics_params_ppt_memory_and_published_rows(dense_runs):
    suites = {"coco": {"title": "COCO 2017", "kind": "dense", "protocol": "coco2017", "backbone": "swin-b-in22k",
                       "methods": ["linear", "mona", "lora"], "tasks": ["coco2017"], "groups": None,
                       "published": "coco", "notes": [],
                       "families": {"linear": {"family": "baseline", "mergeable": True, "paper": "x 2020"},
                                    "mona": {"family": "addition", "mergeable": False, "paper": "y 2025"},
                                    "lora": {"family": "reparameterization", "mergeable": True, "paper": "z 2022"}}}}
    context = build_context(dense_runs, suites)
    suite = context["suites"][0]
    assert suite["columns"] == ["AP box", "AP mask"]  # COCO's AP@[.5:.95]; AP@0.5 not shown
    mona = next(r for r in suite["rows"] if r["method"] == "mona")
    assert [c["text"] for c in mona["cells"]] == ["51.00", "45.00"]
    assert mona["params"]["text"] == "3.67M" and mona["memory"]["text"] == "9,500 MB"
    assert [c["text"] for c in mona["ppts"]] == [f"{round_half_up(ppt(v, 3_667_456), 2):.2f}" for v in (0.51, 0.45)]
    assert mona["published"]["label"] == "published: Mona"
    assert [c["text"] for c in mona["published"]["cells"]] == ["53.4", "46.0"]
    assert mona["published"]["cells"][0]["sub"] == "\u0394 \u22122.40"
    assert mona["published"]["memory"]["text"] == "13,996 MB"
    html = render_html(context)
    for text in ("PPT AP box", "published: Frozen", "13,996 MB", "incomplete: 1 missing", "pycocotools"):
        assert text in html


def test_a_dense_task_without_any_successful_run_is_not_shown_as_ok(tmp_path):
    """Found by issue 15: such a task had no metric column, so its rows read "ok"."""
    runs = load_runs([tmp_path / "results/coco-mini/lora/shapes/seed-42/metrics.json"])  # never ran
    suites = {"coco-mini": {"title": "COCO-mini", "kind": "dense", "layout": "coco", "protocol": "vtab1k",
                            "backbone": "swin-demo",
                            "methods": ["lora"], "tasks": ["shapes"], "groups": None, "published": None, "notes": [],
                            "families": {"lora": {"family": "reparameterization", "mergeable": True,
                                                  "paper": "z 2022"}}}}
    suite = build_context(runs, suites)["suites"][0]
    assert [(f["method"], f["task"], f["status"]) for f in suite["failures"]] == [("lora", "shapes", "missing")]
    [row] = suite["rows"]
    assert row["status"] != "ok" and [c["cls"] for c in row["cells"]] == ["missing"]
