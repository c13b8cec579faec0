"""GPS, Gradient-based Parameter Selection (Zhang et al., CVPR 2024).

Selection (`compute_selection`, training split only): the frozen model embeds two views of every
image; a supervised contrastive loss (SupCon, temperature 0.07) on the L2-normalised pre-logit feature
(the CLS token after the final LayerNorm) is back-propagated, and the gradients of every candidate
weight are summed over all batches. The loss never touches the freshly initialised head, which is
why GPS uses it. For each output neuron (row of a Linear weight; output channel of a Conv2d, flattened
over in_channels x kh x kw) the K incoming connections with the largest |summed gradient| are selected.
Candidates, as in the official code: every Linear / Conv2d weight except the head, i.e. on a ViT the
patch embedding and qkv, proj, fc1, fc2 of every block (LayerNorms, CLS token and position embedding
stay frozen). The official code also trains every bias of those layers (its mask keeps all `bias`
tensors trainable) and the head; `tune_bias` (default True) does the same.

Placement / init: each candidate layer is wrapped by `GpsSparseDelta`, which holds ONLY the selected
entries as a trainable vector `delta` (zero-init) plus, with `tune_bias`, a zero-init `bias_delta`; it
computes with W + scatter(delta) and b + bias_delta, so the model equals the frozen one at init and
the frozen tensors are never edited until `merge()`, which adds the scattered delta to the weight:
`merge_and_unload` returns the plain timm model. Mergeable.

Parameters: K * R + B, where R is the number of output neurons over the candidate layers and B their
bias entries. ViT-B/16: R = 768 (patch embed) + 12 * (2304 + 768 + 3072 + 768) = 83,712 and B = R
(every candidate has a bias), so K=1 gives 167,424 (83,712 without biases) and K=2 251,136.
Published counts do NOT reproduce: the official VTAB scripts use K=1 on every task except
patch_camelyon (K=2), a mean of ≈171,831 (0.17 M; ≈88,118 without biases) against V-PETL's 0.22 M; the
FGVC scripts use K = 2 / 20 / 1 / 15 / 1 (CUB, NABirds, Flowers, Cars, Dogs), a mean of ≈736,666
(≈652,954 without biases) against 0.66 M. No single K (and no counting convention we tried: with or
without biases, with the mean head) gives 0.22 M; the published figure is not derivable from the code.

Selection mode and views, as the official code (`train_gps.py` `calculate_gradient`, `--contrast-aug
--no-prefetcher --contrastive` in every VTAB script; `data/transforms_factory.py`
`transforms_contrastaug_train`): the model runs in *train* mode (drop-path at the run's rate, as the
selection model is built with it), and each image gets two views, each a RandomResizedCrop (area
0.08-1, aspect 3/4-4/3) + horizontal flip (p 0.5) + colour jitter (brightness, contrast, saturation
0.4, hue 0.1, in random order; applied with p 0.8) + grayscale (p 0.2). We receive normalised tensors:
the crop and flip commute with normalisation; the colour steps run on the de-normalised [0, 1] image
(the model's `pretrained_cfg` mean / std, which the run's data transform uses) and are re-normalised.
The random draws come from a private generator seeded by `torch.initial_seed()` (the run seed in the
workflow), drop-path from the global one: same seed and batches, same selection.
`selection_mode: eval` (the project's earlier variant) selects with dropout / drop-path off;
`contrast_views: false` uses the image itself twice. Remaining differences: the official pass runs
under AMP and crops PIL images before resizing (we crop the already-resized tensor); Swin's
relative-position-bias tables, which the official name-based mask would train fully, are not
candidates here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    MethodConfig,
    MethodError,
    MethodLayer,
    PeftMethod,
    check_selection_fits,
    match_modules,
    replace_module,
)
from .base import official_code
from .registry import register_method

_CANDIDATE_KINDS = (nn.Linear, nn.Conv2d)


@dataclass
class GpsConfig(MethodConfig):
    """Args:
    top_k: K, incoming connections selected per output neuron (GPS `--times_para`).
    tune_bias: also train every bias of the candidate layers (as the official code does).
    temperature: SupCon temperature of the selection loss.
    contrast_views: two random views per image for the SupCon loss (the official contrastive
        augmentation: crop, flip, colour jitter, grayscale); False uses the image twice.
    selection_mode: `train` (official: drop-path / dropout active during the selection pass) or `eval`.
    target_modules: regex over module names; matching Linear / Conv2d modules (head excluded) are candidates.
    """

    top_k: int = field(default=1, metadata={"help": "K connections per output neuron"})
    tune_bias: bool = field(default=True, metadata={"help": "train the candidate layers' biases too"})
    temperature: float = field(default=0.07, metadata={"help": "SupCon temperature (selection loss)"})
    contrast_views: bool = field(default=True, metadata={"help": "official contrastive views for SupCon"})
    selection_mode: str = field(default="train", metadata={"help": "model mode of the selection pass: train | eval"})
    target_modules: str = field(default=r".", metadata={"help": "module-name regex for candidate layers"})

    def validate(self):
        if self.top_k < 1:
            raise MethodError(f"gps.top_k must be >= 1, got {self.top_k}")
        if not self.temperature > 0:
            raise MethodError(f"gps.temperature must be > 0, got {self.temperature}")
        if self.selection_mode not in ("train", "eval"):
            raise MethodError(f"gps.selection_mode must be 'train' or 'eval', got {self.selection_mode!r}")


def top_k_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices (int64, ascending) of the k largest |scores| in every row of `scores` viewed as
    (out, -1): out * k entries."""
    rows = scores.reshape(scores.shape[0], -1).abs()
    if k > rows.shape[1]:
        raise MethodError(f"gps: top_k={k} exceeds the fan-in {rows.shape[1]} of a layer")
    cols = torch.topk(rows, k, dim=1).indices
    flat = cols + torch.arange(rows.shape[0], device=rows.device).unsqueeze(1) * rows.shape[1]
    return flat.reshape(-1).sort().values.to(torch.int64)


