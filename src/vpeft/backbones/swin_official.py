"""Microsoft's official Swin Transformer checkpoints (`swin_{base,large}_patch4_window7_224_22k.pth`).

The files are `torch.save({"model": state_dict})` from the official repository. Their keys differ
from timm's SwinTransformer in two ways: patch merging sits at the *end* of a stage
(`layers.<i>.downsample`, i = 0..2; timm: start of the next stage, i = 1..3) and the classifier is
`head` (timm: `head.fc`); they also store the buffers `relative_position_index` and `attn_mask`,
which timm rebuilds. Loading reads the file with `torch.load(weights_only=True)` (tensors only,
never pickled code), converts the keys with timm's own `checkpoint_filter_fn`, drops the 21,841-way
ImageNet-22k head, and loads strictly: a missing or unexpected key is an error that names it.

`save_official_swin` writes a timm Swin in the official layout, for tests (a random-init real
architecture saved the way Microsoft saved theirs) and for exporting.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch


def official_state_dict(model, *, head_classes: int = 0, seed: int = 0) -> dict:
    """A timm SwinTransformer's weights under the official repository's keys (with its buffers)."""
    out = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[key] = value.detach().clone()
    for name, buffer in model.named_buffers():  # timm keeps these out of its state dict; the official files have them
        if name.endswith(("relative_position_index", "attn_mask")):
            out[name] = buffer.detach().clone()
    if head_classes:
        generator = torch.Generator().manual_seed(seed)
        out["head.weight"] = torch.randn(head_classes, model.num_features, generator=generator) * 0.02
        out["head.bias"] = torch.zeros(head_classes)
    return out


def save_official_swin(model, path: str | Path, **kwargs) -> Path:
    path = Path(path)
    torch.save({"model": official_state_dict(model, **kwargs)}, path)
    return path


def load_official_swin(model, path: str | Path) -> None:
    """Load an official Swin checkpoint into a timm SwinTransformer built with num_classes=0."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model", checkpoint), dict):
        raise ValueError(f"{path}: expected {{'model': state_dict}} as the official Swin checkpoints are")
    state = checkpoint_filter_fn(checkpoint, model)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: does not match {type(model).__name__} of this size: missing keys "
                         f"{sorted(missing)[:5]}, unexpected keys {sorted(unexpected)[:5]}")
