"""The optimiser of a run, from its training settings: AdamW (the image recipes of V-PETL) or SGD with
momentum (V-PETL's video recipe), with the learning rate optionally scaled by the batch size."""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "sgd")


def peak_lr(tc, world_size: int = 1) -> float:
    """`lr`, or with `lr_reference_batch` set, `lr x total batch / lr_reference_batch` (the linear
    scaling rule: V-PETL's video recipe is base lr 0.1 at batch 256)."""
    if tc.lr_reference_batch is None:
        return tc.lr
    return tc.lr * tc.batch_size * world_size / tc.lr_reference_batch


def build_optimizer(param_groups: list[dict], tc, device: torch.device | None = None,
                    world_size: int = 1) -> torch.optim.Optimizer:
    """One kernel per step on a GPU (`fused`); torch's default implementation elsewhere."""
    lr = peak_lr(tc, world_size)
    fused = True if device is not None and device.type == "cuda" else None
    if tc.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay, fused=fused)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=tc.weight_decay, fused=fused)
