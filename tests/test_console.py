"""The console of a pipeline run is short: Snakemake's progress and one line per finished run; third-party
logs (mmengine's per-iteration lines, timm, torch warnings) go to the jobs' log files only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers.snake import run_workflow

from vpeft.artifacts import read_trained_tensors
from vpeft.export import load_run
from vpeft.logs import eta, finished_run_line

ROOT = Path(__file__).resolve().parents[1]
RUN_LINE = re.compile(r"^done (?P<suite>\S+) / (?P<method>\S+) / (?P<task>\S+) \(seed (?P<seed>\d+)\): "
                      r"(?P<metric>[\w -]+) (?P<value>\d+\.\d\d)%, (?P<params>[\d,]+) trainable params, "
                      r"(?P<wall>\d+\.\d) s$")


def small_config(tmp_path: Path) -> Path:
    """One image suite (2 methods x 1 task, 1 epoch) and one dense suite (1 run, a few iterations)."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for backbone in config["backbones"].values():  # shipped checkpoints, from a run in another folder
        if str(backbone.get("checkpoint") or "").startswith("assets/"):
            backbone["checkpoint"] = str(ROOT / backbone["checkpoint"])
    mini = config["suites"]["vtab-mini"]
    mini.update(methods=["linear", "lora"], sizes={"train800": 12, "val200": 4, "test": 16},
                tasks={"digits": mini["tasks"]["digits"]})
    mini["training"].update(epochs=2, warmup_epochs=0, batch_size=8)
    ade = config["suites"]["ade-mini"]
    ade.update(methods=["lora"], sizes={"train800": 8, "val200": 4, "test": 8})
    ade["data"].update(max_iters=6, warmup_iters=2)
    config["default_suites"] = ["vtab-mini", "ade-mini"]
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_finished_run_line_and_eta():
    metrics = {"suite": "s", "method": "lora", "task": "t", "seed": 1, "metric": {"name": "top1", "value": 0.5625},
               "params": {"trainable": 8192}, "train": {"wall_seconds": 10.0}, "eval": {"wall_seconds": 2.25}}
    assert finished_run_line(metrics) == "done s / lora / t (seed 1): top-1 56.25%, 8,192 trainable params, 12.2 s"
    assert eta(1, 4, 30.0) == "ETA 1m30s" and eta(4, 4, 30.0) == "ETA 0s" and eta(10, 100, 400.0) == "ETA 1h00m00s"


@pytest.mark.slow
def test_pipeline_console_shows_progress_and_one_line_per_run_only(tmp_path):
    result = run_workflow(tmp_path, small_config(tmp_path), "--cores", "2", timeout=1200)
    lines = (result.stdout + result.stderr).splitlines()
    (tmp_path / "console.txt").write_text("\n".join(lines))

    runs = sorted(tmp_path.glob("results/*/*/*/seed-*/metrics.json"))
    assert len(runs) == 3
    summaries = [RUN_LINE.match(line) for line in lines if line.startswith("done ")]
    assert all(summaries), [line for line in lines if line.startswith("done ")]
    by_run = {(m["suite"], m["method"], m["task"]): m for m in summaries}
    assert len(summaries) == len(by_run) == 3
    for path in runs:
        metrics = json.loads(path.read_text())
        line = by_run[(metrics["suite"], metrics["method"], metrics["task"])]
        assert int(line["seed"]) == metrics["seed"]
        assert float(line["value"]) == pytest.approx(100 * metrics["metric"]["value"], abs=0.005)
        assert int(line["params"].replace(",", "")) == metrics["params"]["trainable"]
        wall = metrics["train"]["wall_seconds"] + metrics["eval"]["wall_seconds"]
        assert float(line["wall"]) == pytest.approx(wall, abs=0.05)
        assert {"ade-mini": "mIoU", "vtab-mini": "top-1"}[metrics["suite"]] == line["metric"]

    console = "\n".join(lines)
    # Snakemake's progress is there ...
    assert re.search(r"\d+ of \d+ steps \(100%\) done", console)
    # ... third-party logs are not: they are in the jobs' logs
    for noise in ("mmengine", "Iter(train)", "requires_grad=False", "Warning", "epoch 1/2", "loss"):
        assert noise not in console, f"{noise!r} reached the console"
    dense_log = (tmp_path / "logs/train/ade-mini/lora/scenes/seed-42.log").read_text()
    assert "Iter(train)" in dense_log and "ETA" in dense_log  # mmengine's own lines, and ours with an ETA
    image_log = (tmp_path / "logs/train/vtab-mini/lora/digits/seed-42.log").read_text()
    assert re.search(r"epoch 1/2 .* ETA \d", image_log)

    # every run kept its trained tensors, and the image run rebuilds with its recorded accuracy
    for path in runs:
        meta = read_trained_tensors(path.with_name("trained.safetensors")).meta
        assert meta["fingerprint"] == json.loads(path.read_text())["config"]["fingerprint"]
    lora = tmp_path / "results/vtab-mini/lora/digits/seed-42"
    recorded = json.loads((lora / "metrics.json").read_text())["metric"]["value"]
    assert load_run(lora, base_dir=tmp_path).evaluate() == recorded

    jobs = sum(1 for line in lines if re.match(r"\d+ of \d+ steps", line))
    assert len(lines) <= 6 * jobs + 30, f"{len(lines)} console lines for {jobs} jobs:\n{console[-3000:]}"