def supervised_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al., 2020) over all views as anchors: for each anchor, the mean log-probability
    of its positives (same label, itself excluded) under a softmax over all other samples."""
    z = F.normalize(features, dim=1)
    logits = z @ z.t() / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
    count = positive.sum(1)
    keep = count > 0
    if not keep.any():
        raise MethodError("gps: no anchor has a positive in its batch")
    mean_log_prob = log_prob.masked_fill(~positive, 0.0).sum(1)[keep] / count[keep]
    return -mean_log_prob.mean()


def _crop_box(height: int, width: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (area 0.08-1, aspect 3/4-4/3), falling back to the whole image."""
    area = height * width
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (0.08 + 0.92 * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    return 0, 0, height, width


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def color_distort(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The official contrastive colour steps on one [0, 1] CHW image: ColorJitter(0.4, 0.4, 0.4, 0.1)
    with p 0.8 (its four adjustments in random order), then RandomGrayscale(p 0.2)."""
    from torchvision.transforms.v2 import functional as TF

    if float(torch.rand(1, generator=gen)) < 0.8:
        factors = (0.6 + 0.8 * torch.rand(3, generator=gen)).tolist()  # U(1 - 0.4, 1 + 0.4)
        hue = float(-0.1 + 0.2 * torch.rand(1, generator=gen))
        ops = (lambda x: TF.adjust_brightness(x, factors[0]), lambda x: TF.adjust_contrast(x, factors[1]),
               lambda x: TF.adjust_saturation(x, factors[2]), lambda x: TF.adjust_hue(x, hue))
        for i in torch.randperm(4, generator=gen).tolist():
            image = ops[i](image)
    if float(torch.rand(1, generator=gen)) < 0.2:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    return image


def contrast_view(images: torch.Tensor, gen: torch.Generator, mean=None, std=None) -> torch.Tensor:
    """One official contrastive view of every image of a normalised NCHW batch: a random resized crop
    (bilinear, back to the input size) and a horizontal flip with p = 0.5 (both commute with the
    per-channel normalisation), then, given the normalisation `mean` / `std` of a 3-channel batch,
    the colour steps of `color_distort` on the de-normalised image."""
    height, width = images.shape[-2:]
    colour = mean is not None and std is not None and images.shape[1] == 3
    if colour:
        m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
        sd = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    out = []
    for image in images:
        top, left, h, w = _crop_box(height, width, gen)
        crop = image[:, top:top + h, left:left + w].unsqueeze(0)
        view = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
        if float(torch.rand(1, generator=gen)) < 0.5:
            view = view.flip(-1)
        if colour:
            view = (color_distort((view * sd + m).clamp(0, 1), gen) - m) / sd
        out.append(view)
    return torch.stack(out)


class GpsSparseDelta(MethodLayer):
    """Wraps a frozen Linear / Conv2d and adds trainable values at the selected weight entries."""

    def __init__(self, base_layer: nn.Module, indices: torch.Tensor, tune_bias: bool):
        super().__init__()
        if not isinstance(base_layer, _CANDIDATE_KINDS):
            raise MethodError(f"GPS wraps Linear / Conv2d layers, not {type(base_layer).__name__}")
        weight = base_layer.weight
        self.base_layer = base_layer
        self.register_buffer("indices", indices.to(device=weight.device, dtype=torch.int64), persistent=False)
        self.delta = nn.Parameter(torch.zeros(self.indices.numel(), dtype=weight.dtype, device=weight.device))
        bias = base_layer.bias
        self.bias_delta = nn.Parameter(torch.zeros_like(bias)) if tune_bias and bias is not None else None
        self.merged = False

    def _added(self, sign: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = self.base_layer.weight
        new_weight = weight.reshape(-1).index_add(0, self.indices, self.delta.to(weight.dtype),
                                                  alpha=sign).view_as(weight)
        bias = self.base_layer.bias
        if bias is not None and self.bias_delta is not None:
            bias = bias + sign * self.bias_delta.to(bias.dtype)
        return new_weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        weight, bias = self._added()
        if isinstance(self.base_layer, nn.Linear):
            return F.linear(x, weight, bias)
        return self.base_layer._conv_forward(x, weight, bias)

    @torch.no_grad()
    def _fold(self, sign: float) -> None:
        weight, bias = self._added(sign)
        if not torch.isfinite(weight).all() or (bias is not None and not torch.isfinite(bias).all()):
            raise MethodError("GPS update is not finite; refusing to merge")
        self.base_layer.weight.copy_(weight)
        if bias is not None:
            self.base_layer.bias.copy_(bias)

    def merge(self) -> None:
        if not self.merged:
            self._fold(1.0)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._fold(-1.0)
            self.merged = False


@register_method
class Gps(PeftMethod):
    name = "gps"
    category = "partial"
    config_cls = GpsConfig
    mergeable = True
    paper = "Zhang et al., Gradient-based Parameter Selection for Efficient Fine-Tuning, CVPR 2024"
    provenance = official_code(
        "FightingFighting/GPS", "72e0c31564f46b6b6a166b54a28f2a8f48cec031",
        "utils/pruning.py", "train_gps.py", "data/transforms_factory.py",
        notes="selection in fp32 on resized tensors (official: AMP, crops of PIL images)")
    needs_selection = True

    def candidate_layers(self, model: nn.Module) -> list[str]:
        """Names of the Linear / Conv2d modules matching `target_modules`, the classifier excluded."""
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        head_ids = {id(m) for m in head.modules()} if isinstance(head, nn.Module) else set()
        names = [n for n in match_modules(model, self.config.target_modules, _CANDIDATE_KINDS)
                 if id(model.get_submodule(n)) not in head_ids]
        if not names:
            raise MethodError(f"gps: no Linear / Conv2d of {type(model).__name__} matches "
                              f"target_modules={self.config.target_modules!r}")
        return names

    def compute_selection(self, model, batches, num_classes):
        """Sum the SupCon gradients of the candidate weights over `batches` on a private copy of
        `model` (train mode by default, as the official code), then keep the top-K |gradient| entries
        of every row."""
        c = self.config
        work = copy.deepcopy(model).train(c.selection_mode == "train")
        names = self.candidate_layers(work)
        for param in work.parameters():
            param.requires_grad_(False)
        weights = [work.get_submodule(n).weight for n in names]
        fan_in = min(w[0].numel() for w in weights)
        if c.top_k > fan_in:
            raise MethodError(f"gps: top_k={c.top_k} exceeds the smallest fan-in {fan_in} of the candidate layers")
        for w in weights:
            w.requires_grad_(True)
        if not hasattr(work, "forward_head"):
            raise MethodError(f"gps needs a timm model with forward_features / forward_head, "
                              f"not {type(work).__name__}")
        device = weights[0].device
        gen = torch.Generator().manual_seed(torch.initial_seed() % (2 ** 63))
        cfg = getattr(work, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", _IMAGENET_MEAN), cfg.get("std", _IMAGENET_STD)
        summed = [torch.zeros_like(w) for w in weights]
        seen = 0
        for images, labels in batches:
            images = images.to(torch.float32)
            if c.contrast_views:
                views = torch.cat([contrast_view(images, gen, mean, std), contrast_view(images, gen, mean, std)])
            else:
                views = torch.cat([images, images])
            labels = labels.to(torch.int64)
            features = work.forward_head(work.forward_features(views.to(device)), pre_logits=True)
            loss = supervised_contrastive_loss(features, torch.cat([labels, labels]).to(device), c.temperature)
            for acc, grad in zip(summed, torch.autograd.grad(loss, weights)):
                acc += grad
            seen += 1
        if not seen:
            raise MethodError("gps: the selection stage got no training batches")
        return {name: top_k_per_row(grad, c.top_k).cpu() for name, grad in zip(names, summed)}

    def inject(self, model):
        selection = self.selection or {}
        names = self.candidate_layers(model)
        check_selection_fits("gps", selection, names)
        for name in names:
            layer = model.get_submodule(name)
            indices = selection[name].to(torch.int64).reshape(-1)
            rows, size = layer.weight.shape[0], layer.weight.numel()
            per_row = torch.bincount(indices // (size // rows), minlength=rows) if indices.numel() else None
            if (indices.numel() != rows * self.config.top_k or indices.min() < 0 or indices.max() >= size
                    or per_row.numel() != rows or not bool((per_row == self.config.top_k).all())):
                raise MethodError(f"gps: selection for {name} is not {self.config.top_k} entries per row of "
                                  f"{tuple(layer.weight.shape)}; was it computed with another top_k?")
            replace_module(model, name, GpsSparseDelta(layer, indices, self.config.tune_bias))
        return names
