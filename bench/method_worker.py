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
from common import PeakMemory, apply, cost, saved_activation_mb, sync, train_step_fn, vit


def measure(method: str, arch: str, img_size: int, batch: int, steps: int, device: str) -> dict:
    from vpeft.methods import get_method_class

    model = vit(arch, img_size)
    applied = apply(model, method, img_size=img_size)
    counts = applied.parameter_counts()
    model.to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, img_size, img_size, generator=g).to(device)
    labels = (torch.arange(batch) % 10).to(device)
    step = train_step_fn(model, images, labels)
    with PeakMemory(device) as peak:  # first step included: it allocates the optimizer state
        saved_mb = saved_activation_mb(step)
        sync(device)
        wall, cpu = [], []
        for _ in range(steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            sync(device)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    seconds = {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}
    return {"method": method, "category": get_method_class(method).category,
            "trainable_params": counts["trainable"], "images_per_second": batch / cost(seconds, device),
            "images_per_second_measure": "cpu" if torch.device(device).type == "cpu" else "wall",
            "seconds_per_step": seconds, "peak_memory_mb": peak.mb, "peak_memory_kind": peak.kind,
            "saved_activations_mb": saved_mb}


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
