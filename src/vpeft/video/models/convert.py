"""Checkpoint key layouts -> our model's keys, applied inside the models' `load_state_dict`.

timm's `checkpoint_path` loading (what `vpeft.backbones.create_backbone` uses) reads the file with
`weights_only=True`, unwraps a `state_dict` / `model` entry and strips `module.`, then calls the
model's `load_state_dict(strict=True)`. Our video models convert there, so one code path loads:

VideoMAE ViT (`to_video_vit`)
  * official pre-training checkpoints (`encoder.*`; decoder, `encoder_to_decoder`, `mask_token`
    dropped; the encoder's final `norm` dropped when the model mean-pools through `fc_norm`, as
    VideoMAE's fine-tuning does),
  * official fine-tuning checkpoints (`blocks.N.attn.q_bias` / `v_bias`, `fc_norm`, `head` dropped),
  * DeepSpeed-style wrappers (`{"module": {...}}`),
  * Hugging Face `VideoMAEModel` / `VideoMAEForVideoClassification` (`videomae.`/`embeddings.`,
    separate query/key/value Linears),
  * a 2-D image ViT of the same width (timm keys): the patch projection is inflated along time
    (copied into each of the `tubelet_size` frames and divided by it, I3D's mean inflation), the
    spatial position table and [CLS] are kept. This is how the demo video backbone is made.
  VideoMAE has biases for q and v only; they become the fused `qkv.bias` with zeros for k (k's bias
  cannot change the attention: it adds the same amount to every key's logit).

Video Swin (`to_video_swin`)
  * official Video-Swin-Transformer / mmaction checkpoints (`backbone.*`, `cls_head.*` dropped),
  * torchvision `swin3d_b` (`features.{2i}.{j}` blocks with `mlp.0` / `mlp.3`, `features.{2i+1}`
    patch merging).
  `relative_position_index` buffers are rebuilt by the model, never loaded.

A dict already in our layout (also a partial one, e.g. a training checkpoint of trainable tensors) is
passed through unchanged.
"""

from __future__ import annotations

import re

import torch

_HEAD_KEYS = re.compile(r"^(head|fc|cls_head|classifier)\.")


def _unwrap(state_dict: dict) -> dict:
    for key in ("module", "model", "state_dict"):
        if set(state_dict) == {key} and isinstance(state_dict[key], dict):
            return _unwrap(state_dict[key])
    return dict(state_dict)


def _drop_head(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not _HEAD_KEYS.match(k)}


def _fuse_qv_bias(sd: dict) -> dict:
    """`prefix.q_bias` + `prefix.v_bias` -> `prefix.qkv.bias` (k part zero)."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".q_bias"):
            prefix = key[: -len(".q_bias")]
            v_bias = sd[f"{prefix}.v_bias"]
            out[f"{prefix}.qkv.bias"] = torch.cat([value, torch.zeros_like(value), v_bias])
        elif not key.endswith(".v_bias"):
            out[key] = value
    return out


_HF_BLOCK = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
}


def _from_huggingface(sd: dict) -> dict:
    sd = {k.removeprefix("videomae."): v for k, v in sd.items()}
    out, qkv = {}, {}
    for key, value in sd.items():
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key)
        if key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif re.match(r"encoder\.layer\.\d+\.attention\.attention\.(q_bias|v_bias)$", key):
            block = key.split(".")[2]
            out[f"blocks.{block}.attn.{key.rsplit('.', 1)[1]}"] = value
        elif m and m.group(2).startswith("attention.attention."):
            which = m.group(2).rsplit(".", 1)[1]  # query / key / value
            qkv.setdefault(m.group(1), {})[(which, m.group(3))] = value
        elif m:
            for hf, ours in _HF_BLOCK.items():
                if m.group(2) == hf:
                    out[f"blocks.{m.group(1)}.{ours}.{m.group(3)}"] = value
                    break
            else:
                raise KeyError(f"unexpected Hugging Face VideoMAE key {key}")
        elif key.startswith("fc_norm."):
            out[key] = value
        elif key.startswith("layernorm."):
            out["norm." + key.split(".", 1)[1]] = value
        elif key.startswith(("embeddings.position_embeddings", "classifier.", "decoder.", "encoder_to_decoder.",
                             "mask_token")):
            continue  # the sinusoid table is rebuilt; the head is the task's; no pre-training decoder
        else:
            raise KeyError(f"unexpected Hugging Face VideoMAE key {key}")
    for block, parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.weight"] = torch.cat([parts[(n, "weight")] for n in ("query", "key", "value")])
        if ("query", "bias") in parts:  # transformers >= 5: biases on the query / value Linears, none on key
            q = parts[("query", "bias")]
            k = parts.get(("key", "bias"), torch.zeros_like(q))
            out[f"blocks.{block}.attn.qkv.bias"] = torch.cat([q, k, parts[("value", "bias")]])
    return out


def to_video_vit(state_dict: dict, model) -> dict:
    sd = _unwrap(state_dict)
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings")) for k in sd):
        sd = _from_huggingface(sd)
    elif any(k.startswith("encoder.") for k in sd):  # official pre-training checkpoint
        sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        if model.pos_embed_kind == "sincos" and model.global_pool == "avg":
            sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    if any(k.endswith(".q_bias") for k in sd):
        sd = _fuse_qv_bias(sd)
    proj = sd.get("patch_embed.proj.weight")
    if proj is not None and proj.ndim == 4:  # a 2-D image ViT: inflate along time
        t = model.tubelet_size
        sd["patch_embed.proj.weight"] = proj.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
    if model.pos_embed_kind == "sincos":
        sd.pop("pos_embed", None)  # fixed table, rebuilt from the model's size
    sd.pop("mask_token", None)
    if isinstance(model.fc_norm, torch.nn.LayerNorm) and "fc_norm.weight" not in sd and "blocks.0.norm1.weight" in sd:
        # a pre-training checkpoint has no pooled-feature norm: like VideoMAE's fine-tuning, it starts as
        # a LayerNorm with unit scale and zero shift (frozen with the backbone)
        sd["fc_norm.weight"] = torch.ones_like(model.fc_norm.weight)
        sd["fc_norm.bias"] = torch.zeros_like(model.fc_norm.bias)
    if isinstance(model.head, torch.nn.Identity):
        sd = _drop_head(sd)
    return sd


def _from_torchvision_swin(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        m = re.match(r"features\.(\d+)\.(.+)$", key)
        if not m:
            out[key] = value  # patch_embed.*, norm.*, head.*
            continue
        index, rest = int(m.group(1)), m.group(2)
        if index % 2:  # patch merging after stage index // 2
            out[f"layers.{index // 2}.downsample.{rest}"] = value
            continue
        rest = re.sub(r"^(\d+)\.mlp\.0\.", r"\1.mlp.fc1.", rest)
        rest = re.sub(r"^(\d+)\.mlp\.3\.", r"\1.mlp.fc2.", rest)
        out[f"layers.{index // 2}.blocks.{rest}"] = value
    return out


def to_video_swin(state_dict: dict, model) -> dict:
    sd = _unwrap(state_dict)
    if any(k.startswith("backbone.") for k in sd):  # official / mmaction
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    elif any(k.startswith("features.") for k in sd):  # torchvision swin3d_*
        sd = _from_torchvision_swin(sd)
    sd = {k: v for k, v in sd.items() if not k.endswith("relative_position_index")}
    if isinstance(model.head, torch.nn.Identity):
        sd = _drop_head(sd)
    return sd
