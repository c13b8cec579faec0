"""The few-shot and shift protocols through Snakemake on vtab-mini: the DAG's jobs, what each run trained
on, the shift / WiSE-FT records and the report cells recomputed from the run files."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
from helpers.protocols import protocols_config
from helpers.snake import job_counts, run_workflow

from vpeft.data.manifest import read_rows

pytestmark = pytest.mark.slow


def _table(html: str, css_class: str, attr: str = "") -> list[list[str]]:
    """Rows of the table with `css_class` (and attribute text `attr`), each as its cells' text."""
    match = re.search(rf'<table class="{css_class}"{attr}>(.*?)</table>', html, flags=re.S)
    assert match, f"no table {css_class}{attr} in the report"
    body = match.group(1).split("<tbody>")[1]
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)]


def _pm(values: list[float]) -> str:
    text = f"{100 * statistics.fmean(values):.1f}"
    return text + (f" \u00b1 {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")


def test_fewshot_protocol_trains_k_per_class_and_reports_a_curve_and_a_table_per_k(tmp_path):
    config = protocols_config(tmp_path)
    targets = ["reports/protocols/vtab-mini-fewshot.html", "results/vtab-mini-fewshot/table.csv"]
    result = run_workflow(tmp_path, config, "--cores", "2", *targets)
    jobs = job_counts(result.stdout + result.stderr)
    assert jobs.get("train_fewshot_run") == 2 * 1 * 2 * 2 and jobs.get("fewshot_split") == 1 * 2 * 2
    assert "train_run" not in jobs  # few-shot runs are their own jobs, not the full-split runs
    metrics = {}
    for path in sorted(tmp_path.glob("results/vtab-mini-fewshot/*/digits/shots-*/seed-*/metrics.json")):
        record = json.loads(path.read_text())
        shots, seed = int(path.parts[-3].removeprefix("shots-")), int(path.parts[-2].removeprefix("seed-"))
        assert record["protocol"]["fewshot"] == {"shots": shots, "seed": seed} and record["seed"] == seed
        # k x 10 digit classes per epoch (linear probing keeps its own 20 epochs)
        assert record["train"]["images"] == shots * 10 * record["train"]["epochs"]
        _, rows = read_rows(tmp_path / record["config"]["data"]["index"], ["train800val200"])
        assert len(rows) == shots * 10
        metrics[record["method"], shots, seed] = record["metric"]["value"]
    assert len(metrics) == 8
    html = (tmp_path / targets[0]).read_text()
    assert 'class="plot fewshot"' in html and 'data-marks="4"' in html  # 2 methods x 2 k
    for shots in (1, 2):
        rows = {r[0]: r for r in _table(html, "fewshot-table", f' data-shots="{shots}"')}
        assert set(rows) == {"linear", "lora"}
        for method in ("linear", "lora"):
            values = [metrics[method, shots, s] for s in (0, 1)]
            # cells: digits, mean (one task: the same), seeds, status
            assert rows[method][1:] == [_pm(values), _pm(values), "2 / 2", "ok"]
    table = (tmp_path / targets[1]).read_text().splitlines()
    assert table[0].startswith("method,shots,digits") and len(table) == 1 + 2 * 2


def test_shift_mini_end_to_end_with_wise_ensembles(tmp_path):
    config = protocols_config(tmp_path)
    result = run_workflow(tmp_path, config, "--cores", "2", "reports/protocols/vtab-mini-shift.html")
    jobs = job_counts(result.stdout + result.stderr)
    assert jobs.get("render_shift_target") == 3 and jobs.get("evaluate_shift") == 3 and jobs.get("train_run") == 3
    records = {}
    for method in ("lora", "full", "adapter"):
        run = json.loads((tmp_path / f"results/vtab-mini-shift/{method}/digits/seed-42/metrics.json").read_text())
        shift = json.loads((tmp_path / f"results/vtab-mini-shift/{method}/digits/seed-42/shift.json").read_text())
        assert shift["source"]["top1"] == run["metric"]["value"] and shift["source"]["matches_run"]
        assert set(shift["targets"]) == {"noise", "sketch", "odd-blur"}
        records[method] = shift
    # the odd-class target: 5 of the 10 digit classes, its test images those of the odd source labels
    odd = records["lora"]["targets"]["odd-blur"]
    source_test = read_rows(tmp_path / "resources/index/vtab-mini/digits.json", ["test"])[1]
    assert odd["mapped_classes"] == 5 and odd["num_images"] == sum(1 for r in source_test if r.label % 2 == 1)
    for method in ("lora", "full"):  # WiSE-FT: full fine-tuning and a mergeable method
        points = records[method]["wise"]["points"]
        assert [p["alpha"] for p in points] == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert points[-1]["source"]["top1"] == records[method]["source"]["top1"]  # alpha 1 = the trained model
        assert points[0]["source"]["top1"] != points[-1]["source"]["top1"] or points[0]["targets"] != points[-1]["targets"]
    assert records["adapter"]["wise"]["points"] == [] and "not mergeable" in records["adapter"]["wise"]["reason"]
    html = (tmp_path / "reports/protocols/vtab-mini-shift.html").read_text()
    rows = {r[0]: r for r in _table(html, "shift-table")}
    for method, shift in records.items():
        targets = [shift["targets"][t]["top1"] for t in ("noise", "sketch", "odd-blur")]
        mean = statistics.fmean(targets)
        expected = ["1", f"{100 * shift['source']['top1']:.1f}", *(f"{100 * t:.1f}" for t in targets),
                    f"{100 * mean:.1f}", f"{100 * (mean - shift['source']['top1']):+.1f}"]
        assert rows[method][1:] == expected
    wise = {r[0]: r for r in _table(html, "wise-table")}
    for method in ("lora", "full"):
        cells = wise[method][1:6]
        for cell, point in zip(cells, records[method]["wise"]["points"]):
            target = statistics.fmean(point["targets"][t]["top1"] for t in ("noise", "sketch", "odd-blur"))
            assert cell == f"{100 * point['source']['top1']:.1f} / {100 * target:.1f}"
    assert wise["adapter"][1].startswith("no ensemble")
    assert 'class="plot wise"' in html and 'data-marks="10"' in html  # 2 curves x 5 alphas


def test_real_imagenet_shift_suite_is_planned_with_its_stages(tmp_path):
    """The ImageNet -> V2 / Sketch / A / R suite (NOAH's 16-shot protocol) plans every data check, the
    sample, the run and its shift stage; without the data the check says where to get it."""
    config = protocols_config(tmp_path)
    target = "results/imagenet-16shot/lora/imagenet/shots-16/seed-0/shift.json"
    dry = run_workflow(tmp_path, config, "-n", target)
    jobs = {k: v for k, v in job_counts(dry.stdout).items() if "backbone" not in k}  # the ViT-B download + check
    assert jobs == {"check_task_data": 5, "fewshot_split": 1, "train_fewshot_run": 1, "evaluate_shift": 1}
    failed = run_workflow(tmp_path, config, "--cores", "1", "resources/index/imagenet-a/imagenet.json", check=False)
    assert failed.returncode != 0
    message = (tmp_path / "logs/data/check/imagenet-a/imagenet.log").read_text()
    assert "hendrycks/natural-adv-examples" in message and "resources/data/imagenet-a/imagenet-a" in message
