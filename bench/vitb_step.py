"""One ViT-B/16 (224 px) full fine-tuning training step: images/s and, on a GPU, model FLOPs
utilisation (FLOPs counted by torch's FlopCounterMode over forward + backward, divided by the
step time and the device's dense peak for the precision)."""

from __future__ import annotations

import contextlib
import time

import torch
from common import sync, train_step_fn, vit

# Dense (no sparsity) peak TFLOP/s by device-name substring: bf16 tensor cores, fp32 = TF32 tensor cores.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp32": 494.7},
    "H100": {"bf16": 989.0, "fp32": 494.7},   # SXM; the PCIe card is lower
    "A100": {"bf16": 312.0, "fp32": 156.0},
    "L40S": {"bf16": 362.1, "fp32": 183.0},
    "L4": {"bf16": 121.0, "fp32": 60.0},
    "A10": {"bf16": 125.0, "fp32": 62.5},
}


def peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[precision]
    return None


def run(batch: int, steps: int, precision: str, compile_: bool, device: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device(device)
    if dev.type == "cuda" and precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True  # what "fp32" training means on tensor cores
    model = vit("vit_base_patch16_224", 224, num_classes=1000).to(dev)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, generator=g).to(dev)
    labels = (torch.arange(batch) % 1000).to(dev)
    autocast = ((lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)) if precision == "bf16"
                else contextlib.nullcontext)
    target = torch.compile(model) if compile_ else model
    step = train_step_fn(target, images, labels, autocast)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()  # warm-up (compilation, allocator)
    sync(dev)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(dev)
        times.append(time.perf_counter() - start)
    times.sort()
    seconds = times[len(times) // 2]
    achieved = flops / seconds / 1e12
    peak = peak_tflops(dev, precision)
    return {"batch": batch, "precision": precision, "compiled": compile_, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "seconds_per_step": seconds, "images_per_second": batch / seconds,
            "flops_per_step": flops, "gflops_per_image": flops / batch / 1e9, "achieved_tflops": achieved,
            "peak_tflops": peak, "mfu": achieved / peak if peak else None,
            "fused_attention": all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))}
