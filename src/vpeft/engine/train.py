"""Train and evaluate one run: one method on one task with one seed.

The run is described by a resolved dict (see `RunConfig`); the workflow builds it from the config,
tests build it by hand. The *final* model is evaluated on the protocol's eval split: nothing is ever
selected on it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..artifacts import save_trained_tensors
from ..backbones import BackboneSpec, create_backbone
from ..data.layouts import get_layout
from ..io import atomic_write_json
from ..logs import eta
from ..methods import apply_method, build_method
from ..metrics import top1_accuracy
from ..provenance import provenance
from ..runs import CHECKPOINT_DIR, FAILURE_RECORD, RUN_SCHEMA, TRAINED_TENSORS
from .feature_cache import MODES as FEATURE_CACHE_MODES
from .feature_cache import CacheInfo, FeatureCache, IndexDataset, build_cache, cache_keys, plan_cache
from .optim import OPTIMIZERS, build_optimizer
from .selection import compute_selection, load_selection, selection_digest

log = logging.getLogger("vpeft.train")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}

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
    weight_decay_1d: bool = True
    optimizer: str = "adamw"              # adamw | sgd (with `momentum`)
    momentum: float = 0.9                 # SGD only
    lr_reference_batch: int | None = None  # set: the peak lr is lr x batch_size / lr_reference_batch
    # Speed knobs: none of them changes what is computed, except precision and compile (numerics).
    feature_cache: str = "auto"           # auto: cache the frozen prefix when that is exact; off
    feature_cache_memory_mb: float = 4096  # larger caches need feature_cache_dir (or are not built)
    feature_cache_dir: str | None = None  # keep features on disk, keyed, reused across runs
    precision: str = "fp32"               # fp32 | bf16 (autocast, on CPU too)
    compile: bool = False                 # torch.compile the training forward
    compile_backend: str = "inductor"     # torch.compile backend (aot_eager: no code generation)
    pin_memory: bool = False              # pinned host memory for the copy to a GPU (no effect on CPU)

    def __post_init__(self) -> None:
        # YAML 1.1 reads a bare `off` as false (and `on` as true).
        if isinstance(self.feature_cache, bool):
            self.feature_cache = "auto" if self.feature_cache else "off"
        if self.feature_cache not in FEATURE_CACHE_MODES:
            raise ValueError(f"training.feature_cache must be one of {FEATURE_CACHE_MODES}, got {self.feature_cache!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"training.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
        if not self.feature_cache_memory_mb >= 0:
            raise ValueError(f"training.feature_cache_memory_mb must be >= 0, got {self.feature_cache_memory_mb!r}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainingConfig:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown training key(s) {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


#: Training keys that cannot change a run's result (the cache is exact, pinning only moves bytes):
#: left out of the run fingerprint, so a checkpoint resumes whatever they are set to.
RESULT_NEUTRAL_KEYS = ("feature_cache", "feature_cache_memory_mb", "feature_cache_dir", "pin_memory")


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
    layout: str = "vtab"
    data: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
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


def _datasets(run: RunConfig, spec: BackboneSpec, tc: TrainingConfig):
    layout = get_layout(run.layout)
    return layout.train_dataset(run, spec, tc), layout.eval_dataset(run, spec, tc)


def autocast_context(device: torch.device, precision: str):
    """A factory of the precision context of forward passes (bf16 autocast works on CPU too)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model, loader, device, *, views: int | None = None, autocast=None) -> tuple[float, int]:
    """Top-1 accuracy of `model` over `loader`.

    Multi-view evaluation: when the dataset says `views = V > 1` (or `views` is given), every input
    batch is shaped (B, V, ...); the model sees all B*V views and each example's prediction is the
    argmax of its softmax probabilities averaged over its V views (clips x crops in video).
    """
    model.eval()
    views = int(views if views is not None else getattr(loader.dataset, "views", 1) or 1)
    autocast = autocast or autocast_context(torch.device(device), "fp32")
    correct = total = 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        if views > 1:
            if inputs.ndim < 2 or inputs.shape[1] != views:
                raise TrainingError(f"evaluation dataset declares views={views} but yields a batch of shape "
                                    f"{tuple(inputs.shape)}; expected (batch, {views}, ...)")
            with autocast():
                logits = model(inputs.flatten(0, 1))
            scores = logits.float().softmax(dim=-1).view(inputs.shape[0], views, -1).mean(dim=1)
        else:
            with autocast():
                scores = model(inputs)
        correct += top1_accuracy(scores, labels) * labels.numel()
        total += labels.numel()
    return correct / total, total


