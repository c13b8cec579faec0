"""Formula-driven supervised pretraining of the demo backbone (FractalDB-style).

No natural images and no downloads: the backbone learns to classify rendered IFS fractals
(Kataoka et al., ACCV 2020, "Pre-training without Natural Images"). The result is saved without its
head as safetensors, and loads through the same checkpoint path as the real backbones.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backbones import sha256_of
from ..io import atomic_write_bytes, atomic_write_json
from .build import seed_everything

log = logging.getLogger("vpeft.pretrain")


@dataclass
class PretrainConfig:
    arch: str = "vit_demo_patch4_32"
    seed: int = 0
    num_classes: int = 100
    images_per_class: int = 80
    image_size: int = 32
    epochs: int = 30
    warmup_epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    mean: float = 0.5
    std: float = 0.5


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Place each fractal (values in [0, 1], black = empty) at a random scale, position and flip, on a
    plain background whose colour is random for half of the images (black for the others)."""
    n, _, h, w = images.shape

    def rand(*shape):
        return torch.rand(*shape, generator=generator)

    mask = (images.amax(dim=1, keepdim=True) > 0).float()
    scale = 0.7 + 0.3 * rand(n)
    shift = (1 - scale)[:, None] * (2 * rand(n, 2) - 1)
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = -shift / scale[:, None]
    grid = F.affine_grid(theta, (n, 4, h, w), align_corners=False)
    placed = F.grid_sample(torch.cat([images, mask], 1), grid, align_corners=False)
    shape, alpha = placed[:, :3], placed[:, 3:].clamp(0, 1)
    background = rand(n, 3, 1, 1) * (rand(n, 1, 1, 1) < 0.5)
    return alpha * shape + (1 - alpha) * background


def pretrain_demo_backbone(out_path: str | Path, config: PretrainConfig | None = None, *, threads: int = 1) -> dict:
    """Render the fractal dataset, train `config.arch` on it, save the headless weights to `out_path`."""
    import timm
    from safetensors.torch import save

    from ..data.synthetic.fractal import render_fractal_dataset

    cfg = config or PretrainConfig()
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)

    start = time.perf_counter()
    images, labels = render_fractal_dataset(cfg.num_classes, cfg.images_per_class, seed=cfg.seed,
                                            image_size=cfg.image_size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(labels).long()
    log.info("rendered %d fractal images in %d classes in %.1fs", len(y), cfg.num_classes,
             time.perf_counter() - start)

    model = timm.create_model(cfg.arch, pretrained=False, num_classes=cfg.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    from timm.scheduler import CosineLRScheduler

    scheduler = CosineLRScheduler(optimizer, t_initial=cfg.epochs, warmup_t=cfg.warmup_epochs,
                                  warmup_lr_init=1e-6, lr_min=1e-5)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        scheduler.step(epoch)
        model.train()
        order = torch.randperm(len(y), generator=generator)
        t0 = time.perf_counter()
        loss_sum = correct = 0.0
        for i in range(0, len(y), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            batch = (_augment(x[idx], generator) - cfg.mean) / cfg.std
            logits = model(batch)
            loss = F.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(-1) == y[idx]).sum().item()
        entry = {"epoch": epoch + 1, "loss": loss_sum / len(y), "train_top1": correct / len(y),
                 "seconds": round(time.perf_counter() - t0, 2)}
        history.append(entry)
        log.info("pretrain epoch %d/%d  loss %.4f  top-1 %.3f  (%.1fs)", epoch + 1, cfg.epochs,
                 entry["loss"], entry["train_top1"], entry["seconds"])

    head = {n for n in model.state_dict() if n.startswith("head.")}
    state = {n: t.contiguous() for n, t in model.state_dict().items() if n not in head}
    recipe = json.dumps(asdict(cfg), sort_keys=True)
    atomic_write_bytes(out_path, save(state, metadata={"arch": cfg.arch, "recipe": recipe}))
    summary = {"checkpoint": str(out_path), "sha256": sha256_of(out_path), "config": asdict(cfg),
               "history": history, "wall_seconds": time.perf_counter() - start, "threads": threads}
    atomic_write_json(Path(str(out_path) + ".json"), summary)
    return summary
