"""Scalar metrics shared by the engine and the report layer.

* :func:`ppt` -- the Performance-Parameter Trade-off score of V-PETL Bench,
  ``PPT = M * exp(-log10(P / C + 1))`` with ``C = 1e7``, where ``M`` is the task metric as a
  fraction and ``P`` the number of trainable parameters (classification head excluded).
* :func:`round_half_up` -- the rounding used for display (the V-PETL README prints PPT rounded
  half-up to two decimals; Python's ``round`` rounds half-to-even and works on the binary value).
* :func:`top1_accuracy` -- top-1 accuracy of a batch of logits, as a fraction.

This module must stay importable without torch: torch is imported inside :func:`top1_accuracy` only.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

__all__ = ["PPT_PARAM_SCALE", "ppt", "round_half_up", "top1_accuracy"]

#: The constant ``C`` of the PPT formula: at ``P = C`` the metric is multiplied by ``exp(-log10 2)``.
PPT_PARAM_SCALE = 1e7


def ppt(metric: float, params: int | float) -> float:
    """Performance-Parameter Trade-off: ``metric * exp(-log10(params / 1e7 + 1))``, unrounded.

    Args:
        metric: task performance as a fraction in [0, 1] (top-1 accuracy 0.873, not 87.3).
            NaN is passed through, so an incomplete table row yields a NaN PPT.
        params: trainable parameters, classification head excluded. NaN is passed through.

    Returns:
        The PPT as a fraction (e.g. 0.7095 for Adapter on VTAB, printed as 0.71 by V-PETL).

    Raises:
        ValueError: if ``metric`` is outside [0, 1] (most likely a percentage was passed) or
            ``params`` is negative or infinite.
    """
    metric = float(metric)
    params = float(params)
    if math.isnan(metric) or math.isnan(params):
        return math.nan
    if not 0.0 <= metric <= 1.0:
        raise ValueError(
            f"ppt() expects the metric as a fraction in [0, 1], got {metric!r}; divide percentages by 100"
        )
    if params < 0 or math.isinf(params):
        raise ValueError(f"ppt() expects a finite, non-negative parameter count, got {params!r}")
    return metric * math.exp(-math.log10(params / PPT_PARAM_SCALE + 1.0))


def round_half_up(x: float, ndigits: int = 2) -> float:
    """Round ``x`` to ``ndigits`` decimals, halves away from zero, as printed tables do.

    The value is rounded from its shortest decimal representation (``repr``), so ``0.745`` gives
    ``0.75`` even though the nearest binary double is slightly below 0.745. NaN and infinities are
    returned unchanged.
    """
    x = float(x)
    if not math.isfinite(x):
        return x
    quantum = Decimal(1).scaleb(-ndigits)
    return float(Decimal(repr(x)).quantize(quantum, rounding=ROUND_HALF_UP))


def top1_accuracy(logits: Any, labels: Any) -> float:
    """Fraction of samples whose highest-scoring class equals the label.

    Args:
        logits: tensor of shape ``(N, C)``.
        labels: integer class indices of shape ``(N,)``, or per-class targets of shape ``(N, C)``
            (one-hot or soft, e.g. from mixup), in which case their argmax is the label.

    Returns:
        Accuracy as a Python float in [0, 1].

    Raises:
        ValueError: on empty input or mismatched shapes.
    """
    import torch  # lazy: the report layer imports this module without torch installed

    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if labels.ndim == 2:
        if labels.shape != logits.shape:
            shapes = f"{tuple(labels.shape)} vs logits {tuple(logits.shape)}"
            raise ValueError(f"target shape does not match the logits: {shapes}")
        labels = labels.argmax(dim=1)
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("top1_accuracy() of an empty batch is undefined")
    predictions = logits.argmax(dim=1)
    correct = (predictions == labels.to(predictions.device)).sum().item()
    return correct / logits.shape[0]