def run_fingerprint(values: dict) -> str:
    """Identity of a run's settings: a checkpoint is only resumed by the run that wrote it."""
    if isinstance(values.get("training"), dict):
        values = {**values, "training": {k: v for k, v in values["training"].items()
                                         if k not in RESULT_NEUTRAL_KEYS}}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def _save_checkpoint(folder: Path, state: dict) -> None:
    """Write the training state atomically: a kill during the write leaves the previous one intact."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.pt.tmp"
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / "state.pt")


def _load_checkpoint(folder: Path, fingerprint: str) -> dict | None:
    path = folder / "state.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file is never trusted
        log.warning("ignoring unreadable checkpoint %s (%s); starting from scratch", path, err)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("checkpoint %s belongs to other settings; starting from scratch", path)
        return None
    return state


def parameter_groups(model: torch.nn.Module, tc: TrainingConfig) -> list[dict]:
    """Trainable tensors for the optimiser. V-PETL decays every tensor; with `weight_decay_1d: false` biases,
    norm and scale vectors (1-D tensors) are exempt, as in timm and SSF's official recipe."""
    params = [p for p in model.parameters() if p.requires_grad]
    if tc.weight_decay_1d:
        return [{"params": params}]
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def with_searched_hparams(values: dict, search_result: str | Path) -> dict:
    """The run's settings with the hyper-parameters found by a search stage (`{"hparams": {...}}`)
    laid over the configured ones."""
    found = json.loads(Path(search_result).read_text())
    if not isinstance(found, dict) or not isinstance(found.get("hparams"), dict):
        raise TrainingError(f"{search_result}: expected a JSON object with an 'hparams' object")
    return {**values, "method_hparams": {**values.get("method_hparams", {}), **found["hparams"]}}


def build_run_model(run: RunConfig, tc: TrainingConfig, base_dir) -> tuple[BackboneSpec, torch.nn.Module, str]:
    """The run's backbone with a fresh head: call right after `seed_everything(run.seed)` so the head
    init is the same in every stage of the run (selection, training)."""
    spec = BackboneSpec.from_config(run.backbone["name"], {k: v for k, v in run.backbone.items() if k != "name"})
    model, checkpoint_sha = create_backbone(spec, run.num_classes, pretrained=run.pretrained,
                                            drop_path_rate=tc.drop_path, base_dir=base_dir)
    return spec, model, checkpoint_sha


def run_training(values: dict, metrics_path: str | Path, *, threads: int = 1, base_dir: str | Path = ".",
                 device: str | None = None, selection_path: str | Path | None = None, on_epoch_end=None) -> dict:
    """Train, evaluate, and write `metrics_path` atomically. Returns the metrics dict.

    Every epoch the training state is saved to `checkpoint/` beside `metrics_path` (not a declared
    output, so Snakemake keeps it); a rerun with the same settings resumes from the last complete
    epoch and ends with the same metrics as an uninterrupted run. If the run raises, a failure
    record with the error is left beside `metrics_path` for the report, and the error propagates.

    Methods with a selection stage read it from `selection_path` (the workflow's cached
    `select_parameters` output) or, without one, compute it in-process first: same result either way.

    `on_epoch_end(epoch, score)`, if given, is called after each epoch's checkpoint; `score()` returns
    the current (unmerged) model's top-1 on the protocol's eval split (a tuner's per-epoch report).
    """
    metrics_path = Path(metrics_path)
    failure = metrics_path.with_name(FAILURE_RECORD)
    try:
        metrics = _train_and_evaluate(values, metrics_path, threads, base_dir, device, selection_path, on_epoch_end)
    except Exception as err:
        atomic_write_json(failure, {
            "schema": RUN_SCHEMA, "status": "failed",
            **{k: values.get(k) for k in ("suite", "task", "method", "seed")},
            "error": f"{type(err).__name__}: {err}",
        })
        raise
    failure.unlink(missing_ok=True)
    return metrics


