"""Train and evaluate one run: one method on one task with one seed.

The run is described by a resolved dict (see `RunConfig`); the workflow builds it from the config,
tests build it by hand. The *final* model is evaluated on the protocol's eval split: nothing is ever
selected on it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..artifacts import save_trained_tensors
from ..io import atomic_write_json
from ..logs import eta
from ..methods import apply_method, build_method
from ..metrics import top1_accuracy
from ..provenance import provenance
from ..runs import CHECKPOINT_DIR, RUN_SCHEMA, TRAINED_TENSORS, failure_recorded
from .build import (  # noqa: F401  (RunConfig ... parameter_groups: also imported from here)
    PRECISIONS,
    RESULT_NEUTRAL_KEYS,
    RunConfig,
    TrainingConfig,
    autocast_context,
    build_run_model,
    optimizer_and_schedule,
    parameter_groups,
    run_datasets,
    run_fingerprint,
    seed_everything,
    set_up_torch,
)
from ..data.layouts import get_layout
from .ddp import ShardedBatches, ShardedBatchSampler, World, eval_shard, launch
from .device_data import DeviceBatches
from .feature_cache import CacheInfo, FeatureCache, IndexDataset, build_cache, cache_keys, plan_cache
from .selection import compute_selection, load_selection, selection_digest

log = logging.getLogger("vpeft.train")

_datasets = run_datasets  # the name other modules and tests know

class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss became NaN); the message says where."""


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """The process's peak (whole run, torch's own footprint included); the method's own training memory
    is `efficiency.train_memory_mb`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # Linux reports ru_maxrss in KiB: the whole process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


class _EfficiencyProbe:
    """The run's efficiency record (vpeft.efficiency): training memory and throughput of the trained
    (unmerged) model on a copy, latency at batch 1 unmerged and merged, at the evaluation batch from the
    evaluation itself (merged) and, for mergeable methods with layers, unmerged; the trained-tensor size.
    Random inputs of the evaluation split's shape: the cost does not depend on the pixel values."""

    def __init__(self, model, method, tc: TrainingConfig, dev, autocast, criterion, eval_set, views: int):
        from ..efficiency import latency_ms, measure_training
        from ..methods import method_layers
        from .optim import build_optimizer

        self.autocast, self.dev = autocast, dev
        sample = eval_set[0][0]
        sample = sample[0] if views > 1 else sample  # one view: what a training step sees per example
        g = torch.Generator().manual_seed(0)
        self.one = torch.randn(1, *sample.shape, generator=g).to(dev)
        self.eval_batch = max(1, tc.eval_batch_size // views) * views
        with torch.no_grad():
            model.eval()
            with autocast():
                classes = model(self.one).shape[-1]
        inputs = torch.randn(tc.batch_size, *sample.shape, generator=g).to(dev)
        labels = (torch.arange(tc.batch_size) % classes).to(dev)
        self.record = measure_training(model, lambda m: build_optimizer(parameter_groups(m, tc), tc, dev),
                                       inputs, labels, criterion=criterion, autocast=autocast)
        self.latency = {"unmerged": {"batch_1": latency_ms(model, self.one, autocast=autocast)}}
        if method.mergeable and method_layers(model):  # merging changes what runs: time both forms
            eval_inputs = torch.randn(self.eval_batch, *sample.shape, generator=g).to(dev)
            # one call, warmed up by the batch-1 calls: a second would double the cost of the figure
            self.latency["unmerged"]["batch_eval"] = latency_ms(model, eval_inputs, autocast=autocast, calls=1,
                                                                warmup=0)
        self.mergeable = bool(method.mergeable)

    def finish(self, merged_model, batch_seconds: list, tensors_path: Path) -> dict:
        from ..efficiency import device_name, file_bytes, latency_ms

        full = [sec for n, sec in batch_seconds if n == self.eval_batch]
        # the evaluation's full batches after its first (warm-up); its first alone when it had one full
        # batch (an extra call would cost as much again); one extra call when it had none
        timed = full[1:] or full[:1] or [latency_ms(merged_model, torch.randn(self.eval_batch, *self.one.shape[1:],
                                                                   generator=torch.Generator().manual_seed(1)
                                                                   ).to(self.dev),
                                        autocast=self.autocast, calls=1, warmup=0) / 1000]
        merged = {"batch_eval": 1000 * sorted(timed)[len(timed) // 2]}
        if self.mergeable:
            merged["batch_1"] = latency_ms(merged_model, self.one, autocast=self.autocast)
        else:  # nothing was merged: the batch-1 figure is the one model's
            merged["batch_1"] = self.latency.pop("unmerged")["batch_1"]
        return {"device": device_name(self.dev), **self.record, "eval_batch": self.eval_batch,
                "latency_ms": {"merged": merged, **self.latency},
                "trained_tensors_bytes": file_bytes(tensors_path)}


def evaluate(model, loader, device, *, views: int | None = None, autocast=None) -> tuple[float, int]:
    """Top-1 accuracy of `model` over `loader`.

    Multi-view evaluation: when the dataset says `views = V > 1` (or `views` is given), every input
    batch is shaped (B, V, ...); the model sees all B*V views and each example's prediction is the
    argmax of its softmax probabilities averaged over its V views (clips x crops in video).
    """
    correct, total = evaluate_counts(model, loader, device, views=views, autocast=autocast)
    return correct / total, total


@torch.no_grad()
def evaluate_counts(model, loader, device, *, views: int | None = None, autocast=None,
                    batch_seconds: list | None = None) -> tuple[int, int]:
    """(correct, total) of `evaluate`, as integers: shards of a split add up exactly. `batch_seconds`,
    if given, receives (inputs the model saw, seconds of its forward) per batch (the latency record)."""
    model.eval()
    sync = torch.device(device).type == "cuda" and batch_seconds is not None
    views = int(views if views is not None else getattr(loader.dataset, "views", 1) or 1)
    autocast = autocast or autocast_context(torch.device(device), "fp32")
    correct = total = 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        if sync:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
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
        if batch_seconds is not None:
            if sync:
                torch.cuda.synchronize(device)
            batch_seconds.append((int(labels.numel()) * views, time.perf_counter() - start))
        correct += round(top1_accuracy(scores, labels) * labels.numel())
        total += labels.numel()
    return correct, total


def _save_checkpoint(folder: Path, state: dict) -> None:
    """Write the training state atomically: a kill during the write leaves the previous one intact."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.pt.tmp"
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / "state.pt")
    except BaseException:  # a failed write (a full disk) must not keep the space it took
        tmp.unlink(missing_ok=True)
        raise


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
    if "buffers" not in state:  # written before checkpoints kept the buffers: resuming would reset them
        log.warning("checkpoint %s holds no buffers (an older vpeft wrote it); starting from scratch", path)
        return None
    return state


def with_searched_hparams(values: dict, search_result: str | Path) -> dict:
    """The run's settings with the hyper-parameters found by a search stage (`{"hparams": {...}}`)
    laid over the configured ones."""
    found = json.loads(Path(search_result).read_text())
    if not isinstance(found, dict) or not isinstance(found.get("hparams"), dict):
        raise TrainingError(f"{search_result}: expected a JSON object with an 'hparams' object")
    return {**values, "method_hparams": {**values.get("method_hparams", {}), **found["hparams"]}}


def run_training(values: dict, metrics_path: str | Path, *, threads: int = 1, base_dir: str | Path = ".",
                 device: str | None = None, selection_path: str | Path | None = None, on_epoch_end=None,
                 processes: int = 1, backend: str = "auto", find_unused_parameters: bool = False) -> dict:
    """Train, evaluate, and write `metrics_path` atomically. Returns the metrics dict.

    Every epoch the training state is saved to `checkpoint/` beside `metrics_path` (not a declared
    output, so Snakemake keeps it); a rerun with the same settings resumes from the last complete
    epoch and ends with the same metrics as an uninterrupted run. If the run raises, a failure
    record with the error is left beside `metrics_path` for the report, and the error propagates.

    Methods with a selection stage read it from `selection_path` (the workflow's cached
    `select_parameters` output) or, without one, compute it in-process first: same result either way.

    `on_epoch_end(epoch, score)`, if given, is called after each epoch's checkpoint; `score()` returns
    the current (unmerged) model's top-1 on the protocol's eval split (a tuner's per-epoch report).

    `processes > 1`: data-parallel training on one node under torchrun (`vpeft.engine.ddp.launch`),
    `backend` nccl (GPUs) or gloo (CPUs; auto: nccl when CUDA is there); the job's threads are shared
    out over the ranks. `find_unused_parameters` is DDP's, for methods that leave trainable tensors
    out of some forward passes.
    """
    if processes > 1:
        if on_epoch_end is not None or device is not None:
            raise ValueError("a data-parallel run takes neither on_epoch_end nor device (each rank uses its GPU)")
        return launch(values, metrics_path, processes=processes, backend=backend, threads=threads, base_dir=base_dir,
                      selection_path=selection_path, find_unused_parameters=find_unused_parameters)
    metrics_path = Path(metrics_path)
    with failure_recorded(metrics_path, values):
        return _train_and_evaluate(values, metrics_path, threads, base_dir, device, selection_path, on_epoch_end)


def train_epoch(model, forward, batches, optimizer, criterion, *, device, autocast, epoch: int,
                non_blocking: bool = False, move_inputs: bool = True, where=lambda: "",
                host_each_step: bool | None = None, world: World = World(), global_size=None,
                after_step=None) -> dict:
    """One epoch of training: every batch of `batches` through `forward` (the model, or a cached or
    compiled form of it), cross-entropy, backward, optimizer step. Returns the epoch's mean loss,
    training top-1, image count and seconds. `epoch` (1-based) and `where()` name the place of a
    non-finite loss in its error; `move_inputs=False` leaves inputs as they come (cache indices,
    batches already on the device).

    On a GPU the per-step loss and hit count stay on the device and are read back once per epoch
    (a host sync per step would stall the GPU); the sums, and the step a non-finite loss names, are
    the same as on a CPU, which reads them step by step (`host_each_step` overrides the choice).

    Data-parallel (`world.size` N > 1, `batches` this rank's `ShardedBatches`, `forward` DDP-wrapped,
    `global_size(step)` the size of the global batch): each rank backpropagates its share's summed loss
    x N / (global batch size), so DDP's mean over the ranks is the gradient of the global batch's mean
    loss; the returned sums are over all ranks. `after_step()`, if given, runs after every optimiser step
    (the method's step schedule, `PeftMethod.begin_training`)."""
    model.train()
    if host_each_step is None:
        host_each_step = torch.device(device).type != "cuda"
    start = time.perf_counter()
    loss_sum = correct = count = 0.0
    on_device: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def add(step: int, loss: float, hits: int, n: int) -> None:
        nonlocal loss_sum, correct, count
        if not math.isfinite(loss):
            raise TrainingError(f"loss is {loss} at epoch {epoch}, step {step + 1} ({where()})")
        loss_sum += loss * n
        correct += hits / n * n  # as top1_accuracy(...) * n
        count += n

    for step, (inputs, labels) in enumerate(batches):
        labels = labels.to(device, non_blocking=non_blocking)
        if move_inputs:
            inputs = inputs.to(device, non_blocking=non_blocking)
        with autocast():
            logits = forward(inputs)
        if world.distributed:
            summed = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum",
                                                       label_smoothing=criterion.label_smoothing)
            to_backward = summed * (world.size / global_size(step))
            loss = summed / max(labels.numel(), 1)
        else:
            loss = to_backward = criterion(logits.float(), labels)
        if host_each_step and not torch.isfinite(loss):
            add(step, loss.item(), 0, labels.numel())  # raises
        optimizer.zero_grad(set_to_none=True)
        to_backward.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        hits = (logits.detach().argmax(dim=1) == labels).sum()
        if host_each_step:
            add(step, loss.item(), hits.item(), labels.numel())
        else:
            on_device.append((loss.detach(), hits, labels.numel()))
    if on_device:
        losses = torch.stack([x[0] for x in on_device]).tolist()
        hit_counts = torch.stack([x[1] for x in on_device]).tolist()
        for step, (loss, hits, (_, _, n)) in enumerate(zip(losses, hit_counts, on_device)):
            add(step, loss, hits, n)
    if world.distributed:
        loss_sum, correct, count = world.sum(loss_sum, correct, count)
    return {"loss": loss_sum / count, "train_top1": correct / count, "images": count,
            "seconds": time.perf_counter() - start}


def _train_and_evaluate(values: dict, metrics_path: Path, threads: int, base_dir, device, selection_path,
                        on_epoch_end=None, *, world: World = World(), find_unused_parameters: bool = False) -> dict:
    """The run in this process; under DDP (`world`, see vpeft.engine.ddp) one rank of it: rank 0 alone
    writes checkpoints, trained tensors and metrics.json, every rank loads the checkpoint to resume."""
    run = RunConfig.from_dict(values)
    tc = TrainingConfig.from_dict(run.training)
    dev = set_up_torch(threads, device, compile=tc.compile)
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
    if world.rank > 0:  # rank 0's model is broadcast by DDP; other ranks draw their own dropout/augmentation
        seed_everything(run.seed + 1_000_003 * world.rank)

    precision = tc.precision_on(dev)
    autocast = autocast_context(dev, precision)
    pin = bool(tc.pin_memory and dev.type == "cuda")
    layout = get_layout(run.layout)
    workers = tc.loader_workers_on(dev, threads)
    on_device = _uint8_split(layout, run, spec, tc, dev)
    if on_device is not None and not on_device.augment:
        train_set = on_device.normalized()  # what the layout's loader path holds, bit for bit
    else:
        train_set = layout.train_dataset(run, spec, tc)
    eval_set = layout.eval_dataset(run, spec, tc)
    if world.distributed:  # the cache's forward bypasses the DDP wrapper, which must see every step
        cache, cache_info = None, CacheInfo(used=False, reason="off in data-parallel runs")
    else:
        cache, cache_info = _feature_cache(model, method, run, spec, tc, train_set, dev, autocast, checkpoint_sha,
                                           base_dir, pin, precision)
    shuffle_rng = torch.Generator().manual_seed(run.seed)
    move_inputs, global_size = False, None
    if cache is not None:
        # Same sampler, same generator, same length: the loader draws the same index order as it
        # would over the images, and the step looks the features up by index.
        train_batches = DataLoader(IndexDataset(cache.labels), batch_size=tc.batch_size, shuffle=True,
                                   generator=shuffle_rng)
        forward, data_path = functools.partial(cache.forward, model), "feature-cache"
    elif on_device is not None:
        train_batches = DeviceBatches(on_device, dev, tc.batch_size, shuffle_rng)
        if world.distributed:
            train_batches.order = ShardedBatches(train_batches.order, world, len(on_device.labels), tc.batch_size)
            global_size = train_batches.order.global_size
        forward, data_path = model, "device"
    elif world.distributed:  # this rank's share of the batches one process would draw
        sampler = ShardedBatchSampler(len(train_set), tc.batch_size, shuffle_rng, world)
        train_batches = DataLoader(train_set, batch_sampler=sampler, num_workers=workers, pin_memory=pin,
                                   persistent_workers=workers > 0)
        forward, data_path, move_inputs, global_size = model, "loader", True, sampler.global_size
    else:
        train_batches = DataLoader(train_set, batch_size=tc.batch_size, shuffle=True, generator=shuffle_rng,
                                   num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
        forward, data_path, move_inputs = model, "loader", True
    on_device = train_set = None
    if world.distributed:  # gradients of the trainable tensors all-reduced (frozen ones are not registered)
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters)
    if tc.compile:
        forward = torch.compile(forward, backend=tc.compile_backend)
    views = int(getattr(eval_set, "views", 1) or 1)
    eval_workers = tc.eval_workers_on(dev, threads)
    eval_loader = DataLoader(eval_shard(eval_set, world), batch_size=max(1, tc.eval_batch_size // views), shuffle=False,
                             num_workers=eval_workers, pin_memory=pin or dev.type == "cuda",
                             prefetch_factor=4 if eval_workers else None)

    optimizer, scheduler = optimizer_and_schedule(parameter_groups(model, tc), tc, dev)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)

    checkpoint_dir = metrics_path.parent / CHECKPOINT_DIR
    # what `auto` settings resolved to on this device is part of the run's identity: a checkpoint of a
    # bf16 GPU run is not resumed as an fp32 CPU run
    fingerprint = run_fingerprint({**values, "selection": selection_digest(selection),
                                   "resolved": {"precision": precision, "data_on_device": data_path == "device",
                                                **({"processes": world.size} if world.distributed else {})}})
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
        if set(state["buffers"]) != set(_persistent_buffers(model)):
            raise TrainingError(f"checkpoint in {checkpoint_dir} does not hold this run's buffers; "
                                f"delete the folder to restart the run")
        # frozen tensors come from the backbone; the buffers (BatchNorm statistics) continue
        model.load_state_dict({**state["trainable"], **state["buffers"]}, strict=False)
        optimizer.load_state_dict(state["optimizer"])
        ranks = state.get("rank_rng")
        _restore_rng(ranks[world.rank] if ranks and len(ranks) == world.size else state, shuffle_rng, dev)
        history, train_seconds, seen, start_epoch = (state["history"], state["train_seconds"], state["seen"],
                                                     state["epoch"])
        log.info("resuming from the checkpoint of epoch %d/%d in %s", start_epoch, tc.epochs, checkpoint_dir)
    train_seconds += cache_info.build_seconds  # computing the cache is training time
    # a method with a step schedule (AdaLoRA's rank budget) is told the run's optimiser steps
    steps_per_epoch = len(train_batches)
    after_step = method.begin_training(model, tc.epochs * steps_per_epoch, start_epoch * steps_per_epoch)

    def where():
        return f"{run.suite}/{run.method}/{run.task}, seed {run.seed}"

    for epoch in range(start_epoch, tc.epochs):
        scheduler.step(epoch)
        done = train_epoch(model, forward, train_batches, optimizer, criterion, device=dev, autocast=autocast,
                           epoch=epoch + 1, non_blocking=pin, move_inputs=move_inputs, where=where, world=world,
                           global_size=global_size, after_step=after_step)
        train_seconds += done["seconds"]
        seen += done["images"]
        entry = {"epoch": epoch + 1, "loss": done["loss"], "lr": optimizer.param_groups[0]["lr"],
                 "train_top1": done["train_top1"], "seconds": round(done["seconds"], 3)}
        history.append(entry)
        rank_rng = world.gather(_rng_state(shuffle_rng, dev)) if world.distributed else None
        if not world.is_main:
            continue
        log.info("epoch %d/%d  loss %.4f  train top-1 %.3f  lr %.2e  %.0f img/s  %s", epoch + 1, tc.epochs,
                 entry["loss"], entry["train_top1"], entry["lr"], done["images"] / max(done["seconds"], 1e-9),
                 eta(epoch + 1, tc.epochs, train_seconds))
        _save_checkpoint(checkpoint_dir, {
            "fingerprint": fingerprint, "epoch": epoch + 1, "history": history,
            "train_seconds": train_seconds, "seen": seen,
            "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "buffers": {n: b.detach().cpu() for n, b in _persistent_buffers(model).items()},
            "optimizer": optimizer.state_dict(), **_rng_state(shuffle_rng, dev),
            **({"rank_rng": rank_rng} if rank_rng else {}),
        })
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, lambda: evaluate(model, eval_loader, dev, views=views, autocast=autocast)[0])

    cache = forward = train_batches = None  # release the stored features before evaluation
    # Kept before merging (the method's own tensors) and before metrics.json (the "done" marker).
    if world.is_main:
        save_trained_tensors(metrics_path.parent / TRAINED_TENSORS, model, method,
                             run={**asdict(run), "training": asdict(tc)}, checkpoint_sha=checkpoint_sha,
                             selection=selection, fingerprint=fingerprint)
    peak, peak_kind = _peak_memory_mb(dev)  # before the efficiency probe, which trains a copy
    probe = _EfficiencyProbe(model, method, tc, dev, autocast, criterion, eval_set, views) if world.is_main else None
    # Reparameterisable methods are evaluated as the plain backbone with the update folded in.
    model = applied.merge_and_unload()
    start = time.perf_counter()
    batch_seconds: list = []
    correct, n_eval = evaluate_counts(model, eval_loader, dev, views=views, autocast=autocast,
                                      batch_seconds=batch_seconds)
    correct, n_eval = (int(x) for x in world.sum(correct, n_eval))  # each rank evaluated its own examples
    accuracy = correct / n_eval
    eval_seconds = time.perf_counter() - start
    efficiency = probe.finish(model, batch_seconds, metrics_path.parent / TRAINED_TENSORS) if probe else None
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
                  "wall_seconds": train_seconds, "process_peak_memory_mb": peak, "process_peak_memory_kind": peak_kind,
                  "resumed_from_epoch": start_epoch or None,
                  "final_loss": history[-1]["loss"] if history else math.nan,
                  "feature_cache": cache_info.to_dict(), "precision": precision, "compiled": bool(tc.compile),
                  "data_path": data_path, "fused_attention": _fused_attention(model), "history": history,
                  "processes": world.size, "loader_workers": workers},
        "eval": {"split": run.protocol["eval_split"], "num_images": n_eval, "wall_seconds": eval_seconds,
                 "merged": bool(method.mergeable), "views": views},
        "efficiency": efficiency,
        "config": {**asdict(run), "training": asdict(tc), "method_hparams": method.config.to_dict(),
                   "checkpoint_sha256": checkpoint_sha, "fingerprint": fingerprint,
                   "selection_sha256": selection_sha},
        "provenance": {**provenance(threads), "device": str(dev)},
    }
    if not world.is_main:
        return metrics
    atomic_write_json(metrics_path, metrics)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the run is complete: nothing left to resume
    return metrics


def _uint8_split(layout, run: RunConfig, spec, tc: TrainingConfig, dev):
    """The training split as uint8 for the device path, when it is asked for and the layout can."""
    if not tc.data_on_device_on(dev) or not hasattr(layout, "train_uint8"):
        return None
    return layout.train_uint8(run, spec, tc)


def _persistent_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every persistent buffer of the model (a method's BatchNorm statistics, frozen ones too): a
    resumed run's forward must see what the interrupted run's would have."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return {n: t for n, t in model.state_dict(keep_vars=True).items() if n not in params}


def _rng_state(shuffle_rng: torch.Generator, dev: torch.device) -> dict:
    """Every random stream a resumed run needs to continue as an uninterrupted one would."""
    state = {"torch_rng": torch.get_rng_state(), "shuffle_rng": shuffle_rng.get_state(),
             "python_rng": list(_flatten_random_state(random.getstate()))}
    if dev.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(dev)
    return state


def _restore_rng(state: dict, shuffle_rng: torch.Generator, dev: torch.device) -> None:
    torch.set_rng_state(state["torch_rng"])
    shuffle_rng.set_state(state["shuffle_rng"])
    random.setstate(_as_random_state(state["python_rng"]))
    if dev.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], dev)


def _feature_cache(model, method, run: RunConfig, spec, tc: TrainingConfig, train_set, dev, autocast,
                   checkpoint_sha, base_dir, pin, precision) -> tuple[FeatureCache | None, CacheInfo]:
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
                                         precision=precision, device_type=dev.type))
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
