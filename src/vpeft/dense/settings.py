"""One dense run's settings, resolved from our config like an image run's (vpeft.config.resolve_run).

Dense suites (`kind: dense`) name a `layout` (coco, voc, ade20k), which fixes the task (instance
segmentation, detection, semantic segmentation), the recipe of the dense papers and the metric, and a
`protocol`. The real datasets' protocols are data below unless `config.protocols` defines them
(which wins): COCO 2017 train -> val, VOC 2007+2012 trainval -> VOC 2007 test, ADE20K training ->
validation. The embedded suites use `dense-mini`: train on the generated train800val200, evaluate the
final model on the generated test split, no augmentation (the split names the generator writes).

Recipe settings that the image track's `training:` keys cannot say (schedule milestones, warmup
iterations, iteration-based training, image scale, head width) live in the suite's `data:` block and
are validated by `vpeft.dense.recipes.RecipeOptions`.
"""

from __future__ import annotations

from ..config import ConfigError, resolve_run

#: Built-in protocols of the real dense datasets (split names as their layouts use them).
DENSE_PROTOCOLS = {
    "coco2017": {"train_split": "train2017", "eval_split": "val2017", "augmentation": "paper"},
    "voc0712": {"train_split": "trainval0712", "eval_split": "test2007", "augmentation": "paper"},
    "ade20k": {"train_split": "training", "eval_split": "validation", "augmentation": "paper"},
    "dense-mini": {"train_split": "train800val200", "eval_split": "test", "augmentation": "none"},
}

#: Layout -> (task kind, recipe, primary metric, all metrics it reports).
LAYOUTS = {
    "coco": ("instance", "cascade-mask-rcnn", "box_ap", ("box_ap", "mask_ap", "box_ap50", "mask_ap50")),
    "voc": ("detection", "retinanet", "box_ap50", ("box_ap50",)),
    "ade20k": ("semantic", "upernet", "miou", ("miou", "aacc", "macc")),
}

#: How each metric is shown (and what it is).
METRIC_TITLES = {
    "box_ap": "AP box (COCO AP@[.5:.95], %)",
    "mask_ap": "AP mask (COCO AP@[.5:.95], %)",
    "box_ap50": "AP box @0.5 (%)",
    "mask_ap50": "AP mask @0.5 (%)",
    "miou": "mIoU (%)",
    "aacc": "pixel accuracy (%)",
    "macc": "mean class accuracy (%)",
}


def layout_info(layout: str) -> tuple[str, str, str, tuple]:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown dense layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]


def resolve_dense_run(config: dict, suites: dict[str, dict], method_configs: dict[str, dict], suite: str,
                      method: str, task: str, seed: int) -> dict:
    """The complete settings of one dense run (`vpeft.dense.train.run_dense_training` takes them)."""
    if suites.get(suite, {}).get("kind") != "dense":
        raise ConfigError(f"suite '{suite}' is not a dense suite (kind: dense)")
    protocols = {**DENSE_PROTOCOLS, **config["protocols"]}
    run = resolve_run(dict(config, protocols=protocols), suites, method_configs, suite, method, task, seed)
    kind, recipe, metric, metrics = layout_info(run["layout"])
    entry = suites[suite]["tasks"][task] or {}
    run["data"] = {**run.get("data", {}), **(entry.get("data") or {})}
    run["dense"] = {"kind": kind, "recipe": run["data"].get("recipe", recipe), "metric": metric,
                    "metrics": list(metrics)}
    return run
