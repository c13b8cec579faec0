"""Dense runs resume after a SIGKILL of their process group at any moment: right after a checkpoint, or
half-way through writing one. The rerun resumes from the last complete checkpoint (mmengine's own state
is pickled; torch's default `weights_only=True` would refuse it: vpeft.dense.checkpoints loads the run's
own folder only) and ends with the uninterrupted run's metrics and loss history, for mmdet (coco-mini,
epoch-based) and mmseg (ade-mini, iteration-based)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vpeft.config import load_method_configs, resolve_suites
from vpeft.dense.datasets import check_dense_task, write_dense_index
from vpeft.dense.settings import resolve_dense_run
from vpeft.dense.synthetic import generate_dense_task
from vpeft.dense.train import run_dense_training

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SUITES = {  # suite -> (layout, task, data settings: 3 checkpoints, one every `checkpoint_interval`)
    "coco-mini": ("coco", "shapes", {"milestones": [2], "warmup_iters": 2, "checkpoint_interval": 1}),
    "ade-mini": ("ade20k", "scenes", {"max_iters": 6, "warmup_iters": 2, "checkpoint_interval": 2}),
}


@pytest.fixture(scope="module", params=sorted(SUITES))
def dense_task(request, tmp_path_factory):
    """A tiny checked task of the suite, its run (lora, 3 epochs or 6 iterations) and the uninterrupted result."""
    suite_name = request.param
    layout, task, data = SUITES[suite_name]
    folder = tmp_path_factory.mktemp(suite_name)
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["resources_dir"] = str(folder / "resources")
    suite = config["suites"][suite_name]
    suite["sizes"] = {"train800": 6, "val200": 2, "test": 4}
    suite["training"].update(epochs=3)
    suite["data"].update(data)
    backbone = config["backbones"]["swin-demo"]
    backbone["checkpoint"] = str(ROOT / backbone["checkpoint"])
    methods = load_method_configs(ROOT / "config/methods", ROOT / "workflow/schemas/method.schema.yaml")
    run = resolve_dense_run(config, resolve_suites(config), methods, suite_name, "lora", task, 42)
    generate_dense_task(layout, run["task_dir"], seed=0, sizes=suite["sizes"], image_size=suite["image_size"])
    index, rows = check_dense_task(layout, run["task_dir"], run["num_classes"], ["train800val200", "test"],
                                   suite=suite_name, task=task, source="embedded")
    index_path = folder / "index.json"
    write_dense_index(index_path, index, rows)
    whole = run_dense_training(run, folder / "whole" / "metrics.json", index_path=index_path, device="cpu")
    return run, index_path, whole


def _killed(run, index_path, out: Path, mode: str, step: int) -> None:
    job = out.parent / "job.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    job.write_text(json.dumps({"run": run, "metrics": str(out), "index": str(index_path)}, default=str))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "helpers.killed_dense_run", str(job), mode, str(step)], env=env,
                          capture_output=True, text=True, timeout=600, start_new_session=True)
    assert proc.returncode == -9, f"the run was not killed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert not out.exists()


@pytest.mark.parametrize("mode", ["after-save", "during-save"])
def test_a_dense_run_killed_at_a_checkpoint_resumes_and_matches_the_uninterrupted_run(dense_task, tmp_path, mode):
    run, index_path, whole = dense_task
    every = SUITES[run["suite"]][2]["checkpoint_interval"]
    killed_at = 2 * every  # the second checkpoint: the first is complete when the second is torn
    out = tmp_path / "metrics.json"
    _killed(run, index_path, out, mode, killed_at)
    work = out.parent / "checkpoint"
    kept = sorted(p.name for p in work.glob("*.pth"))
    unit = "epoch" if run["suite"] == "coco-mini" else "iter"
    complete = killed_at if mode == "after-save" else every
    assert kept == [f"{unit}_{complete}.pth"], "exactly the last complete checkpoint is kept"
    assert Path((work / "last_checkpoint").read_text().strip()).name == f"{unit}_{complete}.pth"

    resumed = run_dense_training(run, out, index_path=index_path, device="cpu")
    assert resumed["train"]["resumed_from"] == f"{unit}_{complete}.pth" and whole["train"]["resumed_from"] is None
    assert not work.exists(), "a finished run leaves no checkpoint folder"
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["train"]["history"] == whole["train"]["history"]
    assert resumed["train"]["iterations"] == whole["train"]["iterations"]
    assert resumed["train"]["images"] == whole["train"]["images"]
