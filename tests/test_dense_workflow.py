"""The dense track through Snakemake, in a temporary folder: the embedded suites train and evaluate with
real mmdet / mmseg (pycocotools COCOeval, mIoU) and reach the report; a malformed COCO json stops
only its own task, naming the file; the real COCO pipeline is planned."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.configs import dense_config
from helpers.report import read_report
from helpers.snake import ROOT, job_counts, run_workflow

pytestmark = pytest.mark.slow


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
    shown = read_report(tmp_path / "reports/index.html")  # rebuilt after the failure, runs marked
    assert "0 of 2 runs succeeded" in shown["coco-mini"].meta
    for method in ("linear", "lora"):  # no run of the task succeeded: its cells still mark the missing runs
        coco = shown["coco-mini"].cell(method, "AP box")
        assert "missing" in coco.classes and coco.text in ("", "-", "missing"), (method, coco)
    for method in ("linear", "lora"):
        ade = shown["ade-mini"].cell(method, "mIoU")
        assert not ade.classes & {"missing", "failed"} and float(ade.text) >= 0, (method, ade)
    assert sorted((f["method"], f["task"], f["status"], f["status_class"]) for f in shown["coco-mini"].failures()) == [
        ("linear", "shapes", "missing", "missing"), ("lora", "shapes", "missing", "missing")]
    assert shown["ade-mini"].failures() == []

    ann.write_bytes(good)
    # the report written after the failure is newer than everything: force it, so its missing inputs are made
    snakemake(tmp_path, "--cores", "2", "--forcerun", "report")
    coco = json.loads((tmp_path / "results/coco-mini/lora/shapes/seed-42/metrics.json").read_text())
    assert coco["status"] == "ok" and coco["metric"]["name"] == "box_ap"
    assert set(coco["metrics"]) >= {"box_ap", "mask_ap"} and all(0 <= v <= 1 for v in coco["metrics"].values())
    assert coco["eval"]["evaluator"] == "CocoMetric" and coco["eval"]["num_images"] == 8
    assert coco["params"]["trainable"] == 4 * 8 * 2 * (32 + 64 + 128 + 256)  # LoRA r=8 on q, v of 8 blocks
    assert coco["params"]["trainable_with_head"] > coco["params"]["trainable"]
    assert coco["train"]["process_peak_memory_mb"] > 0 and 0 < coco["train"]["images"] <= 2 * 12  # 2 epochs of 12 images
    eff = coco["efficiency"]  # mmengine's iteration times; on CPU the tensor bytes of one iteration
    assert eff["source"] == "mmengine" and eff["device"].startswith("cpu: ")
    assert eff["train_memory_kind"] == "cpu_tensor_bytes" and eff["train_memory_mb"] > 0
    assert eff["train_memory_parts_mb"]["saved_activations"] > 0 and eff["train_samples_per_second"] > 0
    assert eff["latency_ms"]["merged"]["batch_eval"] > 0
    assert eff["trained_tensors_bytes"] == (tmp_path / "results/coco-mini/lora/shapes/seed-42/trained.safetensors"
                                            ).stat().st_size
    assert coco["provenance"]["packages"]["mmdet"] == "3.3.0"
    # the job asks for no GPU: one process without a launcher, the suite's batch and lr unscaled
    dist = coco["train"]["distributed"]
    assert (dist["processes"], dist["launcher"], dist["global_batch"], dist["lr_scale"]) == (1, "none", 4, 1.0)
    assert dist["lr_used"] == pytest.approx(coco["config"]["training"]["lr"])
    assert coco["config"]["checkpoint_sha256"] == yaml.safe_load((ROOT / "config/config.yaml").read_text())[
        "backbones"]["swin-demo"]["sha256"]
    assert (tmp_path / "results/coco-mini/lora/shapes/seed-42/config.py").is_file()
    assert not (tmp_path / "results/coco-mini/lora/shapes/seed-42/checkpoint").exists()
    ade = json.loads((tmp_path / "results/ade-mini/linear/scenes/seed-42/metrics.json").read_text())
    assert ade["metric"]["name"] == "miou" and ade["params"]["trainable"] == 0
    shown = read_report(tmp_path / "reports/index.html")
    for suite, columns in (("coco-mini", ("AP box", "AP mask")), ("ade-mini", ("mIoU",))):
        header = shown[suite].table("Results").header
        assert header == ["Method", *columns, "Params", *(f"PPT {c}" for c in columns), "Memory", "Status"]
        for method in ("linear", "lora"):
            for column in (*columns, *(f"PPT {c}" for c in columns)):
                cell = shown[suite].cell(method, column)
                assert not cell.classes & {"missing", "failed"} and float(cell.text) >= 0, (suite, method, cell)
            assert shown[suite].cell(method, "Memory").text not in ("", "-")
        assert shown[suite].failures() == [] and "2 of 2 runs succeeded" in shown[suite].meta


def test_real_coco_pipeline_is_planned(tmp_path):
    dry = snakemake(tmp_path, "-n", "results/coco/mona/")
    counts = job_counts(dry.stdout)
    coco = yaml.safe_load((ROOT / "config/config.yaml").read_text())["suites"]["coco"]
    assert counts["download_data_archive"] == len(coco["download"]["archives"]) and counts["download_backbone"] == 1
    assert counts["prepare_task_folder"] == len(coco["tasks"]) == counts["check_dense_task"]
    assert counts["train_dense_run"] == len(coco["tasks"]) and "train_run" not in counts
