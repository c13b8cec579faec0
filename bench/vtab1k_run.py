"""Section `vtab1k-gpu`: whole VTAB-1k runs through the engine, one method per family, and what the
full image benchmark costs from them.

On a GPU (`--device cuda`): ViT-B/16 at 224 px (random init: the weights do not change the cost),
a generated task with VTAB-1k's 1,000 training images (800 + 200) and a large test split (default
21,750, SUN397's), the vtab1k protocol's 100 epochs, the engine's GPU path (training split on the
device, bf16 autocast, fused AdamW, the test split streamed by DataLoader workers). The task's images
are generated small and resized to 224 px by the input pipeline, as any task's are. On a CPU the same
code runs at a tiny size (the demo ViT, 32 px, a few images and epochs) so that CI tests the path.

Per run: wall time (train + test + set-up), training images/s, MFU (the run's forward + backward
FLOPs per image from torch's FlopCounterMode x images/s over the device's bf16 peak), peak memory.
The GPU-hours of VTAB-1k x every image method x 1 seed: each method costs what its family's measured
run cost, with the test time scaled to each task's test size (config/config.yaml).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
import yaml
from common import REPO, apply, method_hparams, vit
from vitb_step import peak_tflops

#: One method of each family (category); `full` is the baseline's most expensive.
FAMILIES = {"baseline": "full", "partial": "bitfit", "addition": "adapter", "reparameterization": "lora",
            "side": "lst", "unified": "u-tuning"}

SIZES = {  # (arch, img size, train images, test images, epochs, batch, eval batch)
    "gpu": ("vit_base_patch16_224", 224, 1000, 21750, 100, 64, 1024),
    "cpu": ("vit_demo_patch4_32", 32, 40, 40, 2, 16, 64),
}


def _task(root: Path, train_images: int, test_images: int, image_size: int) -> Path:
    from vpeft.data.synthetic.vtab_mini import generate_task

    train800 = max(1, round(train_images * 0.8))
    sizes = {"train800": train800, "val200": max(1, train_images - train800), "test": test_images}
    generate_task("digits", root / "digits", seed=0, sizes=sizes, image_size=image_size)
    return root / "digits"


def _values(task_dir: Path, method: str, arch: str, img_size: int, epochs: int, batch: int, eval_batch: int,
            precision: str) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    backbone = {"name": f"{arch}-random", "arch": arch, "checkpoint": None, "input_size": img_size,
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic"}
    training = {**config["training"], "epochs": epochs, "batch_size": batch, "eval_batch_size": eval_batch,
                "precision": precision}
    return {"suite": "bench", "task": "digits", "method": method, "seed": 42, "task_dir": str(task_dir),
            "num_classes": 10, "backbone": backbone, "protocol": {**config["protocols"]["vtab1k"], "name": "vtab1k"},
            "method_hparams": method_hparams(method), "training": training, "pretrained": False, "layout": "vtab",
            "data": {}}


def train_flops_per_image(method: str, arch: str, img_size: int, device: torch.device) -> float:
    """Forward + backward FLOPs of one training image of `method` on `arch` (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = apply(vit(arch, img_size), method, img_size=img_size).model.to(device).train()
    images = torch.randn(2, 3, img_size, img_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(images).float().logsumexp(-1).sum().backward()
    return counter.get_total_flops() / 2


def _image_methods() -> dict[str, str]:
    from vpeft.methods import available_methods, get_method_class

    return {name: get_method_class(name).category for name in available_methods()}


def _vtab_test_sizes() -> dict[str, int]:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return {task: spec["sizes"]["test"] for task, spec in config["suites"]["vtab"]["tasks"].items()}


def run(device: str, *, size: str | None = None, methods: list[str] | None = None, test_images: int | None = None,
        epochs: int | None = None, precision: str = "auto", peak: float | None = None, threads: int = 1) -> dict:
    from vpeft.engine.build import TrainingConfig
    from vpeft.engine.train import run_training

    logging.getLogger("vpeft").setLevel(logging.WARNING)
    dev = torch.device(device)
    size = size or ("gpu" if dev.type == "cuda" else "cpu")
    arch, img_size, train_images, default_test, default_epochs, batch, eval_batch = SIZES[size]
    test_images, epochs = test_images or default_test, epochs or default_epochs
    families = {f: m for f, m in FAMILIES.items() if methods is None or m in methods}
    resolved = TrainingConfig(precision=precision).precision_on(dev)
    peak = peak or peak_tflops(dev, "bf16")
    out: dict = {"size": size, "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
                 else "cpu", "arch": arch, "img_size": img_size, "train_images": train_images,
                 "test_images": test_images, "epochs": epochs, "batch": batch, "eval_batch": eval_batch,
                 "precision": resolved, "peak_bf16_tflops": peak, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="vpeft-vtab1k-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        task_dir = _task(root, train_images, test_images, image_size=min(img_size, 64))
        out["task_generation_seconds"] = time.perf_counter() - start
        for family, method in families.items():
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            values = _values(task_dir, method, arch, img_size, epochs, batch, eval_batch, precision)
            start = time.perf_counter()
            m = run_training(values, root / method / "metrics.json", threads=threads, base_dir=REPO, device=device)
            wall = time.perf_counter() - start
            flops = train_flops_per_image(method, arch, img_size, dev)
            achieved = flops * m["train"]["images_per_second"] / 1e12
            out["runs"][method] = {
                "family": family, "wall_seconds": wall, "train_seconds": m["train"]["wall_seconds"],
                "eval_seconds": m["eval"]["wall_seconds"], "setup_seconds": wall - m["train"]["wall_seconds"]
                - m["eval"]["wall_seconds"], "train_images_per_second": m["train"]["images_per_second"],
                "eval_images_per_second": m["eval"]["num_images"] / max(m["eval"]["wall_seconds"], 1e-9),
                "train_gflops_per_image": flops / 1e9, "achieved_tflops": achieved,
                "mfu": achieved / peak if peak else None, "train_memory_mb": m["efficiency"]["train_memory_mb"],
                "train_memory_kind": m["efficiency"]["train_memory_kind"], "data_path": m["train"]["data_path"],
                "precision": m["train"]["precision"], "fused_attention": m["train"]["fused_attention"],
                "top1": m["metric"]["value"]}
    out["full_image_benchmark"] = extrapolate(out["runs"], test_images)
    return out


def extrapolate(runs: dict, measured_test_images: int) -> dict:
    """GPU-hours of VTAB-1k x every registered method x 1 seed: each method at its family's measured
    cost (the mean of the measured runs where its family was not measured); test time per image from
    the measured run, times each task's test size."""
    if not runs:
        return {}
    by_family = {r["family"]: r for r in runs.values()}

    def cost(r: dict, test_size: int) -> float:
        per_test_image = r["eval_seconds"] / measured_test_images
        return r["train_seconds"] + r["setup_seconds"] + per_test_image * test_size

    tasks = _vtab_test_sizes()
    methods = _image_methods()
    seconds = 0.0
    for category in methods.values():
        if category in by_family:
            seconds += sum(cost(by_family[category], n) for n in tasks.values())
        else:
            seconds += sum(cost(r, n) for r in runs.values() for n in tasks.values()) / len(runs)
    per_run = seconds / (len(tasks) * len(methods))
    return {"tasks": len(tasks), "methods": len(methods), "runs": len(tasks) * len(methods),
            "mean_seconds_per_run": per_run, "gpu_hours": seconds / 3600}
