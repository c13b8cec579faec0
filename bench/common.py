"""Shared pieces of the benchmark sections: models, methods, timing, memory."""

from __future__ import annotations

import copy
import gc
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

import torch

from vpeft import backbones  # noqa: F401  (registers the demo architecture with timm)


def vit(arch: str, img_size: int, num_classes: int = 10, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A random-init timm model (weights do not change speed or memory)."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=img_size, **kwargs)


def method_hparams(name: str) -> dict:
    """The method's configured default hyper-parameters (config/methods/<name>.yaml: hparams)."""
    import yaml

    path = REPO / "config" / "methods" / f"{name}.yaml"
    if not path.is_file():
        return {}
    return dict((yaml.safe_load(path.read_text()) or {}).get("hparams") or {})


def apply(model: torch.nn.Module, name: str, hparams: dict | None = None, img_size: int = 224,
          num_classes: int = 10):
    """Inject method `name` (configured defaults unless `hparams`), running its selection stage on a
    random batch when it has one (what is selected does not change the cost)."""
    from vpeft.methods import apply_method, build_method

    method = build_method(name, method_hparams(name) if hparams is None else hparams)
    selection = None
    if method.needs_selection:
        g = torch.Generator().manual_seed(0)
        images = torch.randn(4, 3, img_size, img_size, generator=g)
        selection = method.compute_selection(copy.deepcopy(model), [(images, torch.arange(4) % num_classes)],
                                             num_classes)
    return apply_method(model, method, selection)


def train_step_fn(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, autocast=None):
    """One AdamW training step over the model's trainable tensors, as the engine runs it."""
    import contextlib

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    autocast = autocast or contextlib.nullcontext
    model.train()

    def step():
        with autocast():
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(fns: dict, *, warmup: int, rounds: int, device="cpu") -> dict[str, dict]:
    """Seconds per call of each function, wall-clock and CPU (this process, all threads): medians,
    and the per-round values (`rounds`) for paired ratios.

    Calls are interleaved (A B C, B C A, C A B, ...) so that load that changes during the measurement
    hits all of them alike. On a shared CPU the CPU time is the load-independent measure of work
    (see `cost`)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        # rotate who goes first: the first call of a round runs on a colder cache / allocator
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k]),
                "rounds": {"wall": wall[k], "cpu": cpu[k]}} for k in fns}


def cost(times: dict, device="cpu") -> float:
    """The seconds a ratio compares: CPU time on a CPU (robust to other jobs on a shared machine),
    wall time on a GPU (its work is not CPU time)."""
    return times["cpu"] if torch.device(device).type == "cpu" else times["wall"]


def paired_ratio(times: dict, a: str, b: str, device="cpu") -> dict[str, float]:
    """a / b from the same rounds, paired: median and quartiles of the per-round ratios."""
    kind = "cpu" if torch.device(device).type == "cpu" else "wall"
    ratios = sorted(x / y for x, y in zip(times[a]["rounds"][kind], times[b]["rounds"][kind]))
    q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"median": median, "q1": q1, "q3": q3}


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _malloc_trim() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measure is only coarser
        pass


class PeakMemory:
    """Peak memory of a block of work above what is held when it starts.

    GPU: torch.cuda.max_memory_allocated. CPU: the process's resident-set high-water mark (VmHWM,
    reset through /proc/self/clear_refs) minus the resident set at the start: what the work added
    (activations, gradients, optimizer state), not the model weights already in memory.
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_high_water"
        self.mb = 0.0

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()  # freed heap (e.g. of a selection stage) would otherwise hide new allocations
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.start = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _status_kib("VmHWM") * 1024
        self.mb = (peak - self.start) / 2**20
        return False


def saved_activation_mb(fn) -> float:
    """MiB of tensors autograd keeps for the backward pass while `fn()` runs its forward (exact,
    device-independent; storage shared by several saved tensors is counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")
