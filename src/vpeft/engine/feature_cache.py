"""Frozen-prefix feature cache: run the untouched part of the backbone once per image, not once per epoch.

A method declares how many leading transformer blocks it leaves untouched
(`PeftMethod.frozen_prefix_blocks`: linear probing and side-tuning all of them, Partial-k L-k, DTL its
`start_block`). When the training input is a fixed tensor per image (the `vtab1k` protocol without
augmentation) and nothing random runs in those blocks, their output is a function of the image
alone, so it is computed once and every epoch trains the rest of the network from it:

    uncached:  image -> patch_embed, pos_embed -> blocks[:k] -> blocks[k:] -> norm -> head   (every epoch)
    cached:    stream[k] (stored)               ->             blocks[k:] -> norm -> head

Exactness. The cache is only used when it reproduces the uncached run bit for bit (same seed, same
loss history, same metric); `plan_cache` refuses otherwise and says why:

* the model is a timm `VisionTransformer` whose forward is timm's own (the replay below follows
  `forward_features` / `forward_head` step by step), without gradient checkpointing;
* nothing in the embedding or in the cached blocks is trainable, is a method layer, or is random in
  training mode: dropout / drop-path with p > 0 and batch norm stop the prefix. With V-PETL's
  drop-path 0.1 (timm's linear decay: block 0 has rate 0, later blocks > 0) only block 0 qualifies,
  so linear probing and Partial-k gain little unless drop-path is 0 (the embedded suites use 0);
  the engine never switches drop-path off by itself, since that would change the protocol;
* hooks. Side-tuning networks (DTL, LST, LAST) read the frozen stream through forward hooks on whole
  blocks. Those blocks' inputs and outputs are stored too and their hooks are called with them in
  forward order, exactly as `nn.Module.__call__` would; a hook that *changes* a cached block's input
  or output, a hook on a module inside a block (HST reads `attn.qkv`, E3VA the branch outputs), on
  the embedding (HST also reads the image), the block sequence or the model itself (NOAH) makes the
  cache decline;
* a self-check compares the cached forward with the model's own forward on the first batch and
  declines on any difference.

Linear probing with nothing hooked stores the pooled pre-logit vector instead of the token stream
(D floats per image instead of tokens x D): only the head runs per step.

Memory is bounded by `feature_cache_memory_mb` (on a GPU, features within the bound are kept in
device memory; untested so far: no GPU was available); with `feature_cache_dir` the features are written
there (raw tensors + JSON sidecar, atomically) under a key of everything they depend on (see
`cache_keys`) and reused by later runs (other seeds, reruns); features over the memory bound are then
read through a memory map instead of being loaded. Without a directory, a cache over the bound is
not built and the run trains uncached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ..io import atomic_write_json

log = logging.getLogger(__name__)

SCHEMA = "vpeft.feature_cache/1"
PRE_LOGITS = "pre_logits"
MODES = ("auto", "off")


class FeatureCacheError(RuntimeError):
    """The cached forward would not reproduce the uncached one."""


@dataclass
class CachePlan:
    """What can be cached for one run, and why (not)."""

    used: bool
    reason: str
    declared_blocks: int = 0           # method.frozen_prefix_blocks(model)
    blocks: int = 0                    # k actually cached: the live part starts at blocks[k]
    hooked_blocks: tuple = ()          # cached blocks whose hooks are replayed
    positions: tuple = ()              # stream positions stored (p = input of block p) or (PRE_LOGITS,)

    @property
    def pre_logits(self) -> bool:
        return self.positions == (PRE_LOGITS,)


def _off(reason: str, declared: int = 0) -> CachePlan:
    return CachePlan(used=False, reason=reason, declared_blocks=declared)


# -- planning -----------------------------------------------------------------------------------

def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _kwargs_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks_with_kwargs or module._forward_pre_hooks_with_kwargs)


def _stochastic(name: str, module: nn.Module) -> str | None:
    """Why `module` is random (or stateful) in training mode, or None."""
    from timm.layers import DropPath, PatchDropout

    if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
        return f"{type(module).__name__} {name} (p={module.p:g}) is random in training"
    if isinstance(module, DropPath) and module.drop_prob > 0:
        return f"DropPath {name} (p={module.drop_prob:g}) is random in training"
    if isinstance(module, PatchDropout) and module.prob > 0:
        return f"PatchDropout {name} (p={module.prob:g}) is random in training"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f"{type(module).__name__} {name} updates its statistics in training"
    return None


def _region_problem(module: nn.Module, *, own_hooks_allowed: bool) -> str | None:
    """Why `module` (and everything inside it) cannot be computed once and replayed, or None."""
    from ..methods.base import MethodLayer

    if any(p.requires_grad for p in module.parameters()):
        return "has trainable tensors"
    for name, sub in module.named_modules():
        where = name or "itself"
        if isinstance(sub, MethodLayer):
            return f"contains the method layer {where}"
        if _kwargs_hooks(sub):
            return f"has keyword-argument hooks ({where})"
        if _has_hooks(sub) and (name or not own_hooks_allowed):
            return f"has forward hooks ({where})"
        reason = _stochastic(name, sub)
        if reason:
            return reason
    return None


def _vit_problem(model: nn.Module) -> str | None:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return "timm is not importable"
    if not isinstance(model, VisionTransformer):
        return f"only timm VisionTransformer backbones are cached (got {type(model).__name__})"
    cls = type(model)
    for attr in ("forward", "forward_features", "forward_head", "_pos_embed", "pool"):
        if attr in vars(model) or getattr(cls, attr) is not getattr(VisionTransformer, attr):
            return f"{cls.__name__}.{attr} is not timm's own"
    if model.grad_checkpointing:
        return "gradient checkpointing is on"
    if not isinstance(model.blocks, nn.Sequential):
        return "blocks is not a plain nn.Sequential"
    if _has_hooks(model) or _kwargs_hooks(model) or _has_hooks(model.blocks) or _kwargs_hooks(model.blocks):
        return "the model or its block sequence has forward hooks"
    return None


def plan_cache(model: nn.Module, method, mode: str, train_aug: bool, dataset: Dataset) -> CachePlan:
    """Decide whether (and how much of) the frozen prefix of `model` (method applied) is cached."""
    if mode not in MODES:
        raise ValueError(f"training.feature_cache must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return _off("feature_cache: off")
    if train_aug:
        return _off("train_aug is on: the input differs every epoch")
    if not isinstance(dataset, TensorDataset):
        return _off(f"the training split is not a fixed in-memory tensor dataset ({type(dataset).__name__})")
    problem = _vit_problem(model)
    if problem:
        return _off(problem)
    declared = int(method.frozen_prefix_blocks(model))
    if declared <= 0:
        return _off(f"method '{method.name}' trains from the first block on", declared)
    embedding = [model.patch_embed, model.pos_drop, model.patch_drop, model.norm_pre]
    for module in embedding:
        problem = _region_problem(module, own_hooks_allowed=False)
        if problem:
            return _off(f"embedding: {type(module).__name__} {problem}", declared)
    for tensor in (model.cls_token, model.reg_token, model.pos_embed):
        if tensor is not None and tensor.requires_grad:
            return _off("embedding: a token or position embedding is trainable", declared)

    k, stop = 0, ""
    for i in range(min(declared, len(model.blocks))):
        problem = _region_problem(model.blocks[i], own_hooks_allowed=True)
        if problem:
            stop = f"; blocks.{i} {problem}"
            break
        k += 1
    if k == 0:
        return _off(f"no cacheable block{stop}", declared)
    hooked = tuple(i for i in range(k) if _has_hooks(model.blocks[i]))
    if k == len(model.blocks) and not hooked and _head_path_cacheable(model):
        positions: tuple = (PRE_LOGITS,)
        what = "pooled pre-logit features (only the head trains)"
    else:
        positions = tuple(sorted({k, *hooked, *(i + 1 for i in hooked)}))
        what = f"the stream after {k} of {len(model.blocks)} blocks"
    reason = f"caching {what}{stop}" if k < declared else f"caching {what}"
    return CachePlan(used=True, reason=reason, declared_blocks=declared, blocks=k, hooked_blocks=hooked,
                     positions=positions)


def _head_path_cacheable(model: nn.Module) -> bool:
    """norm -> pool -> fc_norm (everything before head_drop and head) is frozen, unhooked, exact."""
    if model.attn_pool is not None:
        return False
    return all(_region_problem(m, own_hooks_allowed=False) is None for m in (model.norm, model.fc_norm))


# -- keys -----------------------------------------------------------------------------------------

def _digest_tensors(hasher, module_or_tensors) -> None:
    items = (module_or_tensors.state_dict().items() if isinstance(module_or_tensors, nn.Module)
             else module_or_tensors)
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        t = tensor.detach().cpu().contiguous()
        hasher.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        hasher.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (the preprocessed training inputs)."""
    hasher = hashlib.sha256()
    _digest_tensors(hasher, [("x", tensor)])
    return hasher.hexdigest()


