"""The trained tensors of a finished run, kept beside its metrics.json.

`trained.safetensors` holds every tensor the run trained (the method's tensors and the task head,
named as in the unmerged model) and, for data-dependent methods, the selection the method was
injected with (keys prefixed `selection::`). The frozen backbone is never stored: its metadata names
the backbone (arch, config entry, sha256 of the checkpoint) and the method (name, resolved config),
plus the seed and the whole resolved run, which is enough to rebuild the model exactly
(`vpeft.export.load_run`). It is written atomically before metrics.json, the run's "done" marker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .io import atomic_write_bytes

#: Format tag in the file's metadata; bump when the layout changes.
TRAINED_FORMAT = "vpeft.trained/1"
SELECTION_PREFIX = "selection::"


class ArtifactError(RuntimeError):
    """A run's trained tensors are missing, foreign, or do not fit the model they are loaded into."""


def trained_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor of `model` by name (a tensor shared under two names is kept once), plus
    the persistent buffers of the method's own layers (running statistics of a side network's
    BatchNorm change during training too)."""
    seen: set[int] = set()
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            out[name] = param.detach().to("cpu", copy=True).contiguous()
    for name, buffer in _method_buffers(model).items():
        out[name] = buffer.detach().to("cpu", copy=True).contiguous()
    return out


def _method_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from .methods.base import MethodLayer

    layers = [n + "." if n else "" for n, m in model.named_modules() if isinstance(m, MethodLayer)]
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return {key: value for key, value in model.state_dict(keep_vars=True).items()
            if key not in params and any(key.startswith(p) and not key[len(p):].startswith("base_layer.")
                                         for p in layers)}


def save_trained_tensors(path: str | Path, model: torch.nn.Module, method, *, run: dict,
                         checkpoint_sha: str | None, selection: dict | None = None,
                         fingerprint: str | None = None, extra: dict | None = None) -> dict:
    """Write `model`'s trained tensors (+ `selection`) and how to rebuild the model to `path`, atomically.

    `run` is the resolved run (suite, task, seed, backbone entry, training, ...); the method's
    resolved config is taken from `method`. Returns the metadata written.
    """
    from safetensors.torch import save

    from . import __version__

    tensors = trained_tensors(model)
    for name, value in (selection or {}).items():
        tensors[SELECTION_PREFIX + name] = value.detach().to("cpu", copy=True).contiguous()
    backbone = dict(run.get("backbone") or {})
    meta = {
        "format": TRAINED_FORMAT,
        "method": method.name,
        "method_config": method.config.to_dict(),
        "mergeable": bool(method.mergeable),
        "backbone_arch": backbone.get("arch"),
        "backbone_name": backbone.get("name"),
        "backbone_sha256": checkpoint_sha,
        "pretrained": bool(run.get("pretrained", True)),
        "seed": run.get("seed"),
        "num_classes": run.get("num_classes"),
        "fingerprint": fingerprint,
        "vpeft_version": __version__,
        "run": {**run, "method_hparams": method.config.to_dict()},
        **(extra or {}),
    }
    # safetensors metadata is str -> str: every value is JSON (strings quoted), so it reads back typed.
    header = {k: json.dumps(v, default=str) for k, v in meta.items()}
    atomic_write_bytes(path, save(tensors, metadata=header))
    return meta


@dataclass
class TrainedTensors:
    tensors: dict[str, torch.Tensor]
    selection: dict[str, torch.Tensor] | None
    meta: dict


def read_trained_tensors(path: str | Path) -> TrainedTensors:
    """The tensors, the selection (None when the method has none) and the decoded metadata of `path`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} not found: the run has no trained tensors (it did not finish, or it "
                            f"was trained before vpeft kept them; rerun it)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            if header.get("format") != json.dumps(TRAINED_FORMAT):
                raise ArtifactError(f"{path} is not a vpeft trained-tensors file (format {header.get('format')}, "
                                    f"expected {TRAINED_FORMAT!r})")
            all_tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iterator
        meta = {key: json.loads(text) for key, text in header.items()}
    except ArtifactError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors' errors do not name the file
        what = "empty file" if path.stat().st_size == 0 else f"{type(err).__name__}: {str(err).splitlines()[0]}"
        raise ArtifactError(f"{path}: damaged or truncated trained-tensors file ({what}); rerun the run "
                            f"(delete its metrics.json)") from None
    selection = {k[len(SELECTION_PREFIX):]: v for k, v in all_tensors.items() if k.startswith(SELECTION_PREFIX)}
    tensors = {k: v for k, v in all_tensors.items() if not k.startswith(SELECTION_PREFIX)}
    return TrainedTensors(tensors=tensors, selection=selection or None, meta=meta)


def load_trained_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str = "") -> None:
    """Copy `tensors` into `model`'s trainable tensors; every trainable tensor must be covered exactly."""
    expected = set(trained_tensors(model))
    missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unknown:
        raise ArtifactError(f"{where or 'trained tensors'} do not fit the rebuilt model: missing {missing[:5]}, "
                            f"unknown {unknown[:5]}")
    with torch.no_grad():
        model.load_state_dict(tensors, strict=False)  # shapes are checked; every key is known (above)
