"""The video track through Snakemake, in a temporary folder: the embedded suite end to end (clips
generated as mp4, checked with decord, trained, tabulated, reported), and the real suites planned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]

pytestmark = pytest.mark.slow


def video_config(tmp_path: Path) -> Path:
    """The shipped config with video-mini as the only default suite, shrunk to 2 methods x 1 epoch."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["default_suites"] = ["video-mini"]
    mini = config["suites"]["video-mini"]
    mini.update(methods=["linear", "adaptformer"], sizes={"train800": 12, "val200": 6, "test": 12})
    mini["training"].update(epochs=1, warmup_epochs=0, batch_size=8)
    demo = config["backbones"]["video-demo"]
    demo["checkpoint"] = str(ROOT / demo["checkpoint"])
    path = tmp_path / "video.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(video_config(tmp_path)), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)


def test_video_mini_runs_end_to_end(tmp_path):
    result = run(tmp_path, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    for method in ("linear", "adaptformer"):
        metrics = json.loads((tmp_path / f"results/video-mini/{method}/motion/seed-42/metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["eval"]["num_images"] == 12
        assert metrics["config"]["layout"] == "video-csv"
    index = json.loads((tmp_path / "resources/index/video-mini/motion.json").read_text())
    assert index["decoded"] and index["splits"]["test.csv"]["count"] == 12
    assert "video-mini" in (tmp_path / "reports/index.html").read_text()
    again = run(tmp_path, "--cores", "2", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_real_video_suites_are_planned(tmp_path):
    for target, rules in (("results/ssv2/adaptformer/", ("prepare_video_task", "check_video_task", "download_backbone")),
                          ("results/hmdb51-vswin/bapat/", ("prepare_video_task", "check_video_task"))):
        result = run(tmp_path, "-n", target)
        assert result.returncode == 0, result.stderr[-3000:]
        for rule in (*rules, "train_run", "method_summary"):
            assert rule in result.stdout, (target, rule)


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
    report = (tmp_path / "reports/index.html").read_text()
    assert "missing" in report and "video-mini" in report
    assert len(list((task / "videos").rglob("*.mp4"))) == 12 + 6 + 12 and damaged.exists()