def cache_keys(model: nn.Module, plan: CachePlan, inputs_digest: str, *, arch: str, checkpoint_sha: str | None,
               precision: str, device_type: str) -> dict[str, str]:
    """One key per stored position: sha256 of everything the features depend on.

    * the data and its preprocessing: `inputs_digest`, the hash of the preprocessed input tensors in
      dataset order (covers the split file, the images and resize/normalisation);
    * the backbone: architecture, checkpoint sha256, and the digest of every tensor and module
      setting (repr) upstream of the position (covers random-init backbones and `model_kwargs`);
    * the position (k) and how it was computed: precision, device type, torch and timm versions.
    """
    import timm

    hasher = hashlib.sha256()
    embedding = [("patch_embed", model.patch_embed), ("norm_pre", model.norm_pre)]
    hasher.update(repr([(n, repr(m)) for n, m in embedding]).encode())
    for name, module in embedding:
        _digest_tensors(hasher, [(f"{name}.{k}", v) for k, v in module.state_dict().items()])
    _digest_tensors(hasher, [(n, t) for n, t in (("cls_token", model.cls_token), ("reg_token", model.reg_token),
                                                  ("pos_embed", model.pos_embed)) if t is not None])
    hasher.update(json.dumps({k: getattr(model, k, None) for k in ("num_prefix_tokens", "no_embed_class",
                                                                   "dynamic_img_size")}).encode())
    upstream: dict[int, str] = {0: hasher.hexdigest()}
    for i, block in enumerate(model.blocks):
        hasher.update(f"blocks.{i}:{block!r}".encode())
        _digest_tensors(hasher, block)
        upstream[i + 1] = hasher.hexdigest()
    for name in ("norm", "fc_norm"):
        module = getattr(model, name)
        hasher.update(f"{name}:{module!r}:{model.global_pool}".encode())
        _digest_tensors(hasher, module)
    upstream_pre_logits = hasher.hexdigest()

    keys = {}
    for position in plan.positions:
        material = {"schema": SCHEMA, "arch": arch, "checkpoint_sha256": checkpoint_sha,
                    "weights": upstream_pre_logits if position == PRE_LOGITS else upstream[position],
                    "inputs": inputs_digest, "position": position, "precision": precision,
                    "device": device_type, "torch": torch.__version__, "timm": timm.__version__}
        keys[str(position)] = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return keys


