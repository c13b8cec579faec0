"""Per method: training throughput and memory relative to full fine-tuning (one process each).

Memory is what a training step adds on top of the loaded model (activations kept for backward,
gradients, optimizer state): peak minus start, on GPU from torch's allocator, on CPU from the
process's resident-set high-water mark. `saved_activations_mb` (tensors autograd keeps for the
backward pass) is exact and device-independent, and is what separates side-tuning (no backward
through the backbone) from methods inside the backbone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common import ratio

WORKER = Path(__file__).with_name("method_worker.py")


def run(arch: str, img_size: int, batch: int, steps: int, threads: int, device: str,
        methods: list[str] | None = None, log=print) -> dict:
    from vpeft.methods import available_methods

    names = methods or available_methods()
    if "full" not in names:
        names = ["full", *names]
    rows: dict = {}
    for name in names:
        cmd = [sys.executable, str(WORKER), "--method", name, "--arch", arch, "--img-size", str(img_size),
               "--batch", str(batch), "--steps", str(steps), "--threads", str(threads), "--device", device]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=WORKER.parent)
        try:
            rows[name] = json.loads(done.stdout)
        except json.JSONDecodeError:
            rows[name] = {"method": name, "error": f"worker exited {done.returncode}: {done.stderr[-500:]}"}
        row = rows[name]
        log(f"  {name:14s} " + (f"{row['images_per_second']:8.1f} img/s  {row['peak_memory_mb']:8.1f} MiB"
                                if "error" not in row else f"error: {row['error'][:120]}"))
    full = rows.get("full", {})
    for row in rows.values():
        if "error" in row or "error" in full:
            continue
        row["speed_vs_full"] = ratio(row["images_per_second"], full["images_per_second"])
        row["memory_vs_full"] = ratio(row["peak_memory_mb"], full["peak_memory_mb"])
        row["saved_activations_vs_full"] = ratio(row["saved_activations_mb"], full["saved_activations_mb"])
    lora = rows.get("lora", {})
    side = {n: r for n, r in rows.items() if r.get("category") == "side" and "error" not in r}
    check = {}
    if "error" not in lora and lora:
        for name, row in side.items():
            check[name] = {"peak_below_lora": row["peak_memory_mb"] < lora["peak_memory_mb"],
                           "saved_activations_below_lora": row["saved_activations_mb"] < lora["saved_activations_mb"]}
    return {"arch": arch, "img_size": img_size, "batch": batch, "steps": steps, "device": device,
            "methods": rows, "side_tuning_vs_lora": check}
