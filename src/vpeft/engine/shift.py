"""Distribution-shift evaluation and WiSE-FT weight-space ensembles of a finished run, without retraining.

* Shift targets: the run's final model is evaluated on other test sets of the same task (ImageNet-V2,
  -Sketch, -A, -R; the embedded suite's re-rendered tasks). A target that covers a subset of the source
  classes (ImageNet-A and -R: 200 of ImageNet's 1,000) has a class map, target label -> source label
  (`read_class_map`); the model's logits are restricted to the mapped source classes and their argmax
  is the predicted target label (as the datasets' own evaluation scripts do).
* WiSE-FT (Wortsman et al., CVPR 2022; Mai et al., CVPR 2025 for PEFT): for a run whose final model is
  the plain backbone architecture (full fine-tuning and every mergeable method, merged), every backbone
  tensor becomes theta0 + alpha (theta_ft - theta0), theta0 the frozen pretrained tensor, and the model
  is evaluated on the source test split and every target at each alpha. The task head stays the trained
  one at every alpha (the frozen backbone has none for the task); alpha = 1 is the run's own final model,
  so its source top-1 equals the run's metrics.json, and alpha = 0 is the frozen backbone under that head.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import DEFAULT_WISE_ALPHAS
from ..data.layouts import get_layout
from ..data.splits import DataError
from ..io import atomic_write_json
from ..provenance import provenance

SHIFT_SCHEMA = "vpeft.shift/1"


def read_class_map(path: str | Path, *, target_classes: int, source_classes: int,
                   target_names: list[str] | None = None) -> list[int]:
    """The source label of each target label, from a CSV `target,source[,name]` (lines starting with `#`
    are comments, e.g. where the mapping comes from). Every target label appears once, source labels are
    distinct and in range, and where the file names classes they must be the target's class folders."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"class map {path} not found") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    if not reader.fieldnames or not {"target", "source"} <= set(reader.fieldnames):
        raise DataError(f"{path}: expected a header 'target,source[,name]', got {reader.fieldnames}")
    mapping: dict[int, int] = {}
    names: dict[int, str] = {}
    for lineno, record in enumerate(reader, start=2):
        try:
            target, source = int(record["target"]), int(record["source"])
        except (TypeError, ValueError):
            raise DataError(f"{path}: data line {lineno - 1}: target and source must be integers, got {record}") from None
        if target in mapping:
            raise DataError(f"{path}: target label {target} is mapped twice")
        if not 0 <= source < source_classes:
            raise DataError(f"{path}: source label {source} outside [0, {source_classes}) of the source task")
        mapping[target] = source
        if record.get("name"):
            names[target] = record["name"]
    if sorted(mapping) != list(range(target_classes)):
        missing = sorted(set(range(target_classes)) - set(mapping))
        raise DataError(f"{path}: maps target labels {len(mapping)}, the target has {target_classes} classes "
                        f"(missing e.g. {missing[:5]}, or labels out of range)")
    if len(set(mapping.values())) != len(mapping):
        raise DataError(f"{path}: two target classes map to the same source class")
    if names and target_names is not None:
        wrong = [(t, names[t], target_names[t]) for t in sorted(names) if target_names[t] != names[t]]
        if wrong:
            t, expected, found = wrong[0]
            raise DataError(f"{path}: target label {t} is class '{expected}', but the target's class folder "
                            f"{t} is '{found}' ({len(wrong)} differ): is the copy complete?")
    return [mapping[t] for t in range(target_classes)]


class SubsetLogits(torch.nn.Module):
    """The model's logits at the mapped source classes, in target label order."""

    def __init__(self, model: torch.nn.Module, source_labels: list[int]):
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.tensor(source_labels, dtype=torch.long), persistent=False)

    def forward(self, x):
        return self.model(x).index_select(1, self.index)


def plain_backbone_keys(model: torch.nn.Module, frozen: torch.nn.Module) -> list[str] | None:
    """Backbone tensors WiSE interpolates (head excluded), or None when `model` is not the plain
    architecture of `frozen` (a method whose layers stay in the model: nothing to interpolate with)."""
    tuned, base = model.state_dict(), frozen.state_dict()
    if tuned.keys() != base.keys() or any(tuned[k].shape != base[k].shape for k in tuned):
        return None
    head = {f"{n}." for n, m in model.named_modules() if m is model.get_classifier()}
    return [k for k in tuned if tuned[k].is_floating_point() and not any(k.startswith(h) for h in head)]