# -- computing the prefix -----------------------------------------------------------------------------

def _prefix(model: nn.Module, images: torch.Tensor, plan: CachePlan) -> dict:
    """The stored positions for one batch, computed as timm's forward_features does (block hooks are
    *not* run here: they are replayed during training, where the side network needs them)."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    out = {}
    wanted = set(plan.positions)
    if 0 in wanted:
        out[0] = x
    for i in range(plan.blocks):
        x = model.blocks[i].forward(x)  # .forward: the block's own hooks belong to the replay
        if i + 1 in wanted:
            out[i + 1] = x
    if plan.pre_logits:
        x = model.norm(x)
        x = model.pool(x)
        out[PRE_LOGITS] = model.fc_norm(x)
    return out


def _replay_hooks(model: nn.Module, plan: CachePlan, feats: dict) -> None:
    """Call the cached blocks' forward hooks in forward order with their stored input and output."""
    for i in plan.hooked_blocks:
        block = model.blocks[i]
        args = (feats[i],)
        for hook in list(block._forward_pre_hooks.values()):
            if hook(block, args) is not None:
                raise FeatureCacheError(f"a forward pre-hook changes the input of cached block {i}")
        for hook in list(block._forward_hooks.values()):
            if hook(block, args, feats[i + 1]) is not None:
                raise FeatureCacheError(f"a forward hook changes the output of cached block {i}")


