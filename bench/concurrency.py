"""Section `concurrency`: K training runs at once on one device, aggregate runs/hour for K = 1, 2, 4.

Each run is a fresh process (`run_worker.py`, as a workflow job: one CPU thread) training one method
on a generated task; `runs` of them go through a pool of K at a time and the section reports
runs / wall-hour. The workflow places K runs on one GPU with `snakemake --resources gpu_slots=K`
(every GPU rule asks for one slot; README "Performance"). On a CPU (tiny runs) this measures the
same mechanism with cores as the shared resource; on a GPU (`--device cuda`) runs are ViT-B/16 at
224 px on 1,000 training images for a few epochs, small enough that one does not fill the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO
from vtab1k_run import _task, _values

SIZES = {  # (arch, img size, train images, test images, epochs, batch, eval batch)
    "gpu": ("vit_base_patch16_224", 224, 1000, 2000, 5, 64, 1024),
    "cpu": ("vit_demo_patch4_32", 32, 40, 40, 2, 16, 64),
}


def _wave(run_json: Path, root: Path, runs: int, k: int, device: str) -> float:
    """Wall seconds for `runs` runs through a pool of `k` concurrent processes."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    pending, active = list(range(runs)), []
    start = time.perf_counter()
    while pending or active:
        while pending and len(active) < k:
            i = pending.pop(0)
            out = root / f"k{k}-{i}"
            out.mkdir(parents=True)
            active.append(subprocess.Popen([sys.executable, str(REPO / "bench" / "run_worker.py"), str(run_json),
                                            str(out), str(REPO), device], env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, text=True))
        time.sleep(0.05)
        for proc in [p for p in active if p.poll() is not None]:
            active.remove(proc)
            if proc.returncode != 0:
                raise RuntimeError(f"a concurrent run failed:\n{proc.stderr.read()[-3000:]}")
    return time.perf_counter() - start


def run(device: str, *, ks=(1, 2, 4), runs: int = 4, method: str = "lora", size: str | None = None) -> dict:
    size = size or ("gpu" if device.startswith("cuda") else "cpu")
    arch, img_size, train_images, test_images, epochs, batch, eval_batch = SIZES[size]
    out: dict = {"device": device, "size": size, "method": method, "runs": runs, "arch": arch, "img_size": img_size,
                 "train_images": train_images, "test_images": test_images, "epochs": epochs,
                 "cpu_count": os.cpu_count(), "k": {}}
    with tempfile.TemporaryDirectory(prefix="vpeft-concurrency-") as tmp:
        root = Path(tmp)
        task_dir = _task(root, train_images, test_images, image_size=min(img_size, 64))
        run_json = root / "run.json"
        run_json.write_text(json.dumps(_values(task_dir, method, arch, img_size, epochs, batch, eval_batch, "auto")))
        for k in ks:
            wall = _wave(run_json, root, runs, k, device)
            out["k"][str(k)] = {"wall_seconds": wall, "runs_per_hour": runs / wall * 3600}
    base = out["k"][str(ks[0])]["runs_per_hour"]
    for entry in out["k"].values():
        entry["speedup_over_k1"] = entry["runs_per_hour"] / base
    return out
