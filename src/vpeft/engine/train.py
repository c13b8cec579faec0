"""Train and evaluate one run: one method on one task with one seed.

The run is described by a resolved dict (see `RunConfig`); the workflow builds it from the config,
tests build it by hand. The *final* model is evaluated on the protocol's eval split: nothing is ever
selected on it.
"""

from __future__ import annotations

import logging
import math
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..backbones import BackboneSpec, create_backbone
from ..data.transforms import build_transform
from ..data.vtab import VtabSplit, materialize
from ..io import atomic_write_json
from ..methods import apply_method, build_method
from ..metrics import top1_accuracy
from ..provenance import provenance

log = logging.getLogger("vpeft.train")

SCHEMA = "vpeft.run/1"


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss became NaN); the message says where."""


@dataclass
class TrainingConfig:
    epochs: int = 100
    warmup_epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_lr_init: float = 1e-6
    lr_min: float = 1e-5
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    train_aug: bool = False
    num_workers: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown training key(s) {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


@dataclass
class RunConfig:
    suite: str
    task: str
    method: str
    seed: int
    task_dir: str
    num_classes: int
    backbone: dict
    protocol: dict
    method_hparams: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    pretrained: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        return cls(**values)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # Linux reports ru_maxrss in KiB: the whole process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=False)


def _datasets(run: RunConfig, spec: BackboneSpec, tc: TrainingConfig):
    def transform(train: bool):
        return build_transform(spec.input_size, spec.mean, spec.std, spec.interpolation,
                               train_aug=train and tc.train_aug)

    train = VtabSplit(run.task_dir, run.protocol["train_split"], transform(True), run.num_classes)
    evaluation = VtabSplit(run.task_dir, run.protocol["eval_split"], transform(False), run.num_classes)
    if not tc.train_aug:
        train = materialize(train)  # deterministic input: decode once, not once per epoch
    return train, evaluation


@torch.no_grad()
def evaluate(model, loader, device) -> tuple[float, int]:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += top1_accuracy(logits, labels.to(device)) * labels.numel()
        total += labels.numel()
    return correct / total, total


def run_training(values: dict, metrics_path: str | Path, *, threads: int = 1, base_dir: str | Path = ".",
                 device: str | None = None) -> dict:
    """Train, evaluate, and write `metrics_path` atomically. Returns the metrics dict."""
    from timm.scheduler import CosineLRScheduler

    run = RunConfig.from_dict(values)
    tc = TrainingConfig.from_dict(run.training)
    torch.set_num_threads(max(1, int(threads)))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)
    seed_everything(run.seed)

    spec = BackboneSpec.from_config(run.backbone["name"], {k: v for k, v in run.backbone.items() if k != "name"})
    model, checkpoint_sha = create_backbone(spec, run.num_classes, pretrained=run.pretrained,
                                            drop_path_rate=tc.drop_path, base_dir=base_dir)
    method = build_method(run.method, run.method_hparams)
    applied = apply_method(model, method)
    counts = applied.parameter_counts()
    log.info("%s/%s/%s seed %d: method matched %d modules; trainable %d (+head %d)", run.suite, run.method,
             run.task, run.seed, len(applied.matched), counts["trainable"], counts["head"])
    model.to(dev)

    train_set, eval_set = _datasets(run, spec, tc)
    train_loader = _loader(train_set, tc.batch_size, True, run.seed, tc.num_workers)
    eval_loader = _loader(eval_set, tc.eval_batch_size, False, run.seed, tc.num_workers)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=tc.epochs, warmup_t=tc.warmup_epochs,
                                  warmup_lr_init=tc.warmup_lr_init, lr_min=tc.lr_min)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)

    history = []
    train_seconds = 0.0
    seen = 0
    for epoch in range(tc.epochs):
        scheduler.step(epoch)
        model.train()
        start = time.perf_counter()
        loss_sum = correct = count = 0.0
        for step, (images, labels) in enumerate(train_loader):
            images, labels = images.to(dev), labels.to(dev)
            logits = model(images)
            loss = criterion(logits, labels)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                                    f"({run.suite}/{run.method}/{run.task}, seed {run.seed})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * labels.numel()
            correct += top1_accuracy(logits.detach(), labels) * labels.numel()
            count += labels.numel()
        seconds = time.perf_counter() - start
        train_seconds += seconds
        seen += count
        entry = {"epoch": epoch + 1, "loss": loss_sum / count, "lr": optimizer.param_groups[0]["lr"],
                 "train_top1": correct / count, "seconds": round(seconds, 3)}
        history.append(entry)
        log.info("epoch %d/%d  loss %.4f  train top-1 %.3f  lr %.2e  %.0f img/s", epoch + 1, tc.epochs,
                 entry["loss"], entry["train_top1"], entry["lr"], count / max(seconds, 1e-9))

    # Reparameterisable methods are evaluated as the plain backbone with the update folded in.
    model = applied.merge_and_unload()
    start = time.perf_counter()
    accuracy, n_eval = evaluate(model, eval_loader, dev)
    eval_seconds = time.perf_counter() - start
    peak, peak_kind = _peak_memory_mb(dev)
    log.info("final model on %s: top-1 %.4f (%d images)", run.protocol["eval_split"], accuracy, n_eval)

    metrics = {
        "schema": SCHEMA,
        "status": "ok",
        "suite": run.suite, "task": run.task, "method": run.method, "seed": run.seed,
        "protocol": run.protocol,
        "metric": {"name": "top1", "value": accuracy},
        "params": {"trainable": counts["trainable"], "trainable_with_head": counts["trainable_with_head"],
                   "head": counts["head"], "backbone_total": counts["total"] - counts["head"]},
        "matched_modules": applied.matched,
        "train": {"epochs": tc.epochs, "images": int(seen), "images_per_second": seen / max(train_seconds, 1e-9),
                  "wall_seconds": train_seconds, "peak_memory_mb": peak, "peak_memory_kind": peak_kind,
                  "final_loss": history[-1]["loss"] if history else math.nan, "history": history},
        "eval": {"split": run.protocol["eval_split"], "num_images": n_eval, "wall_seconds": eval_seconds,
                 "merged": bool(method.mergeable)},
        "config": {**asdict(run), "training": asdict(tc), "method_hparams": method.config.to_dict(),
                   "checkpoint_sha256": checkpoint_sha},
        "provenance": {**provenance(threads), "device": str(dev)},
    }
    atomic_write_json(metrics_path, metrics)
    return metrics
