"""Dense runs with several data-parallel processes on CPU (gloo): torchrun + mmengine's pytorch launcher
train a coco-mini detector with 2 processes and rank 0 writes the result; a rank that dies fails the run
with its error, leaves failed.json and no metrics.json."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from vpeft.config import load_method_configs, resolve_suites
from vpeft.dense import launch
from vpeft.dense.datasets import check_dense_task, write_dense_index
from vpeft.dense.settings import resolve_dense_run
from vpeft.dense.synthetic import generate_dense_task
from vpeft.torchrun import DistributedRunError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 10  # dense-mini trains on train800val200: 8 + 2 generated images


@pytest.fixture(scope="module")
def coco_mini(tmp_path_factory):
    """A tiny coco-mini task, checked and indexed, and a run of it (2 epochs) with 2 CPU processes of 1 image."""
    folder = tmp_path_factory.mktemp("coco-mini")
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["resources_dir"] = str(folder / "resources")
    suite = config["suites"]["coco-mini"]
    suite["sizes"] = {"train800": 8, "val200": 2, "test": 4}
    suite["training"].update(epochs=2)
    suite["data"].update(milestones=[1], warmup_iters=2, processes=2, images_per_process=1)
    backbone = config["backbones"]["swin-demo"]
    backbone["checkpoint"] = str(ROOT / backbone["checkpoint"])
    suites = resolve_suites(config)
    methods = load_method_configs(ROOT / "config/methods", ROOT / "workflow/schemas/method.schema.yaml")
    run = resolve_dense_run(config, suites, methods, "coco-mini", "lora", "shapes", 42)
    generate_dense_task("coco", run["task_dir"], seed=0, sizes=suite["sizes"], image_size=suite["image_size"])
    index, rows = check_dense_task("coco", run["task_dir"], 3, ["train800val200", "test"], suite="coco-mini",
                                   task="shapes", source="embedded")
    index_path = folder / "index.json"
    write_dense_index(index_path, index, rows)
    return run, index_path


def _run(run, index_path, out: Path) -> dict:
    from vpeft.dense.train import run_dense_training

    return run_dense_training(run, out / "metrics.json", index_path=index_path, threads=2, device="cpu")


def test_two_processes_train_and_rank_0_writes_the_metrics(coco_mini, tmp_path):
    run, index_path = coco_mini
    metrics = _run(run, index_path, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["status"] == "ok" and 0.0 <= metrics["metric"]["value"] <= 1.0
    dist = metrics["train"]["distributed"]
    assert (dist["processes"], dist["launcher"], dist["backend"]) == (2, "pytorch", "gloo")
    # 1 image per process: global batch 2; the lr, given for training.batch_size 4, halved by auto_scale_lr
    # (one process would have quartered it: the factor proves mmengine saw a world of 2)
    assert dist["global_batch"] == 2 and dist["base_batch_size"] == 4
    assert dist["lr_used"] == pytest.approx(run["training"]["lr"] * 2 / 4)
    # each rank steps through its half of the training images once per epoch (one process: twice as many)
    assert metrics["train"]["iterations"] == 2 * TRAIN_IMAGES // 2
    assert metrics["train"]["images"] == 2 * TRAIN_IMAGES
    assert "launcher = 'pytorch'" in (tmp_path / "config.py").read_text()
    assert (tmp_path / "trained.safetensors").is_file()
    assert not (tmp_path / "failed.json").exists() and not (tmp_path / "checkpoint").exists()


def test_a_dying_rank_fails_the_run_with_its_error(coco_mini, tmp_path, monkeypatch, capfd):
    from helpers.failing_dense_worker import ERROR

    run, index_path = coco_mini
    monkeypatch.setattr(launch, "WORKER_MODULE", "helpers.failing_dense_worker")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(DistributedRunError, match=re.escape(f"rank 1 of 2 failed: RuntimeError: {ERROR}")):
        _run(run, index_path, tmp_path)
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert failed["status"] == "failed" and f"rank 1 of 2 failed: RuntimeError: {ERROR}" in failed["error"]
    assert not (tmp_path / "metrics.json").exists()
    # the rank's traceback reaches the job's output (the rule's log)
    assert f"RuntimeError: {ERROR}" in capfd.readouterr().err