def _train_and_evaluate(values: dict, metrics_path: Path, threads: int, base_dir, device, selection_path,
                        on_epoch_end=None) -> dict:
    from timm.scheduler import CosineLRScheduler

    run = RunConfig.from_dict(values)
    tc = TrainingConfig.from_dict(run.training)
    torch.set_num_threads(max(1, int(threads)))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)
    seed_everything(run.seed)

    spec, model, checkpoint_sha = build_run_model(run, tc, base_dir)
    method = build_method(run.method, run.method_hparams)
    selection, selection_sha = None, None
    if method.needs_selection:
        if selection_path is not None:
            selection, selection_sha = load_selection(selection_path)
        else:
            selection = compute_selection(method, model, run, spec, tc)
    applied = apply_method(model, method, selection)
    counts = applied.parameter_counts()
    log.info("%s/%s/%s seed %d: method matched %d modules; trainable %d (+head %d)", run.suite, run.method,
             run.task, run.seed, len(applied.matched), counts["trainable"], counts["head"])
    model.to(dev)

    autocast = autocast_context(dev, tc.precision)
    pin = bool(tc.pin_memory and dev.type == "cuda")
    train_set, eval_set = _datasets(run, spec, tc)
    cache, cache_info = _feature_cache(model, method, run, spec, tc, train_set, dev, autocast, checkpoint_sha,
                                       base_dir, pin)
    shuffle_rng = torch.Generator().manual_seed(run.seed)
    if cache is not None:
        # Same sampler, same generator, same length: the loader draws the same index order as it
        # would over the images, and the step looks the features up by index.
        train_loader = DataLoader(IndexDataset(cache.labels), batch_size=tc.batch_size, shuffle=True,
                                  generator=shuffle_rng)
        forward = functools.partial(cache.forward, model)
    else:
        train_loader = DataLoader(train_set, batch_size=tc.batch_size, shuffle=True, generator=shuffle_rng,
                                  num_workers=tc.num_workers, pin_memory=pin)
        forward = model
    if tc.compile:
        forward = torch.compile(forward, backend=tc.compile_backend)
    views = int(getattr(eval_set, "views", 1) or 1)
    eval_loader = DataLoader(eval_set, batch_size=max(1, tc.eval_batch_size // views), shuffle=False,
                             num_workers=tc.num_workers, pin_memory=pin)

    optimizer = build_optimizer(parameter_groups(model, tc), tc)
    scheduler = CosineLRScheduler(optimizer, t_initial=tc.epochs, warmup_t=tc.warmup_epochs,
                                  warmup_lr_init=tc.warmup_lr_init, lr_min=tc.lr_min)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)

    checkpoint_dir = metrics_path.parent / CHECKPOINT_DIR
    fingerprint = run_fingerprint({**values, "selection": selection_digest(selection)})
    history: list[dict] = []
    train_seconds = 0.0
    seen = 0
    start_epoch = 0
    state = _load_checkpoint(checkpoint_dir, fingerprint)
    if state is not None:
        trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
        if trainable_names != set(state["trainable"]):
            raise TrainingError(f"checkpoint in {checkpoint_dir} does not hold this run's trainable tensors; "
                                f"delete the folder to restart the run")
        model.load_state_dict(state["trainable"], strict=False)  # frozen tensors come from the backbone
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        shuffle_rng.set_state(state["shuffle_rng"])
        random.setstate(_as_random_state(state["python_rng"]))
        history, train_seconds, seen, start_epoch = (state["history"], state["train_seconds"], state["seen"],
                                                     state["epoch"])
        log.info("resuming from the checkpoint of epoch %d/%d in %s", start_epoch, tc.epochs, checkpoint_dir)
    train_seconds += cache_info.build_seconds  # computing the cache is training time

    for epoch in range(start_epoch, tc.epochs):
        scheduler.step(epoch)
        model.train()
        start = time.perf_counter()
        loss_sum = correct = count = 0.0
        for step, (inputs, labels) in enumerate(train_loader):
            labels = labels.to(dev, non_blocking=pin)
            if cache is None:
                inputs = inputs.to(dev, non_blocking=pin)
            with autocast():
                logits = forward(inputs)
            loss = criterion(logits.float(), labels)
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
        log.info("epoch %d/%d  loss %.4f  train top-1 %.3f  lr %.2e  %.0f img/s  %s", epoch + 1, tc.epochs,
                 entry["loss"], entry["train_top1"], entry["lr"], count / max(seconds, 1e-9),
                 eta(epoch + 1, tc.epochs, train_seconds))
        _save_checkpoint(checkpoint_dir, {
            "fingerprint": fingerprint, "epoch": epoch + 1, "history": history,
            "train_seconds": train_seconds, "seen": seen,
            "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "shuffle_rng": shuffle_rng.get_state(), "python_rng": list(_flatten_random_state(random.getstate())),
        })
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, lambda: evaluate(model, eval_loader, dev, views=views, autocast=autocast)[0])

    cache = forward = train_loader = None  # release the stored features before evaluation
    # Kept before merging (the method's own tensors) and before metrics.json (the "done" marker).
    save_trained_tensors(metrics_path.parent / TRAINED_TENSORS, model, method,
                         run={**asdict(run), "training": asdict(tc)}, checkpoint_sha=checkpoint_sha,
                         selection=selection, fingerprint=fingerprint)
    # Reparameterisable methods are evaluated as the plain backbone with the update folded in.
    model = applied.merge_and_unload()
    start = time.perf_counter()
    accuracy, n_eval = evaluate(model, eval_loader, dev, views=views, autocast=autocast)
    eval_seconds = time.perf_counter() - start
    peak, peak_kind = _peak_memory_mb(dev)
    log.info("final model on %s: top-1 %.4f (%d images)", run.protocol["eval_split"], accuracy, n_eval)

    metrics = {
        "schema": RUN_SCHEMA,
        "status": "ok",
        "suite": run.suite, "task": run.task, "method": run.method, "seed": run.seed,
        "protocol": run.protocol,
        "metric": {"name": "top1", "value": accuracy},
        "params": {"trainable": counts["trainable"], "trainable_with_head": counts["trainable_with_head"],
                   "head": counts["head"], "backbone_total": counts["total"] - counts["head"]},
        "matched_modules": applied.matched,
        "train": {"epochs": tc.epochs, "images": int(seen), "images_per_second": seen / max(train_seconds, 1e-9),
                  "wall_seconds": train_seconds, "peak_memory_mb": peak, "peak_memory_kind": peak_kind,
                  "resumed_from_epoch": start_epoch or None,
                  "final_loss": history[-1]["loss"] if history else math.nan,
                  "feature_cache": cache_info.to_dict(), "precision": tc.precision, "compiled": bool(tc.compile),
                  "fused_attention": _fused_attention(model), "history": history},
        "eval": {"split": run.protocol["eval_split"], "num_images": n_eval, "wall_seconds": eval_seconds,
                 "merged": bool(method.mergeable), "views": views},
        "config": {**asdict(run), "training": asdict(tc), "method_hparams": method.config.to_dict(),
                   "checkpoint_sha256": checkpoint_sha, "fingerprint": fingerprint,
                   "selection_sha256": selection_sha},
        "provenance": {**provenance(threads), "device": str(dev)},
    }
    atomic_write_json(metrics_path, metrics)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the run is complete: nothing left to resume
    return metrics


