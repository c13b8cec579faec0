"""What a PEFT method costs to train and to deploy, measured per run on the device the run used.

`measure_training` runs a few training steps of the method's model (a deep copy: the run's model,
optimizer and random streams are left exactly as they were) and returns

* ``train_memory_mb``: peak training memory of the method itself. On a GPU: the allocator's peak
  during a step (`torch.cuda.max_memory_allocated` after a reset) above what was allocated before the
  measurement started; the measured copy of the model (frozen weights included), its optimizer state,
  gradients and activations are all allocated after that point, while other things the run holds
  (data on the device, the run's own optimizer) are not counted. On a CPU, where no
  allocator reports a peak: the bytes of the parameters and buffers, the gradients, the optimizer
  state and the tensors autograd saves for the backward pass during one step (measured through
  `torch.autograd.graph.saved_tensors_hooks`, storage shared by several tensors counted once,
  parameters not twice), summed; not the process's resident set, which is mostly torch itself.
* ``train_samples_per_second``: steady-state throughput (images or clips), timed over the steps
  after the first (warm-up: the optimizer state is allocated, kernels are chosen).

`latency_ms` times the eval-mode forward at batch 1 (median of a few calls after a warm-up); the
run adds the evaluation batch from its own evaluation (merged model) and, for mergeable methods,
the unmerged model's. `trained_tensors_bytes` is the size of the file a run ships.

A few steps on small data: the record is cheap beside the training it describes.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

#: steps of the training measurement: the first warms up (optimizer state, kernels), the rest are timed;
#: two keep the per-run cost below a second on the default run's CPU-sized models
TRAIN_STEPS = 2
#: timed eval-mode calls at batch 1 after one warm-up call
LATENCY_CALLS = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (a storage shared by two tensors counts once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _optimizer_state_tensors(optimizer: torch.optim.Optimizer):
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                yield value


class SavedActivations:
    """Bytes of the tensors autograd keeps for the backward pass while the context is open, other
    than `exclude` (the model's own parameters and buffers, already counted as such)."""

    def __init__(self, exclude=()):
        self._exclude = {(str(t.device), t.untyped_storage().data_ptr()) for t in exclude}
        self._seen: dict[tuple[str, int], int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - tensors without storage
            return t
        key = (str(t.device), storage.data_ptr())
        if key not in self._exclude:
            self._seen[key] = storage.nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


def _model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def measure_training(model: torch.nn.Module, make_optimizer: Callable, inputs: torch.Tensor, labels: torch.Tensor,
                     *, criterion=None, autocast=nullcontext, steps: int = TRAIN_STEPS) -> dict:
    """Peak training memory and steady-state throughput of `model` on one batch (`inputs`, `labels`
    on the model's device), trained by `make_optimizer(trainable_model)` for `steps` steps. Runs on a
    deep copy and restores the global random streams: the caller's model and results do not change."""
    if steps < 2:
        raise ValueError("measure_training needs >= 2 steps (one warm-up, one timed)")
    device = inputs.device
    criterion = criterion or torch.nn.CrossEntropyLoss()
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        if device.type == "cuda":
            _sync(device)
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
        twin = copy.deepcopy(model).train()
        optimizer = make_optimizer(twin)
        own = _model_tensors(twin)
        seconds, cpu_seconds, parts = [], [], {}

        def step(record: SavedActivations | None):
            with record or nullcontext(), autocast():
                logits = twin(inputs)
            loss = criterion(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if record is not None:  # gradients exist until the next zero_grad
                parts["gradients"] = tensor_bytes(p.grad for p in twin.parameters() if p.grad is not None)
            optimizer.step()

        for i in range(steps):
            measure_memory = i == 1
            if measure_memory and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            record = SavedActivations(exclude=own) if measure_memory and device.type != "cuda" else None
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            step(record)
            _sync(device)
            if i > 0:
                seconds.append(time.perf_counter() - start)
                cpu_seconds.append(time.process_time() - cpu_start)
            if measure_memory:
                if device.type == "cuda":
                    # the copy's weights, its optimizer state, gradients and activations were all
                    # allocated after `before`: the peak above it is the method's own
                    peak = torch.cuda.max_memory_allocated(device) - before
                    kind = "cuda_max_allocated"
                else:
                    parts.update(parameters=tensor_bytes(own), saved_activations=record.bytes,
                                 optimizer_state=tensor_bytes(_optimizer_state_tensors(optimizer)))
                    peak, kind = sum(parts.values()), "cpu_tensor_bytes"
        out = {"train_memory_mb": peak / 2**20, "train_memory_kind": kind,
               "train_samples_per_second": inputs.shape[0] / statistics.median(seconds),
               "train_batch": int(inputs.shape[0]), "train_steps_timed": len(seconds),
               "train_cpu_seconds_per_step": statistics.median(cpu_seconds)}
        if parts:
            out["train_memory_parts_mb"] = {k: v / 2**20 for k, v in parts.items()}
        return out
    finally:
        twin = optimizer = None
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)


@torch.no_grad()
def latency_ms(model: torch.nn.Module, inputs: torch.Tensor, *, autocast=nullcontext, calls: int = LATENCY_CALLS,
               warmup: int = 1) -> float:
    """Median milliseconds of an eval-mode forward of `inputs` after `warmup` calls."""
    was_training = model.training
    model.eval()
    device = inputs.device
    times = []
    try:
        for i in range(calls + warmup):
            _sync(device)
            start = time.perf_counter()
            with autocast():
                model(inputs)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000 * statistics.median(times)


def device_name(device: torch.device) -> str:
    """The device in words, for every efficiency figure: 'NVIDIA H100 80GB HBM3', 'cpu: <model>, 2 threads'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from .provenance import hardware

    return f"cpu: {hardware()['cpu']}, {torch.get_num_threads()} threads"


def file_bytes(path: str | Path) -> int | None:
    path = Path(path)
    return path.stat().st_size if path.is_file() else None
