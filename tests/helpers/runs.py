"""The settings of one library-level training run (vpeft.engine.train.run_training) on a toy task
folder: a random-init demo ViT (width 128, depth 4), 2 short epochs."""

from __future__ import annotations

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