def _feature_cache(model, method, run: RunConfig, spec: BackboneSpec, tc: TrainingConfig, train_set, dev,
                   autocast, checkpoint_sha, base_dir, pin) -> tuple[FeatureCache | None, CacheInfo]:
    """Plan and build the frozen-prefix cache (see `feature_cache`); (None, why not) when off."""
    plan = plan_cache(model, method, tc.feature_cache, tc.train_aug, train_set)
    if not plan.used:
        log.info("feature cache off: %s", plan.reason)
        return None, CacheInfo(used=False, reason=plan.reason, declared_prefix_blocks=plan.declared_blocks)
    folder = Path(base_dir, tc.feature_cache_dir) if tc.feature_cache_dir else None
    built = build_cache(
        model, plan, train_set, device=dev, autocast=autocast, batch_size=tc.eval_batch_size,
        memory_mb=tc.feature_cache_memory_mb, folder=folder, non_blocking=pin,
        key_fn=lambda digest: cache_keys(model, plan, digest, arch=spec.arch, checkpoint_sha=checkpoint_sha,
                                         precision=tc.precision, device_type=dev.type))
    if isinstance(built, FeatureCache):
        return built, built.info
    log.info("feature cache off: %s", built.reason)
    return None, built


def _fused_attention(model) -> bool | None:
    """Whether every timm attention module takes the fused SDPA path (None: the model has none)."""
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    return all(flags) if flags else None


def _flatten_random_state(state) -> list:
    """Python's random state as a flat list of ints (torch.load(weights_only=True) accepts it)."""
    version, internal, gauss = state
    return [version, *internal, -1 if gauss is None else gauss]


def _as_random_state(flat: list):
    version, *internal, gauss = flat
    return version, tuple(internal), None if gauss == -1 else gauss