@torch.no_grad()
def interpolate(model: torch.nn.Module, theta0: dict, theta_ft: dict, keys: list[str], alpha: float) -> None:
    state = {k: theta0[k] + alpha * (theta_ft[k] - theta0[k]) if alpha not in (0.0, 1.0) else
             (theta_ft[k] if alpha == 1.0 else theta0[k]) for k in keys}
    model.load_state_dict(state, strict=False)


def evaluate_run_shift(run_dir: str | Path, targets: dict[str, dict], out_path: str | Path, *,
                       alphas=DEFAULT_WISE_ALPHAS, wise: bool = True, base_dir: str | Path = ".", device: str | None = None,
                       threads: int = 1) -> dict:
    """Evaluate the run in `run_dir` on its source test split and on `targets` ({name: {index, layout,
    num_classes, class_map (path or None)}}), at every WiSE alpha where the run allows it; write `out_path`."""
    from ..export import load_run
    from .build import build_run_model, seed_everything, set_up_torch
    from .train import autocast_context, evaluate

    run_dir = Path(run_dir)
    dev = set_up_torch(threads, device)
    loaded = load_run(run_dir, base_dir=base_dir)
    run, tc, spec = loaded.run, loaded.training, loaded.spec
    autocast = autocast_context(dev, tc.precision_on(dev))
    metrics = loaded.metrics or {}

    def loader(for_run):
        dataset = get_layout(for_run.layout).eval_dataset(for_run, spec, tc)
        return DataLoader(dataset, batch_size=tc.eval_batch_size, shuffle=False)

    sets = {"source": (loader(run), None)}
    described = {}
    for name, target in targets.items():
        target_run = replace(run, layout=target["layout"], num_classes=int(target["num_classes"]),
                             data={"index": target["index"]},
                             protocol={**run.protocol, "eval_split": "test", "name": f"shift:{name}"})
        index = json.loads(Path(target["index"]).read_text())
        subset = None
        if target.get("class_map"):
            subset = read_class_map(target["class_map"], target_classes=int(target["num_classes"]),
                                    source_classes=run.num_classes, target_names=index.get("class_names"))
        elif int(target["num_classes"]) != run.num_classes:
            raise DataError(f"shift target '{name}' has {target['num_classes']} classes, the source task "
                            f"{run.num_classes}: give it a class map (shift_targets.{name}.classes)")
        sets[name] = (loader(target_run), subset)
        described[name] = {"suite": target.get("suite"), "index": target["index"], "num_classes": target["num_classes"],
                           "class_map": target.get("class_map"), "mapped_classes": len(subset) if subset else None}

    model = loaded.model.to(dev)
    keys = None
    reason = "off for this suite (wise: false)"
    if wise:
        seed_everything(run.seed)
        _, frozen, _ = build_run_model(run, tc, base_dir)
        keys = plain_backbone_keys(model, frozen)
        reason = None if keys is not None else (
            f"method '{run.method}' keeps its own layers in the final model (not mergeable): no weights to interpolate")
        theta0 = {k: v.to(dev) for k, v in frozen.state_dict().items()} if keys is not None else None
        del frozen
    theta_ft = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grid = sorted({float(a) for a in alphas} | {1.0}) if keys is not None else [1.0]

    start = time.perf_counter()
    points = []
    for alpha in grid:
        if keys is not None:
            interpolate(model, theta0, theta_ft, keys, alpha)
        scores = {}
        for name, (data, subset) in sets.items():
            net = SubsetLogits(model, subset).to(dev) if subset else model
            top1, n = evaluate(net, data, dev, autocast=autocast)
            scores[name] = {"top1": top1, "num_images": n}
        points.append({"alpha": alpha, "source": scores.pop("source"), "targets": scores})
    final = next(p for p in points if p["alpha"] == 1.0)
    run_top1 = (metrics.get("metric") or {}).get("value")
    record = {
        "schema": SHIFT_SCHEMA, "status": "ok",
        **{k: getattr(run, k) for k in ("suite", "task", "method", "seed")},
        "fewshot": (run.protocol or {}).get("fewshot"),
        "run": str(run_dir / "metrics.json"),
        "source": {**final["source"], "split": run.protocol.get("eval_split"), "run_top1": run_top1,
                   "matches_run": run_top1 is not None and abs(final["source"]["top1"] - run_top1) < 1e-12},
        "targets": {name: {**described[name], **final["targets"][name]} for name in targets},
        "target_mean": (sum(final["targets"][n]["top1"] for n in targets) / len(targets)) if targets else None,
        "wise": {"alphas": grid, "points": points, "interpolated_tensors": len(keys)} if keys is not None else
                {"alphas": [], "points": [], "reason": reason},
        "eval_seconds": time.perf_counter() - start,
        "provenance": {**provenance(threads), "device": str(dev)},
    }
    atomic_write_json(out_path, record)
    return record
