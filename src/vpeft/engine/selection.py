"""The selection stage of data-dependent methods (GPS's gradient mask, SCT's salient channels).

It runs on the protocol's *training* split only, with deterministic preprocessing, on the frozen
backbone exactly as the training run will build it (same seed, so the same head init). The result is
a safetensors file of named tensors that the training run loads; the workflow caches it as the
`select_parameters` rule's output, so a rerun of training never recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ..data.layouts import get_layout
from ..io import atomic_write_bytes
from ..methods import PeftMethod, build_method
from ..provenance import provenance
from .build import RunConfig, TrainingConfig, build_run_model, seed_everything

log = logging.getLogger("vpeft.selection")


def selection_batches(run, spec, tc):
    """The training split, in file order, without augmentation."""
    split = get_layout(run.layout).train_dataset(run, spec, replace(tc, train_aug=False))
    return torch.utils.data.DataLoader(split, batch_size=tc.batch_size, shuffle=False)


def compute_selection(method: PeftMethod, model: torch.nn.Module, run, spec, tc) -> dict:
    """Run `method`'s selection stage without touching the global RNG streams the training run uses."""
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        selection = method.compute_selection(model, selection_batches(run, spec, tc), run.num_classes)
    model.train(was_training)
    if not selection or not all(isinstance(v, torch.Tensor) for v in selection.values()):
        raise TypeError(f"{method.name}.compute_selection must return a non-empty dict of tensors")
    log.info("%s: selection stage on %s took %.1f s (%d tensors)", method.name, run.protocol["train_split"],
             time.perf_counter() - start, len(selection))
    return {k: v.detach().cpu().contiguous() for k, v in selection.items()}


def save_selection(selection: dict, path: str | Path, record: dict) -> str:
    """Write the selection atomically (safetensors, with a JSON record in its metadata); return its sha256."""
    data = save(selection, metadata={"vpeft": json.dumps(record, default=str)})
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def selection_digest(selection: dict | None) -> str | None:
    """sha256 over the selection's names, dtypes, shapes and values (part of the run's fingerprint)."""
    if selection is None:
        return None
    digest = hashlib.sha256()
    for name in sorted(selection):
        tensor = selection[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def load_selection(path: str | Path) -> tuple[dict, str]:
    path = Path(path)
    return load_file(str(path)), hashlib.sha256(path.read_bytes()).hexdigest()


def run_selection(values: dict, out_path: str | Path, *, threads: int = 1, base_dir: str | Path = ".") -> str:
    """The workflow's entry point: compute one run's selection and write it to `out_path`."""
    run = RunConfig.from_dict(values)
    tc = TrainingConfig.from_dict(run.training)
    torch.set_num_threads(max(1, int(threads)))
    seed_everything(run.seed)
    spec, model, checkpoint_sha = build_run_model(run, tc, base_dir)
    method = build_method(run.method, run.method_hparams)
    if not method.needs_selection:
        raise ValueError(f"method '{run.method}' has no selection stage")
    selection = compute_selection(method, model, run, spec, tc)
    record = {"suite": run.suite, "task": run.task, "method": run.method, "seed": run.seed,
              "split": run.protocol["train_split"], "method_hparams": method.config.to_dict(),
              "checkpoint_sha256": checkpoint_sha, "provenance": provenance(threads)}
    return save_selection(selection, out_path, record)
