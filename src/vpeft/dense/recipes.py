"""The dense papers' recipes as generated mmengine configs (mmdet 3 / mmseg 1 syntax), from our settings.

Three recipes, as the Mona repository's configs run them (catalog section 3.4), written here from
those facts rather than copied:

* `cascade-mask-rcnn` (COCO): FPN (256) + RPN + 3-stage Cascade RoI head with 4-conv-1-fc box heads
  (GIoU loss, class-specific regression) and a 4-conv FCN mask head; DETR-style multi-scale
  augmentation (short side 480-800, or 400-600 then a 384-600 crop then 480-800), 3x schedule: 36
  epochs, LR x0.1 at 27 and 33, linear warmup 500 iterations; AdamW lr 1e-4, wd 0.05; batch 16.
* `retinanet` (PASCAL VOC 07+12): Swin stages 1-3 -> FPN (256, 5 levels, extra convs on input) ->
  RetinaHead (4 convs, focal loss, L1); (1000, 600) resize + flip; VOC07+12 trainval repeated 3x, 4
  epochs, LR x0.1 after 3; AdamW lr 1e-4, wd 0.05; VOC07 test, mAP@0.5 (11-point, as VOC2007).
* `upernet` (ADE20K): UPerHead (512, pool scales 1/2/3/6) + auxiliary FCN head (0.4) on stage 3;
  512x512 crops of random resizes (ratio 0.5-2 of 2048x512), flip, photometric distortion; 160k
  iterations, linear warmup 1,500, poly decay; AdamW lr 6e-5, wd 0.01; batch 16; single-scale mIoU.

Every recipe: AdamW with no weight decay on norms and relative position bias tables (Swin's
`paramwise_cfg`), the backbone `VPeftSwin` (vpeft.dense.backbone) built from the run's backbone,
method and hyper-parameters. The embedded suites use the same recipes at CPU size through the
suite's `data:` options (`RecipeOptions`: image scale, head width, schedule); the real suites use the
defaults. `build_config` returns a plain dict (mmengine `Config` input); `write_config` saves it as a
Python config file that mmdet's / mmseg's own `tools/train.py` can run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError

NORM_DECAY_FREE = {"absolute_pos_embed": {"decay_mult": 0.0}, "relative_position_bias_table": {"decay_mult": 0.0},
                   "norm": {"decay_mult": 0.0}}


@dataclass
class RecipeOptions:
    """Recipe knobs a dense suite may set in its `data:` block; `None` means the paper's value.

    image_scale: detection: [long, short] side of the test resize (paper COCO 1333x800, VOC 1000x600);
        segmentation: the crop size [w, h] (paper 512x512).
    width: neck / head channels (FPN 256; UPerHead 512).
    fc_width: fully connected width of the box heads (1024).
    head_convs: convolutions of the box heads, mask head and RetinaNet towers (4).
    anchor_scale: base anchor scale in stride units (RPN 8, RetinaNet octave base 4).
    out_indices: backbone stages fed to the neck.
    milestones: epochs after which the LR drops x0.1 (epoch-based recipes).
    warmup_iters: iterations of linear LR warmup.
    max_iters: iterations of iteration-based recipes (UperNet); epochs come from `training.epochs`.
    repeat: times the training set is repeated per epoch (VOC: 3).
    roi_samples: RoIs sampled per image for the box heads (512); rpn_proposals: proposals kept (2000).
    norm: norm layer of the heads (BN, SyncBN; default: SyncBN as the papers when several GPU processes
        train, else BN; SyncBN needs GPUs).
    processes: data-parallel processes on one node (default: the job's GPUs, 1 without a GPU); set it to
        run several CPU processes (gloo), e.g. to test the multi-process path.
    images_per_process: training images per process and step (the papers: 2 per GPU); the global batch
        is images_per_process x processes and the lr, given for `training.batch_size` images, is
        scaled linearly to it (mmengine's auto_scale_lr).
    amp: mixed precision on a GPU (the papers' fp16); ignored on CPU.
    log_interval: iterations between log lines.
    checkpoint_interval: epochs (or iterations) between resumable checkpoints; null: none.
    """

    recipe: str | None = None
    image_scale: list | None = None
    width: int | None = None
    fc_width: int | None = None
    head_convs: int | None = None
    anchor_scale: int | None = None
    out_indices: list | None = None
    milestones: list | None = None
    warmup_iters: int | None = None
    max_iters: int | None = None
    repeat: int | None = None
    roi_samples: int | None = None
    rpn_proposals: int | None = None
    norm: str | None = None
    processes: int | None = None
    images_per_process: int = 2
    amp: bool = True
    log_interval: int = 50
    checkpoint_interval: int | None = 1

    @classmethod
    def from_dict(cls, values: dict, where: str = "data") -> "RecipeOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown dense recipe option(s) {unknown}; valid: {', '.join(sorted(known))}")
        options = cls(**values)
        if options.norm not in (None, "BN", "SyncBN"):
            raise ConfigError(f"{where}.norm must be BN or SyncBN, got {options.norm!r}")
        for key in ("processes", "images_per_process"):
            value = getattr(options, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{where}.{key} must be a positive integer, got {value!r}")
        return options


def _pick(value, default):
    return default if value is None else value


def _backbone(run: dict, out_indices, base_dir: str) -> dict:
    training = run["training"]
    return {"type": "VPeftSwin", "backbone": run["backbone"], "method": run["method"],
            "method_hparams": run["method_hparams"], "out_indices": list(out_indices),
            "drop_path_rate": float(training.get("drop_path", 0.2)), "pretrained": bool(run["pretrained"]),
            "base_dir": str(base_dir)}


def _channels(run: dict, out_indices) -> list[int]:
    """Channels of the backbone's stages (Swin doubles the width at every stage)."""
    import timm

    from . import demo_swin  # noqa: F401

    # on the meta device: shapes only, no memory, no init
    model = timm.create_model(run["backbone"]["arch"], pretrained=False, num_classes=0, device="meta",
                              **(run["backbone"].get("model_kwargs") or {}))
    widths = [int(stage.blocks[-1].norm1.normalized_shape[0]) for stage in model.layers]
    return [widths[i] for i in out_indices]


def _mean_std(run: dict) -> dict:
    bb = run["backbone"]
    return {"mean": [255.0 * m for m in bb.get("mean", (0.485, 0.456, 0.406))],
            "std": [255.0 * s for s in bb.get("std", (0.229, 0.224, 0.225))], "bgr_to_rgb": True}


def _optim(run: dict, opts: RecipeOptions, device: str) -> dict:
    t = run["training"]
    wrapper = "AmpOptimWrapper" if opts.amp and device == "cuda" else "OptimWrapper"
    return {"type": wrapper,
            "optimizer": {"type": "AdamW", "lr": float(t["lr"]), "betas": (0.9, 0.999),
                          "weight_decay": float(t["weight_decay"])},
            "paramwise_cfg": {"custom_keys": dict(NORM_DECAY_FREE)}}


#: The papers' schedule of each recipe: LR milestones (epochs) or max_iters, and warm-up iterations.
SCHEDULES = {"cascade-mask-rcnn": {"milestones": [27, 33], "warmup_iters": 500},
             "retinanet": {"milestones": [3], "warmup_iters": 500},
             "upernet": {"max_iters": 160_000, "warmup_iters": 1500}}


def check_schedule(run: dict) -> None:
    """The run's schedule fits: milestones inside the epochs, warm-up below max_iters (checked when the
    workflow loads, vpeft.config.check_run_settings, and again when the config is built)."""
    opts = recipe_options(run)
    schedule = SCHEDULES.get(opts.recipe or run["dense"]["recipe"])
    where = f"suites.{run['suite']}.data"
    if schedule is None:
        return  # an unknown recipe is refused by build_config, naming the valid ones
    if "milestones" in schedule:
        epochs = int(run["training"]["epochs"])
        milestones = [int(m) for m in _pick(opts.milestones, schedule["milestones"])]
        if any(not 0 < m < epochs for m in milestones):
            raise ConfigError(f"{where}.milestones: {milestones} must lie inside the {epochs} epochs "
                              f"(suites.{run['suite']}.training.epochs): each LR drop after epoch 0 and before the last")
        if int(_pick(opts.warmup_iters, schedule["warmup_iters"])) < 0:
            raise ConfigError(f"{where}.warmup_iters must not be negative")
    else:
        iters = int(_pick(opts.max_iters, schedule["max_iters"]))
        warmup = int(_pick(opts.warmup_iters, schedule["warmup_iters"]))
        if not 0 <= warmup < iters:
            raise ConfigError(f"{where}.warmup_iters: {warmup} must be below max_iters {iters}")


def _epoch_defaults(recipe: str) -> dict:
    return {"milestones_default": SCHEDULES[recipe]["milestones"], "warmup_default": SCHEDULES[recipe]["warmup_iters"]}


def _epoch_schedule(run: dict, opts: RecipeOptions, milestones_default: list, warmup_default: int) -> tuple:
    check_schedule(run)
    epochs = int(run["training"]["epochs"])
    milestones = [int(m) for m in _pick(opts.milestones, milestones_default)]
    warmup = int(_pick(opts.warmup_iters, warmup_default))
    schedulers = [{"type": "LinearLR", "start_factor": 0.001, "by_epoch": False, "begin": 0, "end": warmup}] \
        if warmup else []
    schedulers.append({"type": "MultiStepLR", "begin": 0, "end": epochs, "by_epoch": True,
                       "milestones": milestones, "gamma": 0.1})
    return {"type": "EpochBasedTrainLoop", "max_epochs": epochs, "val_interval": epochs + 1}, schedulers


def _loaders(run: dict, train_set: dict, test_set: dict, sampler: str = "DefaultSampler",
             batch_sampler: dict | None = None) -> tuple[dict, dict]:
    t = run["training"]
    workers = t.get("num_workers", 0)
    workers = 0 if workers == "auto" else int(workers)  # dense suites set their own; the image default is auto
    train = {"batch_size": int(t["batch_size"]), "num_workers": workers, "persistent_workers": workers > 0,
             "sampler": {"type": sampler, "shuffle": True}, "dataset": train_set}
    if batch_sampler:
        train["batch_sampler"] = batch_sampler
    test = {"batch_size": int(t.get("eval_batch_size", 1)), "num_workers": workers, "persistent_workers": workers > 0,
            "drop_last": False, "sampler": {"type": "DefaultSampler", "shuffle": False}, "dataset": test_set}
    return train, test


# -- COCO: Cascade Mask R-CNN 3x ------------------------------------------------------------------------------
def cascade_mask_rcnn(run: dict, classes: list[str], opts: RecipeOptions, base_dir: str, device: str) -> dict:
    out_indices = _pick(opts.out_indices, [0, 1, 2, 3])
    width, fc, convs = _pick(opts.width, 256), _pick(opts.fc_width, 1024), _pick(opts.head_convs, 4)
    n = len(classes)
    samples, proposals = _pick(opts.roi_samples, 512), _pick(opts.rpn_proposals, 2000)
    norm = {"type": opts.norm, "requires_grad": True}
    stds = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    bbox_heads = [{
        "type": "ConvFCBBoxHead", "num_shared_convs": convs, "num_shared_fcs": 1, "in_channels": width,
        "conv_out_channels": width, "fc_out_channels": fc, "roi_feat_size": 7, "num_classes": n,
        "bbox_coder": {"type": "DeltaXYWHBBoxCoder", "target_means": [0.0] * 4, "target_stds": std},
        "reg_class_agnostic": False, "reg_decoded_bbox": True, "norm_cfg": norm,
        "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0},
        "loss_bbox": {"type": "GIoULoss", "loss_weight": 10.0}} for std in stds]
    rcnn_train = [{
        "assigner": {"type": "MaxIoUAssigner", "pos_iou_thr": iou, "neg_iou_thr": iou, "min_pos_iou": iou,
                     "match_low_quality": False, "ignore_iof_thr": -1},
        "sampler": {"type": "RandomSampler", "num": samples, "pos_fraction": 0.25, "neg_pos_ub": -1,
                    "add_gt_as_proposals": True},
        "mask_size": 28, "pos_weight": -1, "debug": False} for iou in (0.5, 0.6, 0.7)]
    model = {
        "type": "CascadeRCNN",
        "data_preprocessor": {"type": "DetDataPreprocessor", **_mean_std(run), "pad_mask": True, "pad_size_divisor": 32},
        "backbone": _backbone(run, out_indices, base_dir),
        "neck": {"type": "FPN", "in_channels": _channels(run, out_indices), "out_channels": width, "num_outs": 5},
        "rpn_head": {
            "type": "RPNHead", "in_channels": width, "feat_channels": width,
            "anchor_generator": {"type": "AnchorGenerator", "scales": [_pick(opts.anchor_scale, 8)],
                                 "ratios": [0.5, 1.0, 2.0], "strides": [4, 8, 16, 32, 64]},
            "bbox_coder": {"type": "DeltaXYWHBBoxCoder", "target_means": [0.0] * 4, "target_stds": [1.0] * 4},
            "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 1.0},
            "loss_bbox": {"type": "SmoothL1Loss", "beta": 1.0 / 9.0, "loss_weight": 1.0}},
        "roi_head": {
            "type": "CascadeRoIHead", "num_stages": 3, "stage_loss_weights": [1, 0.5, 0.25],
            "bbox_roi_extractor": {"type": "SingleRoIExtractor", "out_channels": width, "featmap_strides": [4, 8, 16, 32],
                                   "roi_layer": {"type": "RoIAlign", "output_size": 7, "sampling_ratio": 0}},
            "bbox_head": bbox_heads,
            "mask_roi_extractor": {"type": "SingleRoIExtractor", "out_channels": width, "featmap_strides": [4, 8, 16, 32],
                                   "roi_layer": {"type": "RoIAlign", "output_size": 14, "sampling_ratio": 0}},
            "mask_head": {"type": "FCNMaskHead", "num_convs": convs, "in_channels": width, "conv_out_channels": width,
                          "num_classes": n,
                          "loss_mask": {"type": "CrossEntropyLoss", "use_mask": True, "loss_weight": 1.0}}},
        "train_cfg": {
            "rpn": {"assigner": {"type": "MaxIoUAssigner", "pos_iou_thr": 0.7, "neg_iou_thr": 0.3, "min_pos_iou": 0.3,
                                 "match_low_quality": True, "ignore_iof_thr": -1},
                    "sampler": {"type": "RandomSampler", "num": samples // 2, "pos_fraction": 0.5, "neg_pos_ub": -1,
                                "add_gt_as_proposals": False},
                    "allowed_border": 0, "pos_weight": -1, "debug": False},
            "rpn_proposal": {"nms_pre": proposals, "max_per_img": proposals, "nms": {"type": "nms", "iou_threshold": 0.7},
                             "min_bbox_size": 0},
            "rcnn": rcnn_train},
        "test_cfg": {
            "rpn": {"nms_pre": proposals // 2, "max_per_img": proposals // 2,
                    "nms": {"type": "nms", "iou_threshold": 0.7}, "min_bbox_size": 0},
            "rcnn": {"score_thr": 0.05, "nms": {"type": "nms", "iou_threshold": 0.5}, "max_per_img": 100,
                     "mask_thr_binary": 0.5}},
    }
    long_side, short_side = _pick(opts.image_scale, [1333, 800])
    paper = run["protocol"].get("augmentation") != "none"
    if paper and opts.image_scale is None:  # DETR / Sparse R-CNN multi-scale augmentation
        scales = [(1333, s) for s in range(480, 801, 32)]
        augment = [{"type": "RandomFlip", "prob": 0.5},
                   {"type": "RandomChoice", "transforms": [
                       [{"type": "RandomChoiceResize", "scales": scales, "keep_ratio": True}],
                       [{"type": "RandomChoiceResize", "scales": [(4200, 400), (4200, 500), (4200, 600)],
                         "keep_ratio": True},
                        {"type": "RandomCrop", "crop_type": "absolute_range", "crop_size": (384, 600),
                         "allow_negative_crop": True},
                        {"type": "RandomChoiceResize", "scales": scales, "keep_ratio": True}]]}]
    else:
        augment = [{"type": "Resize", "scale": (long_side, short_side), "keep_ratio": True}]
        if paper:
            augment.append({"type": "RandomFlip", "prob": 0.5})
    train_pipeline = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations", "with_bbox": True, "with_mask": True},
                      *augment, {"type": "PackDetInputs"}]
    test_pipeline = [{"type": "LoadImageFromFile"}, {"type": "Resize", "scale": (long_side, short_side), "keep_ratio": True},
                     {"type": "LoadAnnotations", "with_bbox": True, "with_mask": True},
                     {"type": "PackDetInputs", "meta_keys": ("img_id", "img_path", "ori_shape", "img_shape",
                                                             "scale_factor")}]
    task_dir = run["task_dir"]
    train_split, eval_split = run["protocol"]["train_split"], run["protocol"]["eval_split"]
    meta = {"classes": tuple(classes)}

    def dataset(split, pipeline, test_mode):
        return {"type": "CocoDataset", "data_root": task_dir, "ann_file": f"annotations/instances_{split}.json",
                "data_prefix": {"img": f"{split}/"}, "metainfo": meta, "test_mode": test_mode,
                "filter_cfg": None if test_mode else {"filter_empty_gt": True, "min_size": 32}, "pipeline": pipeline}

    train_loader, test_loader = _loaders(run, dataset(train_split, train_pipeline, False),
                                         dataset(eval_split, test_pipeline, True),
                                         batch_sampler={"type": "AspectRatioBatchSampler"})
    train_cfg, schedulers = _epoch_schedule(run, opts, **_epoch_defaults("cascade-mask-rcnn"))
    return {
        "default_scope": "mmdet", "model": model, "train_dataloader": train_loader, "train_cfg": train_cfg,
        "optim_wrapper": _optim(run, opts, device), "param_scheduler": schedulers,
        "test_dataloader": test_loader, "test_cfg": {"type": "TestLoop"},
        "test_evaluator": {"type": "CocoMetric", "ann_file": str(Path(task_dir) / f"annotations/instances_{eval_split}.json"),
                           "metric": ["bbox", "segm"], "format_only": False},
    }


# -- VOC: RetinaNet ------------------------------------------------------------------------------------------
def retinanet(run: dict, classes: list[str], opts: RecipeOptions, base_dir: str, device: str) -> dict:
    from .datasets import voc_image_sets

    out_indices = _pick(opts.out_indices, [1, 2, 3])
    width, convs = _pick(opts.width, 256), _pick(opts.head_convs, 4)
    model = {
        "type": "RetinaNet",
        "data_preprocessor": {"type": "DetDataPreprocessor", **_mean_std(run), "pad_size_divisor": 32},
        "backbone": _backbone(run, out_indices, base_dir),
        "neck": {"type": "FPN", "in_channels": _channels(run, out_indices), "out_channels": width, "start_level": 0,
                 "add_extra_convs": "on_input", "num_outs": 5},
        "bbox_head": {
            "type": "RetinaHead", "num_classes": len(classes), "in_channels": width, "stacked_convs": convs,
            "feat_channels": width,
            "anchor_generator": {"type": "AnchorGenerator", "octave_base_scale": _pick(opts.anchor_scale, 4),
                                 "scales_per_octave": 3, "ratios": [0.5, 1.0, 2.0], "strides": [8, 16, 32, 64, 128]},
            "bbox_coder": {"type": "DeltaXYWHBBoxCoder", "target_means": [0.0] * 4, "target_stds": [1.0] * 4},
            "loss_cls": {"type": "FocalLoss", "use_sigmoid": True, "gamma": 2.0, "alpha": 0.25, "loss_weight": 1.0},
            "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0}},
        "train_cfg": {"assigner": {"type": "MaxIoUAssigner", "pos_iou_thr": 0.5, "neg_iou_thr": 0.4, "min_pos_iou": 0,
                                   "ignore_iof_thr": -1},
                      "sampler": {"type": "PseudoSampler"}, "allowed_border": -1, "pos_weight": -1, "debug": False},
        "test_cfg": {"nms_pre": 1000, "min_bbox_size": 0, "score_thr": 0.05, "nms": {"type": "nms", "iou_threshold": 0.5},
                     "max_per_img": 100},
    }
    scale = tuple(_pick(opts.image_scale, [1000, 600]))
    paper = run["protocol"].get("augmentation") != "none"
    train_pipeline = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations", "with_bbox": True},
                      {"type": "Resize", "scale": scale, "keep_ratio": True},
                      *([{"type": "RandomFlip", "prob": 0.5}] if paper else []), {"type": "PackDetInputs"}]
    test_pipeline = [{"type": "LoadImageFromFile"}, {"type": "Resize", "scale": scale, "keep_ratio": True},
                     {"type": "LoadAnnotations", "with_bbox": True},
                     {"type": "PackDetInputs", "meta_keys": ("img_id", "img_path", "ori_shape", "img_shape",
                                                             "scale_factor")}]
    task_dir = run["task_dir"]

    def dataset(split, pipeline, test_mode):
        parts = [{"type": "VOCDataset", "data_root": task_dir, "ann_file": f"{year}/ImageSets/Main/{image_set}.txt",
                  "data_prefix": {"sub_data_root": f"{year}/"}, "test_mode": test_mode, "pipeline": pipeline,
                  "filter_cfg": None if test_mode else {"filter_empty_gt": True, "min_size": 32, "bbox_min_size": 32}}
                 for year, image_set in voc_image_sets(split)]
        return parts[0] if len(parts) == 1 else {"type": "ConcatDataset", "ignore_keys": ["dataset_type"],
                                                  "datasets": parts}

    train_set = dataset(run["protocol"]["train_split"], train_pipeline, False)
    repeat = int(_pick(opts.repeat, 3))
    if repeat > 1:
        train_set = {"type": "RepeatDataset", "times": repeat, "dataset": train_set}
    train_loader, test_loader = _loaders(run, train_set, dataset(run["protocol"]["eval_split"], test_pipeline, True),
                                         batch_sampler={"type": "AspectRatioBatchSampler"})
    train_cfg, schedulers = _epoch_schedule(run, opts, **_epoch_defaults("retinanet"))
    return {
        "default_scope": "mmdet", "model": model, "train_dataloader": train_loader, "train_cfg": train_cfg,
        "optim_wrapper": _optim(run, opts, device), "param_scheduler": schedulers,
        "test_dataloader": test_loader, "test_cfg": {"type": "TestLoop"},
        "test_evaluator": {"type": "VOCMetric", "metric": "mAP", "eval_mode": "11points"},
    }


# -- ADE20K: UperNet 160k --------------------------------------------------------------------------------------
def upernet(run: dict, classes: list[str], opts: RecipeOptions, base_dir: str, device: str) -> dict:
    out_indices = _pick(opts.out_indices, [0, 1, 2, 3])
    channels = _channels(run, out_indices)
    width = _pick(opts.width, 512)
    n = len(classes)
    crop = tuple(_pick(opts.image_scale, [512, 512]))
    norm = {"type": opts.norm, "requires_grad": True}
    model = {
        "type": "EncoderDecoder",
        "data_preprocessor": {"type": "SegDataPreProcessor", **_mean_std(run), "pad_val": 0, "seg_pad_val": 255,
                              "size": crop, "test_cfg": {"size_divisor": 32}},
        "backbone": _backbone(run, out_indices, base_dir),
        "decode_head": {"type": "UPerHead", "in_channels": channels, "in_index": list(range(len(channels))),
                        "pool_scales": (1, 2, 3, 6), "channels": width, "dropout_ratio": 0.1, "num_classes": n,
                        "norm_cfg": norm, "align_corners": False,
                        "loss_decode": {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0}},
        "auxiliary_head": {"type": "FCNHead", "in_channels": channels[-2], "in_index": len(channels) - 2,
                           "channels": width // 2, "num_convs": 1, "concat_input": False, "dropout_ratio": 0.1,
                           "num_classes": n, "norm_cfg": norm, "align_corners": False,
                           "loss_decode": {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 0.4}},
        "train_cfg": {}, "test_cfg": {"mode": "whole"},
    }
    resize_scale = (crop[0] * 4, crop[1]) if opts.image_scale is None else crop
    paper = run["protocol"].get("augmentation") != "none"
    augment = [{"type": "RandomResize", "scale": resize_scale, "ratio_range": (0.5, 2.0), "keep_ratio": True},
               {"type": "RandomCrop", "crop_size": crop, "cat_max_ratio": 0.75},
               {"type": "RandomFlip", "prob": 0.5}, {"type": "PhotoMetricDistortion"}] if paper else \
        [{"type": "Resize", "scale": resize_scale, "keep_ratio": True}]
    train_pipeline = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations", "reduce_zero_label": True},
                      *augment, {"type": "PackSegInputs"}]
    test_pipeline = [{"type": "LoadImageFromFile"}, {"type": "Resize", "scale": resize_scale, "keep_ratio": True},
                     {"type": "LoadAnnotations", "reduce_zero_label": True}, {"type": "PackSegInputs"}]
    task_dir = run["task_dir"]
    meta = {"classes": tuple(classes), "palette": [[(37 * i) % 256, (91 * i) % 256, (151 * i) % 256] for i in range(n)]}

    def dataset(split, pipeline):
        out = {"type": "ADE20KDataset", "data_root": task_dir, "reduce_zero_label": True,
               "data_prefix": {"img_path": f"images/{split}", "seg_map_path": f"annotations/{split}"},
               "pipeline": pipeline}
        if n != 150:  # a generated set in ADE's format with its own classes (ADE20KDataset fixes its 150)
            out.update(type="BaseSegDataset", img_suffix=".jpg", seg_map_suffix=".png", metainfo=meta)
        return out

    train_loader, test_loader = _loaders(run, dataset(run["protocol"]["train_split"], train_pipeline),
                                         dataset(run["protocol"]["eval_split"], test_pipeline),
                                         sampler="InfiniteSampler")
    test_loader["batch_size"] = 1  # whole-image inference on images of different sizes
    check_schedule(run)
    iters = int(_pick(opts.max_iters, SCHEDULES["upernet"]["max_iters"]))
    warmup = int(_pick(opts.warmup_iters, SCHEDULES["upernet"]["warmup_iters"]))
    schedulers = ([{"type": "LinearLR", "start_factor": 1e-6, "by_epoch": False, "begin": 0, "end": warmup}] if warmup
                  else []) + [{"type": "PolyLR", "eta_min": 0.0, "power": 1.0, "begin": warmup, "end": iters,
                               "by_epoch": False}]
    return {
        "default_scope": "mmseg", "model": model, "train_dataloader": train_loader,
        "train_cfg": {"type": "IterBasedTrainLoop", "max_iters": iters, "val_interval": iters + 1},
        "optim_wrapper": _optim(run, opts, device), "param_scheduler": schedulers,
        "test_dataloader": test_loader, "test_cfg": {"type": "TestLoop"},
        "test_evaluator": {"type": "IoUMetric", "iou_metrics": ["mIoU"]},
    }


RECIPES = {"cascade-mask-rcnn": cascade_mask_rcnn, "retinanet": retinanet, "upernet": upernet}


def recipe_options(run: dict) -> RecipeOptions:
    return RecipeOptions.from_dict(dict(run.get("data", {})), f"suites.{run['suite']}.data")


def batch_plan(run: dict, processes: int) -> dict:
    """Per-process and global batch and the linear lr scale that mmengine's auto_scale_lr applies: the
    config's lr is given for `training.batch_size` images per step (the papers': 8 GPUs x 2 = 16)."""
    per_process = recipe_options(run).images_per_process
    base = int(run["training"]["batch_size"])
    lr = float(run["training"]["lr"])
    scale = per_process * processes / base
    return {"processes": processes, "images_per_process": per_process, "global_batch": per_process * processes,
            "base_batch_size": base, "lr_scale": scale, "base_lr": lr, "lr": lr * scale}


def build_config(run: dict, classes: list[str], *, work_dir: str | Path, base_dir: str | Path = ".",
                 device: str = "cpu", processes: int = 1) -> dict:
    """The complete mmengine config of one dense run (model, data, schedule, evaluator, runtime) for
    `processes` data-parallel processes on one node (more than one: mmengine's `pytorch` launcher)."""
    opts = recipe_options(run)
    if opts.norm is None:  # the papers' SyncBN across GPUs; SyncBatchNorm has no CPU kernels
        opts = dataclasses.replace(opts, norm="SyncBN" if processes > 1 and device == "cuda" else "BN")
    elif opts.norm == "SyncBN" and processes > 1 and device != "cuda":
        raise ConfigError(f"suites.{run['suite']}.data.norm: SyncBN needs GPUs; use BN for {processes} CPU processes")
    recipe = opts.recipe or run["dense"]["recipe"]
    if recipe not in RECIPES:
        raise ConfigError(f"suites.{run['suite']}.data.recipe: unknown dense recipe {recipe!r}; valid: "
                          f"{', '.join(RECIPES)}")
    if len(classes) != run["num_classes"]:
        raise ConfigError(f"{run['suite']}/{run['task']}: the data has {len(classes)} classes, the config says "
                          f"num_classes {run['num_classes']}")
    cfg = RECIPES[recipe](run, list(classes), opts, str(base_dir), device)
    interval = opts.checkpoint_interval
    by_epoch = cfg["train_cfg"]["type"] == "EpochBasedTrainLoop"
    cfg.update({
        "work_dir": str(work_dir),
        "custom_imports": {"imports": ["vpeft.dense.backbone"], "allow_failed_imports": False},
        "default_hooks": {
            "timer": {"type": "IterTimerHook"},
            "logger": {"type": "LoggerHook", "interval": int(opts.log_interval)},
            "param_scheduler": {"type": "ParamSchedulerHook"},
            # vpeft.dense.checkpoints: atomic saves; the previous checkpoint goes only once the next is complete
            "checkpoint": ({"type": "AtomicCheckpointHook", "interval": int(interval), "by_epoch": by_epoch,
                            "max_keep_ckpts": 1} if interval else None),
            "sampler_seed": {"type": "DistSamplerSeedHook"},
        },
        "env_cfg": {"cudnn_benchmark": False, "mp_cfg": {"mp_start_method": "fork", "opencv_num_threads": 0},
                    "dist_cfg": {"backend": "nccl" if device == "cuda" else "gloo"}},
        "log_processor": {"type": "LogProcessor", "window_size": 50, "by_epoch": by_epoch},
        "log_level": "INFO",
        "randomness": {"seed": int(run["seed"]), "deterministic": False},
        "launcher": "pytorch" if processes > 1 else "none",
        "resume": bool(interval),
        "load_from": None,
        # the lr is given for training.batch_size images per step; mmengine scales it to
        # images_per_process x processes (linear scaling rule) and logs the factor
        "auto_scale_lr": {"enable": True, "base_batch_size": int(run["training"]["batch_size"])},
    })
    cfg["train_dataloader"]["batch_size"] = int(opts.images_per_process)
    if processes > 1:
        # frozen backbones and heads without positives leave parameters without gradients in some steps;
        # a CPU module takes no device_ids
        cfg["model_wrapper_cfg"] = {"type": "MMDistributedDataParallel", "broadcast_buffers": False,
                                    "find_unused_parameters": True,
                                    **({} if device == "cuda" else {"device_ids": None})}
    return cfg


def write_config(cfg: dict, path: str | Path) -> Path:
    """Save a generated config as an mmengine Python config file (runnable by mmdet's / mmseg's tools)."""
    from mmengine.config import Config

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Config(cfg).dump(str(path))
    return path