def forward_from(model: nn.Module, plan: CachePlan, feats: dict) -> torch.Tensor:
    """Logits from stored features: the part of timm's forward after the cached prefix."""
    if plan.pre_logits:
        return model.head(model.head_drop(feats[PRE_LOGITS]))
    _replay_hooks(model, plan, feats)
    x = feats[plan.blocks]
    for block in model.blocks[plan.blocks:]:
        x = block(x)
    x = model.norm(x)
    return model.forward_head(x)


# -- storage ----------------------------------------------------------------------------------------

@dataclass
class CacheInfo:
    """What metrics.json records about the cache."""

    used: bool
    reason: str
    declared_prefix_blocks: int = 0
    cached_prefix_blocks: int = 0
    positions: list = field(default_factory=list)
    storage: str | None = None          # memory | disk (loaded into memory) | disk-mmap
    megabytes: float = 0.0
    build_seconds: float = 0.0
    loaded_from_disk: bool = False
    keys: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class FeatureCache:
    """Stored features of the training split, indexed by dataset position, and the forward from them."""

    def __init__(self, plan: CachePlan, features: dict, labels: torch.Tensor, info: CacheInfo, *,
                 device: torch.device, non_blocking: bool = False):
        self.plan = plan
        self.features = features
        self.labels = labels
        self.info = info
        self.device = device
        self.non_blocking = non_blocking

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> dict:
        return {p: t.index_select(0, index.to(t.device)).to(self.device, non_blocking=self.non_blocking)
                for p, t in self.features.items()}

    def forward(self, model: nn.Module, index: torch.Tensor) -> torch.Tensor:
        return forward_from(model, self.plan, self.batch(index))


