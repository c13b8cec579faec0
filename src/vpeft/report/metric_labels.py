"""What the report calls each metric a run can report, in one place (tables, notes and plots)."""

from __future__ import annotations

#: Dense metrics in table order, with their column labels.
DENSE_METRICS = {"box_ap": "AP box", "mask_ap": "AP mask", "box_ap50": "AP box@0.5", "miou": "mIoU"}

#: How each dense metric is computed, for the section header.
DENSE_EVALUATORS = {"box_ap": "COCO AP@[.5:.95], pycocotools COCOeval", "mask_ap": "COCO AP@[.5:.95]",
                    "box_ap50": "VOC mAP@0.5", "miou": "mean IoU"}

#: Short name of every metric (a run file's `metric.name`).
METRIC_NAMES = {"top1": "top-1 accuracy", **DENSE_METRICS}


def metric_name(name: str | None) -> str:
    return METRIC_NAMES.get(name or "top1", name or "top1")
