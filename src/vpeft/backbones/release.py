"""Release files of the modern ViT backbones (DINOv2, CLIP, MAE): layout check, conversion and loading.

Formats (`checkpoint_format` of a `backbones:` entry):

* `dinov2`: Meta's original `dinov2_vitb14[_reg4]_pretrain.pth`, a flat state dict in timm-like keys
  with `mask_token`, LayerScale `ls1.gamma` / `ls2.gamma`, for the register model `register_tokens`,
  and a position embedding for 518 px (37 x 37 patches + CLS);
* `open-clip`: an open_clip CLIP state dict (`open_clip_pytorch_model.bin` / `open_clip_model.safetensors`,
  also how timm and LAION publish the OpenAI and LAION-2B weights): the image tower under `visual.`
  (`conv1`, `class_embedding`, `positional_embedding`, `ln_pre`, `transformer.resblocks.N`, `ln_post`,
  `proj`) beside the text tower, which is ignored;
* `mae`: MAE's `mae_pretrain_vit_base.pth`, `{"model": state_dict}` in timm keys (the encoder; a
  file that also holds the decoder has it dropped).

Reading never unpickles code (`.safetensors`, or `torch.load(weights_only=True)`). The file's layout is
checked first (a file of another format stops with the keys it lacks); keys are then converted by
timm's own `checkpoint_filter_fn` (open_clip names, DINOv2 registers, and the position embedding
resampled to the model's patch grid, e.g. DINOv2's 37 x 37 to 16 x 16 at 224 px); the pre-training
head (CLIP's `proj`) is dropped, since every run attaches its own head; with average pooling
(`global_pool: avg`, timm's `fc_norm`) the file's final `norm` becomes the norm after pooling. The
model is then loaded strictly: a missing or unexpected key is an error naming it.

`release_state_dict` writes a timm ViT in one of these layouts, for tests (a random-init architecture
saved the way its authors saved theirs, no download needed).
"""

from __future__ import annotations

from pathlib import Path

import torch

RELEASE_FORMATS = ("dinov2", "open-clip", "mae")

#: keys a file of each format must have (what tells one layout from another)
_MARKERS = {
    "dinov2": ("mask_token", "cls_token", "pos_embed", "blocks.0.ls1.gamma"),
    "open-clip": ("visual.class_embedding", "visual.positional_embedding", "visual.conv1.weight",
                  "visual.transformer.resblocks.0.attn.in_proj_weight"),
    "mae": ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"),
}


def read_tensors(path: str | Path) -> dict:
    """The file's tensors: safetensors, or a torch file read with weights_only (tensors, never code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a state dict, found a {type(data).__name__}")
    return data


def _state_dict(fmt: str, data: dict, path: Path) -> dict:
    if fmt == "mae":
        if not isinstance(data.get("model"), dict):
            raise ValueError(f"{path}: not an MAE release file (MAE saves {{'model': state_dict}}; "
                             f"top-level keys: {sorted(data)[:5]})")
        data = {k: v for k, v in data["model"].items() if not k.startswith("decoder") and k != "mask_token"}
    missing = [k for k in _MARKERS[fmt] if k not in data]
    if missing:
        raise ValueError(f"{path}: not a {fmt} release file: it lacks {missing}; its keys start "
                         f"{sorted(data)[:4]} (set backbones.<name>.checkpoint_format to the file's format)")
    return data


def load_release(model, path: str | Path, fmt: str) -> None:
    """Load a release file of format `fmt` into a timm VisionTransformer (see the module docstring)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = Path(path)
    state = _state_dict(fmt, read_tensors(path), path)
    if fmt == "open-clip":  # keep the image tower: timm's converter reads only `visual.*`
        state = {k: v for k, v in state.items() if k.startswith("visual.")}
    state = checkpoint_filter_fn(state, model)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # pre-training head / CLIP proj
    own = model.state_dict()
    if "fc_norm.weight" in own and "fc_norm.weight" not in state and "norm.weight" in state \
            and "norm.weight" not in own:
        for part in ("weight", "bias"):  # average pooling: the final norm is applied to the pooled feature
            state[f"fc_norm.{part}"] = state.pop(f"norm.{part}")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path} ({fmt}) does not fit {type(model).__name__} of width {model.embed_dim}, depth "
                         f"{len(model.blocks)}: missing keys {missing[:4]}, unexpected keys {unexpected[:4]}")
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(f"{path} ({fmt}): {k} has shape {tuple(state[k].shape)}, the architecture needs "
                         f"{tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)


# -- writers (tests, export) ---------------------------------------------------------------------


def _dinov2(sd: dict, model, seed: int) -> dict:
    out = {k: v for k, v in sd.items() if not k.startswith("head.")}
    out["mask_token"] = torch.zeros(1, model.embed_dim)
    if "reg_token" in out:  # timm: registers and CLS outside the position embedding; Meta: CLS inside
        g = torch.Generator().manual_seed(seed)
        cls_pos = torch.randn(1, 1, model.embed_dim, generator=g) * 0.02
        out["register_tokens"] = out.pop("reg_token")
        out["cls_token"] = out["cls_token"] - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, out["pos_embed"]], dim=1)
    return out


_CLIP_NAMES = [("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."),
               ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]


def _open_clip(sd: dict, model, seed: int, embed_dim: int = 16) -> dict:
    out = {}
    for key, value in sd.items():
        if key.startswith("head."):
            continue
        if key == "cls_token":
            key, value = "class_embedding", value[0, 0]
        elif key == "pos_embed":
            key, value = "positional_embedding", value[0]
        elif key.startswith("norm."):
            key = key.replace("norm.", "ln_post.")
        else:
            for ours, theirs in _CLIP_NAMES:
                key = key.replace(ours, theirs)
        out["visual." + key] = value
    g = torch.Generator().manual_seed(seed)
    out["visual.proj"] = torch.randn(model.embed_dim, embed_dim, generator=g) * 0.02
    # a stand-in for the text tower the real files carry (ignored on load)
    out["token_embedding.weight"] = torch.randn(8, embed_dim, generator=g)
    out["transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(3 * embed_dim, embed_dim, generator=g)
    out["logit_scale"] = torch.tensor(4.6052)
    return out


def release_state_dict(model, fmt: str, *, seed: int = 0) -> dict:
    """`model` (a timm ViT of the format's architecture) as the tensors a release file of `fmt` holds."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if fmt == "dinov2":
        return _dinov2(sd, model, seed)
    if fmt == "open-clip":
        return _open_clip(sd, model, seed)
    if fmt == "mae":
        g = torch.Generator().manual_seed(seed)
        decoder = {"decoder_embed.weight": torch.randn(8, model.embed_dim, generator=g),
                   "mask_token": torch.zeros(1, 1, 8)}
        return {"model": {**{k: v for k, v in sd.items() if not k.startswith("head.")}, **decoder}}
    raise ValueError(f"unknown release format {fmt!r}; valid: {', '.join(RELEASE_FORMATS)}")


def save_release(model, path: str | Path, fmt: str, **kwargs) -> Path:
    """Write `model` as a release file of `fmt` (`.safetensors` for a flat dict if the name says so)."""
    path = Path(path)
    tensors = release_state_dict(model, fmt, **kwargs)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        if fmt == "mae":
            raise ValueError("MAE release files are .pth ({'model': ...}), not safetensors")
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path
