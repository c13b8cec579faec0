"""The pieces every stage of a run builds the same way: its settings, the torch set-up, the model,
the data, the optimizer and schedule. Training (`train`), the selection stage (`selection`) and
NOAH's search stages (`noah_search`) all take them from here, so a stage sees exactly what the
training run will see."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from ..backbones import BackboneSpec, create_backbone
from ..data.layouts import get_layout
from .feature_cache import MODES as FEATURE_CACHE_MODES
from .optim import OPTIMIZERS, build_optimizer

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


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
    num_workers: int | str = "auto"      # training DataLoader workers (auto: from the job's CPUs on a GPU, else 0)
    weight_decay_1d: bool = True
    optimizer: str = "adamw"              # adamw | sgd (with `momentum`)
    momentum: float = 0.9                 # SGD only
    lr_reference_batch: int | None = None  # set: the peak lr is lr x batch_size / lr_reference_batch
    # Speed knobs: none of them changes what is computed, except precision and compile (numerics) and
    # data_on_device with augmentation (augmented on the device by torchvision's RandAugment).
    feature_cache: str = "auto"           # auto: cache the frozen prefix when that is exact; off
    feature_cache_memory_mb: float = 4096  # larger caches need feature_cache_dir (or are not built)
    feature_cache_dir: str | None = None  # keep features on disk, keyed, reused across runs
    precision: str = "auto"               # auto (bf16 on a GPU that has it, else fp32) | fp32 | bf16
    compile: bool = False                 # torch.compile the training forward
    compile_backend: str = "inductor"     # torch.compile backend (aot_eager: no code generation)
    pin_memory: bool = True               # pinned host memory for the copy to a GPU (no effect on CPU)
    data_on_device: bool | str = "auto"   # auto (on a GPU) | true | false: the training split as uint8 on the device
    eval_workers: int | str = "auto"      # DataLoader workers streaming the eval split (auto: as num_workers)

    def __post_init__(self) -> None:
        # YAML 1.1 reads a bare `off` as false (and `on` as true).
        if isinstance(self.feature_cache, bool):
            self.feature_cache = "auto" if self.feature_cache else "off"
        if self.feature_cache not in FEATURE_CACHE_MODES:
            raise ValueError(f"training.feature_cache must be one of {FEATURE_CACHE_MODES}, got {self.feature_cache!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"training.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in ("auto", *PRECISIONS):
            raise ValueError(f"training.precision must be one of {('auto', *PRECISIONS)}, got {self.precision!r}")
        if not self.feature_cache_memory_mb >= 0:
            raise ValueError(f"training.feature_cache_memory_mb must be >= 0, got {self.feature_cache_memory_mb!r}")
        if self.data_on_device not in ("auto", True, False):
            raise ValueError(f"training.data_on_device must be auto, true or false, got {self.data_on_device!r}")
        for key in ("num_workers", "eval_workers"):
            value = getattr(self, key)
            if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"training.{key} must be auto or an integer >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainingConfig:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown training key(s) {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    # -- what the `auto` settings mean on a device ------------------------------------------------
    def precision_on(self, device: torch.device) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"

    def data_on_device_on(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.data_on_device == "auto" else bool(self.data_on_device)

    def loader_workers_on(self, device: torch.device, threads: int) -> int:
        """DataLoader worker processes of the training split. auto: on a GPU, the process's CPU threads
        but one (which feeds the GPU), at most 16; on a CPU, 0: the model's forward and backward already
        use every thread, and starting workers costs more than it saves on small splits."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        return min(16, max(0, int(threads) - 1)) if device.type == "cuda" else 0

    def eval_workers_on(self, device: torch.device, threads: int = 1) -> int:
        if self.eval_workers != "auto":
            return int(self.eval_workers)
        return max(1, min(16, int(threads) - 1)) if device.type == "cuda" else 0


#: Training keys that cannot change a run's result (the cache is exact, pinning and loader workers only
#: move bytes): left out of the run fingerprint, so a checkpoint resumes whatever they are set to.
RESULT_NEUTRAL_KEYS = ("feature_cache", "feature_cache_memory_mb", "feature_cache_dir", "pin_memory", "eval_workers")


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


def set_up_torch(threads: int, device: str | None, *, compile: bool = False) -> torch.device:
    """Threads, the device (a GPU when there is one), and deterministic algorithms on a CPU."""
    torch.set_num_threads(max(1, int(threads)))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        if compile:
            torch.use_deterministic_algorithms(True)  # also tells inductor (which it imports)
        else:
            # The same switch without torch.use_deterministic_algorithms' import of torch._inductor
            # (about 2 s of a short job's start), which only matters to a compiled run.
            torch._C._set_deterministic_algorithms(True)
    return dev


def build_run_model(run: RunConfig, tc: TrainingConfig, base_dir) -> tuple[BackboneSpec, torch.nn.Module, str]:
    """The run's backbone with a fresh head: call right after `seed_everything(run.seed)` so the head
    init is the same in every stage of the run (selection, training)."""
    spec = BackboneSpec.from_config(run.backbone["name"], {k: v for k, v in run.backbone.items() if k != "name"})
    model, checkpoint_sha = create_backbone(spec, run.num_classes, pretrained=run.pretrained,
                                            drop_path_rate=tc.drop_path, base_dir=base_dir)
    return spec, model, checkpoint_sha


def run_datasets(run: RunConfig, spec: BackboneSpec, tc: TrainingConfig):
    """(training split, evaluation split) of the run's protocol, as its layout builds them."""
    layout = get_layout(run.layout)
    return layout.train_dataset(run, spec, tc), layout.eval_dataset(run, spec, tc)


def autocast_context(device: torch.device, precision: str):
    """A factory of the precision context of forward passes (bf16 autocast works on CPU too)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def parameter_groups(model: torch.nn.Module, tc: TrainingConfig) -> list[dict]:
    """Trainable tensors for the optimiser. V-PETL decays every tensor; with `weight_decay_1d: false` biases,
    norm and scale vectors (1-D tensors) are exempt, as in timm and SSF's official recipe."""
    params = [p for p in model.parameters() if p.requires_grad]
    if tc.weight_decay_1d:
        return [{"params": params}]
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def optimizer_and_schedule(groups: list[dict], tc: TrainingConfig, device: torch.device):
    """The run's optimiser (vpeft.engine.optim; fused on a GPU) and the cosine schedule with linear
    warmup, stepped per epoch."""
    from timm.scheduler import CosineLRScheduler

    optimizer = build_optimizer(groups, tc, device)
    scheduler = CosineLRScheduler(optimizer, t_initial=tc.epochs, warmup_t=tc.warmup_epochs,
                                  warmup_lr_init=tc.warmup_lr_init, lr_min=tc.lr_min)
    return optimizer, scheduler


def run_fingerprint(values: dict) -> str:
    """Identity of a run's settings: a checkpoint is only resumed by the run that wrote it."""
    if isinstance(values.get("training"), dict):
        values = {**values, "training": {k: v for k, v in values["training"].items()
                                         if k not in RESULT_NEUTRAL_KEYS}}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