class IndexDataset(Dataset):
    """(index, label) pairs: the training loader shuffles indices into the cache exactly as it would
    shuffle the images (the sampler only sees the length and the generator)."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return index, self.labels[index]


def _position_key(position) -> str:
    return str(position)


def _load_from_disk(folder: Path, keys: dict, n: int) -> dict | None:
    out = {}
    for position, key in keys.items():
        meta_path, data_path = folder / f"{key}.json", folder / f"{key}.bin"
        if not meta_path.is_file() or not data_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            dtype = getattr(torch, meta["dtype"].removeprefix("torch."))
            shape = tuple(meta["shape"])
        except (ValueError, KeyError, AttributeError) as err:
            log.warning("ignoring unreadable feature cache entry %s (%s)", meta_path, err)
            return None
        numel = 1
        for s in shape:
            numel *= s
        if meta.get("key") != key or shape[0] != n or data_path.stat().st_size != numel * dtype.itemsize:
            log.warning("ignoring feature cache entry %s: it does not match this run", meta_path)
            return None
        out[position] = torch.from_file(str(data_path), shared=False, size=numel, dtype=dtype).view(shape)
    return out


def _write_to_disk(folder: Path, keys: dict, features: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for position, key in keys.items():
        tensor = features[position].contiguous()
        tmp = folder / f"{key}.bin.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(tensor.view(torch.uint8).numpy().tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / f"{key}.bin")
        atomic_write_json(folder / f"{key}.json", {"schema": SCHEMA, "key": key, "position": position,
                                                   "dtype": str(tensor.dtype), "shape": list(tensor.shape)})


def build_cache(model: nn.Module, plan: CachePlan, dataset: TensorDataset, *, device: torch.device,
                autocast: Callable, batch_size: int, memory_mb: float, folder: str | Path | None,
                key_fn: Callable[[str], dict], non_blocking: bool = False) -> FeatureCache | CacheInfo:
    """Compute (or load) the planned features; returns the cache, or a `CacheInfo` saying why not.

    `autocast()` is the training step's precision context (the prefix must be computed as the
    uncached run computes it); `key_fn(inputs_digest)` returns the per-position disk keys.
    """
    images, labels = dataset.tensors[0], dataset.tensors[1]
    n = len(images)
    info = CacheInfo(used=False, reason=plan.reason, declared_prefix_blocks=plan.declared_blocks,
                     cached_prefix_blocks=plan.blocks, positions=[_position_key(p) for p in plan.positions])
    start = time.perf_counter()
    was_training = model.training
    # The uncached run computes the prefix in training mode; planning made sure that mode is exact.
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with autocast():
                probe = _prefix(model, images[:1].to(device), plan)
            per_image = sum(t[0].numel() * t.element_size() for t in probe.values())
            total_mb = n * per_image / 2**20
            info.megabytes = round(total_mb, 3)
            keys = {_position_key(p): k for p, k in key_fn(tensor_digest(images)).items()} if folder else {}
            info.keys = keys
            fits = total_mb <= memory_mb
            if not fits and folder is None:
                info.reason = (f"features need {total_mb:.0f} MiB > feature_cache_memory_mb={memory_mb:g}; "
                               f"set training.feature_cache_dir to keep them on disk")
                return info
            features = _load_from_disk(Path(folder), keys, n) if folder else None
            if features is not None:
                info.loaded_from_disk = True
                if fits:  # into memory, off the map
                    features = {p: t.clone() for p, t in features.items()}
            else:
                features = {_position_key(p): t
                            for p, t in _compute(model, plan, images, device, autocast, batch_size).items()}
                if folder:
                    _write_to_disk(Path(folder), keys, features)
                    if not fits:  # drop the in-memory copy, read through the map
                        features = _load_from_disk(Path(folder), keys, n)
            features = {_from_key(p): t for p, t in features.items()}
            if fits and device.type == "cuda":  # within the bound: keep them where the step runs
                features = {p: t.to(device) for p, t in features.items()}
            info.storage = "memory" if not folder else ("disk" if fits else "disk-mmap")
            cache = FeatureCache(plan, features, labels, info, device=device, non_blocking=non_blocking)
            problem = _self_check(model, cache, images, device, autocast, batch_size)
    finally:
        model.train(was_training)
    if problem:
        info.reason = f"self-check failed: {problem}"
        return info
    info.used = True
    info.build_seconds = round(time.perf_counter() - start, 3)
    log.info("feature cache: %s; %.1f MiB (%s%s) in %.1f s", plan.reason, total_mb, info.storage,
             ", loaded" if info.loaded_from_disk else "", info.build_seconds)
    return cache


def _from_key(key: str):
    return PRE_LOGITS if key == PRE_LOGITS else int(key)


def _compute(model, plan, images, device, autocast, batch_size) -> dict:
    features: dict = {}
    n = len(images)
    for lo in range(0, n, batch_size):
        with autocast():
            out = _prefix(model, images[lo:lo + batch_size].to(device), plan)
        for p, t in out.items():
            if p not in features:
                features[p] = torch.empty((n, *t.shape[1:]), dtype=t.dtype)
            features[p][lo:lo + len(t)] = t.cpu()
        if lo and lo // batch_size % 20 == 0:
            log.info("feature cache: %d/%d images", lo + len(out[plan.positions[0]]), n)
    return features


def _self_check(model, cache: FeatureCache, images, device, autocast, batch_size) -> str | None:
    """The cached forward must equal the model's own forward, bit for bit, on the first batch
    (evaluation mode: the live part's dropout is off, so both sides are deterministic)."""
    index = torch.arange(min(batch_size, len(images)))
    model.eval()
    try:
        with autocast():
            reference = model(images[index].to(device))
            cached = cache.forward(model, index)
    except FeatureCacheError as err:
        return str(err)
    if reference.shape != cached.shape or not torch.equal(reference, cached):
        diff = (reference.float() - cached.float()).abs().max().item() if reference.shape == cached.shape else "shape"
        return f"cached forward differs from the model's own (max |diff| {diff})"
    return None
