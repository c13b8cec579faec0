"""The video track through Snakemake, in a temporary folder: the embedded suite end to end (clips
generated as mp4, checked with decord, trained, tabulated, reported), and the real suites planned."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.configs import video_config, write_config
from helpers.report import read_report
from helpers.snake import job_counts, run_workflow
from helpers.videos import write_ssv2

pytestmark = pytest.mark.slow

METHODS = ("linear", "adaptformer")


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return run_workflow(tmp_path, video_config(tmp_path), *args, check=False)


def test_video_mini_runs_end_to_end(tmp_path):
    result = run(tmp_path, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    for method in ("linear", "adaptformer"):
        metrics = json.loads((tmp_path / f"results/video-mini/{method}/motion/seed-42/metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["eval"]["num_images"] == 12
        assert metrics["config"]["layout"] == "video-csv"
    index = json.loads((tmp_path / "resources/index/video-mini/motion.json").read_text())
    assert index["decoded"] and index["splits"]["test.csv"]["count"] == 12
    shown = read_report(tmp_path / "reports/index.html")["video-mini"]
    for method in METHODS:
        cell = shown.cell(method, "motion")
        assert not cell.classes & {"missing", "failed"} and float(cell.text) >= 0, (method, cell)
    assert shown.failures() == [] and "2 of 2 runs succeeded" in shown.meta
    again = run(tmp_path, "--cores", "2", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_real_video_suites_are_planned(tmp_path):
    targets = {"results/ssv2/adaptformer/": ("prepare_video_task", "check_video_task", "download_backbone"),
               "results/hmdb51-vswin/bapat/": ("prepare_video_task", "check_video_task")}
    result = run(tmp_path, "-n", *targets)  # one plan for both targets
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    # ssv2 and hmdb51 have one task each; hmdb51-vswin reads hmdb51's data with another backbone
    assert counts["prepare_video_task"] == 2 and counts["check_video_task"] == 2
    assert counts["train_run"] == 2 and counts["method_summary"] == 2
    assert counts["download_backbone"] == 2  # VideoMAE ViT-B and Video Swin-B


def test_prepare_video_task_turns_the_official_ssv2_layout_into_a_checked_task(tmp_path):
    """The rule itself, on nine tiny webm clips in SSv2's layout at the config's source folder."""
    write_ssv2(tmp_path / "resources/raw/ssv2")
    config = yaml.safe_load(video_config(tmp_path).read_text())
    config["suites"]["ssv2"]["tasks"]["ssv2"]["num_classes"] = 3
    configfile = write_config(config, tmp_path / "ssv2.yaml")
    result = run_workflow(tmp_path, configfile, "--cores", "2", "resources/index/ssv2/ssv2.json")
    assert job_counts(result.stdout + result.stderr) == {"prepare_video_task": 1, "check_video_task": 1}
    task = tmp_path / "resources/data/ssv2/ssv2"
    assert sorted(p.suffix for p in (task / "videos").rglob("*.*")) == [".mp4"] * 9
    index = json.loads((tmp_path / "resources/index/ssv2/ssv2.json").read_text())
    # (prepare_video_task decoded every clip while converting; the check then reads the manifest)
    assert index["splits"]["train.csv"]["count"] == 6 and index["splits"]["val.csv"]["count"] == 3
    assert index["manifest_sha256"] and index["skipped"] == 0
    assert (tmp_path / "logs/data/prepare/ssv2/ssv2.log").is_file()


def test_a_damaged_video_stops_its_task_naming_the_file_and_loses_nothing_else(tmp_path):
    """Generate the task, truncate one clip, run with --keep-going: the check names the file, the
    runs that need it are reported as missing (not silently dropped), and the generated data stay."""
    generated = run(tmp_path, "--cores", "2", "resources/data/video-mini/motion")
    assert generated.returncode == 0, generated.stderr[-3000:]
    task = tmp_path / "resources/data/video-mini/motion"
    damaged = sorted((task / "videos" / "test").glob("*.mp4"))[3]
    damaged.write_bytes(damaged.read_bytes()[:200])
    result = run(tmp_path, "--cores", "2", "--keep-going")
    assert result.returncode != 0
    logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.log"))
    assert damaged.name in result.stdout + result.stderr + logs
    assert not (tmp_path / "results/video-mini/linear/motion/seed-42/metrics.json").exists()
    shown = read_report(tmp_path / "reports/index.html")["video-mini"]
    for method in METHODS:  # the runs that need the damaged task, marked in their cell and listed
        cell = shown.cell(method, "motion")
        assert cell.text == "missing" and "missing" in cell.classes, (method, cell)
    assert sorted((f["method"], f["task"], f["seed"], f["status"], f["status_class"]) for f in shown.failures()) == [
        (m, "motion", "42", "missing", "missing") for m in sorted(METHODS)]
    assert "0 of 2 runs succeeded" in shown.meta
    assert len(list((task / "videos").rglob("*.mp4"))) == 12 + 6 + 12 and damaged.exists()
