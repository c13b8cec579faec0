"""One method's training cost, measured in a fresh process (so one method's freed memory cannot hide
another's peak). Prints one JSON object. Called by method_costs.py; usable alone:

    python bench/method_worker.py --method lora --arch vit_small_patch16_224 --img-size 112 --batch 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback

import torch
from common import apply, vit


def measure(method: str, arch: str, img_size: int, batch: int, steps: int, device: str) -> dict:
    """The per-run efficiency measurement of the training engine (`vpeft.efficiency.measure_training`,
    what every run's metrics.json records), here on a random-init model at the bench's size."""
    from vpeft.efficiency import device_name, measure_training
    from vpeft.engine.build import TrainingConfig, parameter_groups
    from vpeft.engine.optim import build_optimizer
    from vpeft.methods import get_method_class

    model = vit(arch, img_size)
    applied = apply(model, method, img_size=img_size)
    counts = applied.parameter_counts()
    dev = torch.device(device)
    model.to(dev)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, img_size, img_size, generator=g).to(dev)
    labels = (torch.arange(batch) % 10).to(dev)
    tc = TrainingConfig()
    record = measure_training(model, lambda m: build_optimizer(parameter_groups(m, tc), tc, dev), images, labels,
                              steps=steps + 1)
    seconds = {"cpu": record["train_cpu_seconds_per_step"], "wall": batch / record["train_samples_per_second"]}
    cost = seconds["cpu"] if dev.type == "cpu" else seconds["wall"]
    parts = record.get("train_memory_parts_mb", {})
    return {"method": method, "category": get_method_class(method).category, "device": device_name(dev),
            "trainable_params": counts["trainable"], "images_per_second": batch / cost,
            "images_per_second_measure": "cpu" if dev.type == "cpu" else "wall", "seconds_per_step": seconds,
            "train_memory_mb": record["train_memory_mb"], "train_memory_kind": record["train_memory_kind"],
            "train_memory_parts_mb": parts, "saved_activations_mb": parts.get("saved_activations")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--img-size", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = measure(args.method, args.arch, args.img_size, args.batch, args.steps, args.device)
    except Exception as err:  # noqa: BLE001 - reported as a row, the bench goes on
        result = {"method": args.method, "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc(limit=3)}
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
