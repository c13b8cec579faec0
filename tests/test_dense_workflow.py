"""The dense track through Snakemake, in a temporary folder: the embedded suites train and evaluate with
real mmdet / mmseg (pycocotools COCOeval, mIoU) and reach the report; a malformed COCO json stops
only its own task, naming the file; the real COCO pipeline is planned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_workflow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]

pytestmark = pytest.mark.slow


def dense_config(tmp_path: Path) -> Path:
    """The shipped config with the embedded dense suites as the default target, shrunk to 2 methods and
    a few iterations; the shipped demo backbone."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["default_suites"] = ["coco-mini", "ade-mini"]
    backbone = config["backbones"]["swin-demo"]
    backbone["checkpoint"] = str(ROOT / backbone["checkpoint"])
    for name in ("coco-mini", "ade-mini"):
        suite = config["suites"][name]
        suite.update(methods=["linear", "lora"], sizes={"train800": 8, "val200": 4, "test": 8})
    config["suites"]["coco-mini"]["training"]["epochs"] = 2
    config["suites"]["coco-mini"]["data"]["milestones"] = [1]
    config["suites"]["ade-mini"]["data"].update(max_iters=6, warmup_iters=2)
    path = tmp_path / "dense.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_workflow(tmp_path, dense_config(tmp_path), *args, check=check, timeout=1800)


def test_embedded_dense_suites_end_to_end_and_a_bad_json_stops_only_its_task(tmp_path):
    snakemake(tmp_path, "--cores", "2", "--until", "generate_embedded_dense_task")
    ann = tmp_path / "resources/data/coco-mini/shapes/annotations/instances_test.json"
    good = ann.read_bytes()
    ann.write_bytes(good[: len(good) // 2])  # a truncated download, say

    failed = snakemake(tmp_path, "--cores", "2", "--keep-going", check=False)
    assert failed.returncode != 0
    check_log = (tmp_path / "logs/data/check/dense/coco-mini/shapes.log").read_text()
    assert "resources/data/coco-mini/shapes/annotations/instances_test.json: not valid JSON" in check_log
    for method in ("linear", "lora"):  # the other suite is not lost
        run = json.loads((tmp_path / f"results/ade-mini/{method}/scenes/seed-42/metrics.json").read_text())
        assert run["status"] == "ok"
    report = (tmp_path / "reports/index.html").read_text()  # rebuilt after the failure, runs marked
    assert "missing" in report and "mIoU" in report

    ann.write_bytes(good)
    # the report written after the failure is newer than everything: force it, so its missing inputs are made
    snakemake(tmp_path, "--cores", "2", "--forcerun", "report")
    coco = json.loads((tmp_path / "results/coco-mini/lora/shapes/seed-42/metrics.json").read_text())
    assert coco["status"] == "ok" and coco["metric"]["name"] == "box_ap"
    assert set(coco["metrics"]) >= {"box_ap", "mask_ap"} and all(0 <= v <= 1 for v in coco["metrics"].values())
    assert coco["eval"]["evaluator"] == "CocoMetric" and coco["eval"]["num_images"] == 8
    assert coco["params"]["trainable"] == 4 * 8 * 2 * (32 + 64 + 128 + 256)  # LoRA r=8 on q, v of 8 blocks
    assert coco["params"]["trainable_with_head"] > coco["params"]["trainable"]
    assert coco["train"]["peak_memory_mb"] > 0 and 0 < coco["train"]["images"] <= 2 * 12  # 2 epochs of 12 images
    assert coco["provenance"]["packages"]["mmdet"] == "3.3.0"
    assert coco["config"]["checkpoint_sha256"] == yaml.safe_load((ROOT / "config/config.yaml").read_text())[
        "backbones"]["swin-demo"]["sha256"]
    assert (tmp_path / "results/coco-mini/lora/shapes/seed-42/config.py").is_file()
    assert not (tmp_path / "results/coco-mini/lora/shapes/seed-42/checkpoint").exists()
    ade = json.loads((tmp_path / "results/ade-mini/linear/scenes/seed-42/metrics.json").read_text())
    assert ade["metric"]["name"] == "miou" and ade["params"]["trainable"] == 0
    report = (tmp_path / "reports/index.html").read_text()
    for text in ("COCO-mini", "ADE-mini", "AP box", "AP mask", "mIoU", "PPT AP box", "Memory"):
        assert text in report
    assert report.count("2 of 2 runs succeeded") == 2


def test_real_coco_pipeline_is_planned(tmp_path):
    dry = snakemake(tmp_path, "-n", "results/coco/mona/")
    counts = dict(line.split() for line in dry.stdout.splitlines()
                  if len(line.split()) == 2 and line.split()[1].isdigit())
    assert counts["download_data_archive"] == "3" and counts["download_backbone"] == "1"
    assert counts["prepare_task_folder"] == "1" and counts["check_dense_task"] == "1"
    assert counts["train_dense_run"] == "1" and "train_run" not in counts
