"""Rebuild a finished run from its backbone + trained tensors, and export it to peft or timm.

* `load_run(run_dir)`: the run's model, rebuilt exactly as it was trained (same backbone checkpoint,
  checked by sha256; same seed, so a random-init backbone and the head init are the same; the
  method's resolved config and selection; the trained tensors), ready to predict. `evaluate()`
  recomputes the recorded test metric.
* `export_peft(run_dir, out)`: a huggingface-peft LoRA adapter (`adapter_config.json` +
  `adapter_model.safetensors`) for `peft.PeftModel.from_pretrained` on the same timm backbone. Our
  LoRA on q and v of timm's fused `qkv` Linear is exactly a peft LoRA of rank
  len(targets) * r on `qkv`: A stacks the targets' A's, B holds each target's B in its third's rows
  and columns (zeros elsewhere), and alpha scales by the same alpha / r. Written with our own code
  (peft is not needed to export, only to load).
  The `peft-*` methods (huggingface peft's own tuners) are exported by peft itself: their adapter
  and the head (`modules_to_save`) loaded into a `PeftModel` on the plain backbone, written by
  `save_pretrained`.
* `export_timm(run_dir, out)`: for mergeable methods, the merged plain timm state dict
  (`model.safetensors`) for `timm.create_model(arch, checkpoint_path=..., num_classes=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .artifacts import ArtifactError, load_trained_into, read_trained_tensors
from .io import DamagedFileError, atomic_write_bytes, atomic_write_json, read_json
from .runs import TRAINED_TENSORS

FORMATS = ("peft", "timm")


class ExportError(ValueError):
    """A run cannot be exported to the format asked for; the message names the methods that can."""


def exportable_methods(fmt: str) -> list[str]:
    """Registered methods that `export_run(..., fmt)` accepts."""
    from .methods import available_methods, get_method_class

    if fmt == "peft":
        return list(_PEFT_CONVERTERS) + [m for m in available_methods() if _is_peft_tuner(m)]
    if fmt == "timm":
        return [m for m in available_methods() if get_method_class(m).mergeable]
    raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")


def _refuse(method: str, fmt: str, why: str) -> ExportError:
    return ExportError(f"method '{method}' cannot be exported to {fmt} ({why}); methods that can: "
                       f"{', '.join(exportable_methods(fmt))}")


@dataclass
class LoadedRun:
    """A finished run, rebuilt. `model` is in eval mode (merged when `merged`)."""

    run_dir: Path
    model: torch.nn.Module
    method: object
    run: object  # vpeft.engine.train.RunConfig
    training: object  # vpeft.engine.train.TrainingConfig
    spec: object  # vpeft.backbones.BackboneSpec
    meta: dict
    metrics: dict | None
    merged: bool
    base_dir: Path = Path(".")

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of preprocessed images (the backbone's input size, mean and std)."""
        self.model.eval()
        return self.model(images)

    def evaluate(self, *, task_dir: str | Path | None = None, device: str = "cpu") -> float:
        """Top-1 of the model on the run's evaluation split, with the engine's loader and settings.
        The run's data paths are read relative to `base_dir` (as the workflow did); `task_dir`
        overrides the task folder (relative to the current folder)."""
        import contextlib
        from dataclasses import replace

        from torch.utils.data import DataLoader

        from .data.layouts import get_layout
        from .engine.train import autocast_context, evaluate

        run = replace(self.run, task_dir=str(Path(task_dir).resolve())) if task_dir is not None else self.run
        dev = torch.device(device)
        with contextlib.chdir(self.base_dir):
            eval_set = get_layout(run.layout).eval_dataset(run, self.spec, self.training)
            views = int(getattr(eval_set, "views", 1) or 1)
            loader = DataLoader(eval_set, batch_size=max(1, self.training.eval_batch_size // views), shuffle=False)
            self.model.to(dev)
            accuracy, _ = evaluate(self.model, loader, dev, views=views,
                                   autocast=autocast_context(dev, self.training.precision_on(dev)))
        return accuracy


def load_run(run_dir: str | Path, *, base_dir: str | Path = ".", merge: bool | None = None) -> LoadedRun:
    """Rebuild the model of the finished image / video run in `run_dir` (the folder of its metrics.json).

    The backbone checkpoint is read from the path the run recorded, relative to `base_dir` (the
    folder the workflow ran in), and must have the sha256 the run recorded. `merge` (default: as the
    run was evaluated) folds a mergeable method into the backbone."""
    from .backbones import BackboneError
    from .engine.train import RunConfig, TrainingConfig, build_run_model, seed_everything
    from .methods import apply_method, build_method

    run_dir = Path(run_dir)
    saved = read_trained_tensors(run_dir / TRAINED_TENSORS)
    meta = saved.meta
    metrics_path = run_dir / "metrics.json"
    try:
        metrics = read_json(metrics_path) if metrics_path.is_file() else None
    except DamagedFileError as err:
        raise ArtifactError(str(err)) from None
    if metrics is not None and metrics.get("config", {}).get("fingerprint") != meta.get("fingerprint"):
        raise ArtifactError(f"{run_dir / TRAINED_TENSORS} was written by other settings than {metrics_path}; "
                            f"rerun the run")
    if meta.get("track") == "dense":
        raise ArtifactError(f"{run_dir} is a dense run: load_run rebuilds image and video runs; rebuild a dense "
                            f"model with mmengine from its config.py and load {TRAINED_TENSORS} into it")
    run = RunConfig.from_dict(meta["run"])
    tc = TrainingConfig.from_dict(run.training)
    seed_everything(run.seed)  # as the engine does first: same random-init backbone, same head init
    spec, model, checkpoint_sha = build_run_model(run, tc, base_dir)
    if run.pretrained and checkpoint_sha != meta["backbone_sha256"]:
        raise BackboneError(f"backbone {spec.name}: checkpoint has sha256 {checkpoint_sha}, the run was trained on "
                            f"{meta['backbone_sha256']}")
    method = build_method(run.method, run.method_hparams)
    applied = apply_method(model, method, saved.selection)
    load_trained_into(model, saved.tensors, where=str(run_dir / TRAINED_TENSORS))
    model.eval()
    merge = method.mergeable if merge is None else merge
    if merge:
        if not method.mergeable:
            raise ExportError(f"method '{method.name}' is not mergeable")
        model = applied.merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedRun(run_dir=run_dir, model=model, method=method, run=run, training=tc, spec=spec, meta=meta,
                     metrics=metrics, merged=bool(merge), base_dir=Path(base_dir))


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, *,
               base_dir: str | Path = ".") -> Path:
    """Export the run in `run_dir` to `fmt` ("peft" or "timm") under `out` (default `run_dir/<fmt>/`)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / fmt
    method = read_trained_tensors(run_dir / TRAINED_TENSORS).meta["method"]
    if fmt == "peft":
        if _is_peft_tuner(method):
            return _export_peft_tuner(run_dir, out, base_dir)
        if method not in _PEFT_CONVERTERS:
            raise _refuse(method, fmt, "peft has no layer that computes the same function")
        return _export_peft(run_dir, out, base_dir)
    if method not in exportable_methods("timm"):
        raise _refuse(method, fmt, "it is not mergeable: its layers stay in the model at inference")
    return _export_timm(run_dir, out, base_dir)


def _export_record(loaded: LoadedRun, fmt: str, files: list[str]) -> dict:
    spec = loaded.spec
    # own data (vpeft.data.owndata): the class name of each output, in label order
    classes = {"classes": loaded.run.data["classes"]} if "classes" in (loaded.run.data or {}) else {}
    return {"format": fmt, "files": files, "method": loaded.method.name,
            "method_config": loaded.method.config.to_dict(), "backbone": {
                "name": spec.name, "arch": spec.arch, "checkpoint": spec.checkpoint,
                "checkpoint_format": spec.checkpoint_format, "sha256": loaded.meta["backbone_sha256"],
                "pretrained": loaded.run.pretrained, "model_kwargs": spec.model_kwargs,
                "input_size": spec.input_size, "mean": list(spec.mean), "std": list(spec.std),
                "interpolation": spec.interpolation},
            "num_classes": loaded.run.num_classes, "seed": loaded.run.seed,
            "suite": loaded.run.suite, "task": loaded.run.task,
            "metric": (loaded.metrics or {}).get("metric"), **classes}


def _export_timm(run_dir: Path, out: Path, base_dir) -> Path:
    from safetensors.torch import save

    loaded = load_run(run_dir, base_dir=base_dir, merge=True)
    # Plain copies: safetensors refuses views and tensors sharing memory.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in loaded.model.state_dict().items()}
    path = out / "model.safetensors"
    atomic_write_bytes(path, save(state, metadata={"arch": loaded.spec.arch,
                                                   "num_classes": str(loaded.run.num_classes)}))
    atomic_write_json(out / "vpeft_export.json", _export_record(loaded, "timm", [path.name]))
    return path


def _export_peft(run_dir: Path, out: Path, base_dir) -> Path:
    from safetensors.torch import save

    loaded = load_run(run_dir, base_dir=base_dir, merge=False)
    config, tensors = _PEFT_CONVERTERS[loaded.method.name](loaded)
    head = _classifier_name(loaded.model)
    prefix = "base_model.model."
    state = {prefix + k: v for k, v in tensors.items()}
    state.update({f"{prefix}{head}.{n}": p.detach().cpu().clone().contiguous()
                  for n, p in loaded.model.get_submodule(head).named_parameters()})
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": loaded.spec.arch,
              "inference_mode": True, "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
              "use_rslora": False, "use_dora": False, "modules_to_save": [head], **config}
    atomic_write_bytes(out / "adapter_model.safetensors", save(state, metadata={"format": "pt"}))
    atomic_write_json(out / "adapter_config.json", config)
    atomic_write_json(out / "vpeft_export.json",
                      _export_record(loaded, "peft", ["adapter_config.json", "adapter_model.safetensors"]))
    return out


def _is_peft_tuner(method: str) -> bool:
    from .methods import available_methods, get_method_class
    from .methods.hf_peft import PeftTunerMethod

    return method in available_methods() and issubclass(get_method_class(method), PeftTunerMethod)


def _export_peft_tuner(run_dir: Path, out: Path, base_dir) -> Path:
    """A peft-* run written by peft: the trained adapter and head copied into a `PeftModel` built with the
    run's peft config on the plain backbone, then `save_pretrained`."""
    import peft

    from .engine.train import build_run_model, seed_everything
    from .methods.hf_peft import ADAPTER

    loaded = load_run(run_dir, base_dir=base_dir, merge=False)
    head = _classifier_name(loaded.model)
    trained = read_trained_tensors(run_dir / TRAINED_TENSORS).tensors  # the adapter and the head
    seed_everything(loaded.run.seed)
    _, base, _ = build_run_model(loaded.run, loaded.training, base_dir)
    config = loaded.method.peft_config_for(base)
    config.modules_to_save = [head]
    peft_model = peft.get_peft_model(base, config)
    params = dict(peft_model.named_parameters())
    prefix = "base_model.model."
    with torch.no_grad():
        for name, value in trained.items():
            if name.startswith(head + "."):
                target = f"{prefix}{head}.modules_to_save.{ADAPTER}.{name[len(head) + 1:]}"
            else:
                target = prefix + name
            if target not in params:
                raise ArtifactError(f"{run_dir}: peft's {type(config).__name__} model has no tensor {target}")
            params[target].copy_(value)
    peft_model.save_pretrained(str(out))
    atomic_write_json(out / "vpeft_export.json",
                      _export_record(loaded, "peft", ["adapter_config.json", "adapter_model.safetensors"]))
    return out


def _classifier_name(model: torch.nn.Module) -> str:
    head = model.get_classifier()
    for name, module in model.named_modules():
        if module is head:
            return name
    raise ExportError(f"{type(model).__name__} has no classifier module to export")


def _lora_to_peft(loaded: LoadedRun) -> tuple[dict, dict]:
    """peft LoRA of rank len(targets) * r on each wrapped qkv: A = stacked A's, B = block-structured B's."""
    from .methods.lora import LoraQKV

    c = loaded.method.config
    layers = {n: m for n, m in loaded.model.named_modules() if isinstance(m, LoraQKV)}
    if not layers:
        raise ArtifactError(f"{loaded.run_dir}: the rebuilt LoRA model has no LoRA layer")
    tensors = {}
    with torch.no_grad():
        for name, layer in sorted(layers.items()):
            tensors[f"{name}.lora_A.weight"] = layer._stacked_A().detach().cpu().clone().contiguous()
            tensors[f"{name}.lora_B.weight"] = layer._block_B().detach().cpu().clone().contiguous()
    rank = len(layer.targets) * c.rank
    alpha = c.alpha * len(layer.targets)  # peft scales by lora_alpha / r: the same alpha / rank as ours
    config = {"r": rank, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
              "lora_dropout": c.dropout, "target_modules": sorted(layers)}
    return config, tensors


#: method name -> converter to (peft LoraConfig fields, adapter tensors without the peft prefix).
_PEFT_CONVERTERS = {"lora": _lora_to_peft}
