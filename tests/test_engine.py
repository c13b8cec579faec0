"""One run end to end in the library: metrics.json content, determinism, failure on a NaN loss."""

from __future__ import annotations

import json

import pytest

from vpeft.engine.train import TrainingError, run_training

BACKBONE = {"name": "vit-demo-random", "arch": "vit_demo_patch4_32.fractal", "checkpoint": None,
            "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
TRAINING = {"epochs": 2, "warmup_epochs": 1, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3,
            "weight_decay": 1e-4, "warmup_lr_init": 1e-6, "lr_min": 1e-5, "label_smoothing": 0.1,
            "drop_path": 0.1, "train_aug": False, "num_workers": 0}


def run_values(task_dir, method="lora", **training):
    return {"suite": "toy-suite", "task": "toy", "method": method, "seed": 7, "task_dir": str(task_dir),
            "num_classes": 3, "backbone": BACKBONE, "protocol": {"name": "vtab1k", "train_split": "train800val200",
                                                                  "eval_split": "test"},
            "method_hparams": {"rank": 2} if method == "lora" else {}, "training": {**TRAINING, **training},
            "pretrained": False}


def test_metrics_file_records_result_and_provenance(vtab_task, tmp_path):
    out = tmp_path / "run" / "metrics.json"
    run_training(run_values(vtab_task), out)
    m = json.loads(out.read_text())
    assert m["schema"] == "vpeft.run/1" and m["status"] == "ok"
    assert 0.0 <= m["metric"]["value"] <= 1.0 and m["eval"]["num_images"] == 10 and m["eval"]["split"] == "test"
    assert m["params"]["trainable"] == 4 * 2 * 128 * 4  # LoRA q+v, rank 2, width 128, depth 4
    assert m["params"]["trainable_with_head"] == m["params"]["trainable"] + 129 * 3
    assert len(m["train"]["history"]) == 2 and m["train"]["images"] == 2 * 16
    assert m["train"]["images_per_second"] > 0 and m["train"]["peak_memory_mb"] > 0
    assert m["eval"]["merged"] is True
    assert m["config"]["training"]["epochs"] == 2 and m["config"]["method_hparams"]["rank"] == 2
    prov = m["provenance"]
    assert prov["packages"]["torch"] and prov["packages"]["timm"] and prov["hardware"]["cpu"]
    assert "git_commit" in prov and prov["threads"] == 1
    assert not list(out.parent.glob("*.tmp")), "no temporary files may be left behind"


def test_same_seed_gives_identical_metrics(vtab_task, tmp_path):
    a = run_training(run_values(vtab_task, "adapter", drop_path=0.1), tmp_path / "a.json")
    b = run_training(run_values(vtab_task, "adapter", drop_path=0.1), tmp_path / "b.json")
    assert a["metric"] == b["metric"]
    assert [h["loss"] for h in a["train"]["history"]] == [h["loss"] for h in b["train"]["history"]]


def test_nan_loss_stops_with_epoch_and_step_and_writes_nothing(vtab_task, tmp_path):
    out = tmp_path / "metrics.json"
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at epoch \d+, step \d+ \(toy-suite/full/toy"):
        run_training(run_values(vtab_task, "full", lr=1e30, warmup_epochs=0, epochs=3), out)
    assert not out.exists()
