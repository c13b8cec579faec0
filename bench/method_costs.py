"""Per method: training throughput and memory relative to full fine-tuning (one process each).

Memory is the per-run measurement every run records (`vpeft.efficiency`, metrics.json
`efficiency.train_memory_mb`): the method's training memory, frozen weights included; on a GPU the
allocator's peak of a step, on a CPU the bytes of parameters, gradients, optimizer state and saved
activations. `saved_activations_mb` (CPU: tensors autograd keeps for the backward pass) is what
separates side-tuning (no backward through the backbone) from methods inside the backbone.
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
        log(f"  {name:14s} " + (f"{row['images_per_second']:8.1f} img/s  {row['train_memory_mb']:8.1f} MiB"
                                if "error" not in row else f"error: {row['error'][:120]}"))
    full = rows.get("full", {})
    for row in rows.values():
        if "error" in row or "error" in full:
            continue
        row["speed_vs_full"] = ratio(row["images_per_second"], full["images_per_second"])
        row["memory_vs_full"] = ratio(row["train_memory_mb"], full["train_memory_mb"])
        if row.get("saved_activations_mb") is not None and full.get("saved_activations_mb"):
            row["saved_activations_vs_full"] = ratio(row["saved_activations_mb"], full["saved_activations_mb"])
    lora = rows.get("lora", {})
    side = {n: r for n, r in rows.items() if r.get("category") == "side" and "error" not in r}
    check = {}
    if "error" not in lora and lora:
        for name, row in side.items():
            check[name] = {"train_memory_below_lora": row["train_memory_mb"] < lora["train_memory_mb"]}
            if row.get("saved_activations_mb") is not None and lora.get("saved_activations_mb") is not None:
                check[name]["saved_activations_below_lora"] = row["saved_activations_mb"] < lora["saved_activations_mb"]
    return {"arch": arch, "img_size": img_size, "batch": batch, "steps": steps, "device": device,
            "methods": rows, "side_tuning_vs_lora": check}
