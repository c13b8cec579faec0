"""Google's original ViT checkpoints (`ViT-B_16.npz`, `ViT-L_16.npz`, ImageNet-21k): key layout and loading.

The files are flat NumPy archives written by the big_vision / vision_transformer JAX code:
`embedding/kernel` (HWIO patch conv), `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_<i>/{LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
LayerNorm_2, MlpBlock_3/Dense_{0,1}}`, `Transformer/encoder_norm`, and for the IN-21k files a
representation layer `pre_logits` and the 21,843-way `head`. Loading goes through timm's own npz
reader (`model.load_pretrained`, what timm's `checkpoint_path` does for `.npz`), after checking that
the file has exactly the encoder blocks and widths of the architecture; the representation layer and
the head are not used (timm dropped pre-logits; we attach a new head per task).

`save_google_npz` writes a timm ViT in that layout. It exists for tests (a random-init real
architecture saved the way Google saved theirs, no download needed) and to export our own weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ATTN = "MultiHeadDotProductAttention_1"


def google_arrays(model, *, head_classes: int = 0, representation: bool = False, seed: int = 0) -> dict:
    """A timm VisionTransformer's weights as Google's npz arrays (numpy, Google's shapes)."""
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    dim = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    hd = dim // heads
    out = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    for i in range(len(model.blocks)):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            out[p + f"{ATTN}/{name}/kernel"] = qkv_w[j * dim:(j + 1) * dim].T.reshape(dim, heads, hd)
            out[p + f"{ATTN}/{name}/bias"] = qkv_b[j * dim:(j + 1) * dim].reshape(heads, hd)
        out[p + f"{ATTN}/out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(heads, hd, dim)
        out[p + f"{ATTN}/out/bias"] = sd[b + "attn.proj.bias"]
        for j, fc in ((0, "fc1"), (1, "fc2")):
            out[p + f"MlpBlock_3/Dense_{j}/kernel"] = sd[b + f"mlp.{fc}.weight"].T
            out[p + f"MlpBlock_3/Dense_{j}/bias"] = sd[b + f"mlp.{fc}.bias"]
    rng = np.random.default_rng(seed)
    if representation:  # the IN-21k files' pre-logits layer (unused by timm and by us)
        out["pre_logits/kernel"] = rng.normal(0, 0.02, (dim, dim)).astype(np.float32)
        out["pre_logits/bias"] = np.zeros(dim, np.float32)
    if head_classes:
        out["head/kernel"] = rng.normal(0, 0.02, (dim, head_classes)).astype(np.float32)
        out["head/bias"] = np.zeros(head_classes, np.float32)
    return out


def save_google_npz(model, path: str | Path, **kwargs) -> Path:
    """Write `model` (a timm ViT) as a Google-layout .npz (see `google_arrays` for the options)."""
    path = Path(path)
    np.savez(path, **google_arrays(model, **kwargs))
    return path


def check_layout(model, path: str | Path) -> None:
    """Raise ValueError when the npz does not have this architecture's blocks and widths."""
    with np.load(path, allow_pickle=False) as npz:
        shapes = {k: npz[k].shape for k in npz.files if not k.startswith(("head/", "pre_logits/"))}
    expected = {k: v.shape for k, v in google_arrays(model).items()}
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    blocks = len({k.split("/")[1] for k in shapes if k.startswith("Transformer/encoderblock_")})
    if missing or extra:
        raise ValueError(f"{path}: not a Google ViT checkpoint of this architecture ({len(model.blocks)} blocks, "
                         f"width {model.embed_dim}); the file has {blocks} blocks; missing keys {missing[:3]}, "
                         f"unexpected keys {extra[:3]}")
    wrong = sorted(k for k in expected if k != "Transformer/posembed_input/pos_embedding" and shapes[k] != expected[k])
    if wrong:
        k = wrong[0]
        raise ValueError(f"{path}: {k} has shape {shapes[k]}, the architecture needs {expected[k]}")


def load_google_npz(model, path: str | Path) -> None:
    """Load a Google-layout npz into a timm ViT (shape-checked first; timm resamples position
    embeddings when the input size differs)."""
    check_layout(model, path)
    model.load_pretrained(str(path))
