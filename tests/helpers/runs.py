"""The settings of one library-level training run (vpeft.engine.train.run_training) on a toy task
folder: a random-init demo ViT (width 128, depth 4), 2 short epochs."""

from __future__ import annotations

import json
from pathlib import Path

BACKBONE = {"name": "vit-demo-random", "arch": "vit_demo_patch4_32.fractal", "checkpoint": None,
            "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
TRAINING = {"epochs": 2, "warmup_epochs": 1, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3,
            "weight_decay": 1e-4, "warmup_lr_init": 1e-6, "lr_min": 1e-5, "label_smoothing": 0.1,
            "drop_path": 0.1, "train_aug": False, "num_workers": 0}


def run_values(task_dir, method="lora", seed: int = 7, **training) -> dict:
    return {"suite": "toy-suite", "task": "toy", "method": method, "seed": seed, "task_dir": str(task_dir),
            "num_classes": 3, "backbone": BACKBONE, "protocol": {"name": "vtab1k", "train_split": "train800val200",
                                                                  "eval_split": "test"},
            "method_hparams": {"rank": 2} if method == "lora" else {}, "training": {**TRAINING, **training},
            "pretrained": False}


def write_ok_run(root: Path, suite, method, task, seed, value, trainable, **provenance):
    """A successful run's metrics.json under root/results, as the training engine writes it."""
    path = root / "results" / suite / method / task / f"seed-{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = {
        "vpeft_version": "0.1.0", "git_commit": "abc123", "git_dirty": False,
        "packages": {"torch": "2.14.1", "timm": "1.0.31"}, "hardware": {"cpu": "test-cpu", "cuda": None},
        "threads": 1, "python": "3.11.7", "created": "2026-11-29T05:00:00Z",
    }  # fmt: skip
    prov.update(provenance)
    data = {
        "schema": "vpeft.run/1", "status": "ok", "suite": suite, "task": task, "method": method, "seed": seed,
        "protocol": {"name": "vtab1k", "train_split": "train800val200", "eval_split": "test"},
        "metric": {"name": "top1", "value": value},
        "params": {"trainable": trainable, "trainable_with_head": trainable + 1290, "head": 1290,
                   "backbone_total": 809354},
        "train": {"epochs": 10, "images_per_second": 200.0 + seed, "wall_seconds": 12.0,
                  "process_peak_memory_mb": 512.0, "final_loss": 0.31, "history": []},
        "eval": {"split": "test", "num_images": 500, "wall_seconds": 1.0, "merged": True},
        "efficiency": {"device": "cpu: test-cpu, 1 threads", "train_memory_mb": 40.0 + seed,
                       "train_memory_kind": "cpu_tensor_bytes", "train_samples_per_second": 300.0 + seed,
                       "eval_batch": 256, "trained_tensors_bytes": 50_000 + trainable * 4,
                       "latency_ms": {"merged": {"batch_1": 2.0, "batch_eval": 80.0 + seed},
                                      "unmerged": {"batch_1": 2.5, "batch_eval": 90.0}}},
        "config": {"backbone": {"name": "vit-demo", "arch": "vit_demo_patch4_32.fractal"},
                   "method": {"name": method, "hparams": {}}, "training": {"epochs": 10, "lr": 0.001}},
        "provenance": prov,
    }  # fmt: skip
    path.write_text(json.dumps(data))
    return path
