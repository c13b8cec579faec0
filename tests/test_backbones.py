"""Checkpoints load through the same code for the demo and real backbones; bad files are refused."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from vpeft.backbones import BackboneError, BackboneSpec, create_backbone, sha256_of


def demo_spec(**overrides) -> BackboneSpec:
    values = dict(arch="vit_demo_patch4_32.fractal", input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    values.update(overrides)
    return BackboneSpec(name="vit-demo", **values)


def saved_demo(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("vit_demo_patch4_32", pretrained=False, num_classes=0)
    path = tmp_path / "demo.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return source.eval(), path


def test_safetensors_checkpoint_loads_and_reproduces_features(tmp_path):
    source, path = saved_demo(tmp_path)
    model, digest = create_backbone(demo_spec(checkpoint=str(path), sha256=sha256_of(path)), num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), source.forward_features(x), rtol=0, atol=0)
    assert digest == sha256_of(path)
    assert model.get_classifier().out_features == 7


def test_sha256_mismatch_is_refused(tmp_path):
    _, path = saved_demo(tmp_path)
    with pytest.raises(BackboneError, match="refusing"):
        create_backbone(demo_spec(checkpoint=str(path), sha256="0" * 64), num_classes=2)


def test_missing_checkpoint_says_where_to_put_it(tmp_path):
    spec = demo_spec(checkpoint=str(tmp_path / "ViT-B_16.npz"), url="https://example.org/ViT-B_16.npz")
    with pytest.raises(BackboneError, match=r"not found at .*ViT-B_16\.npz\. Download it from https://example"):
        create_backbone(spec, num_classes=2)


def test_random_init_control_needs_no_file():
    model, digest = create_backbone(demo_spec(checkpoint=None), num_classes=3)
    assert digest is None and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def _to_google_npz(model, path):
    """Write a timm ViT in the key layout of Google's original ViT .npz checkpoints."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim = model.embed_dim
    heads = model.blocks[0].attn.num_heads
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
            w = qkv_w[j * dim:(j + 1) * dim]  # (out, in)
            out[p + f"MultiHeadDotProductAttention_1/{name}/kernel"] = w.T.reshape(dim, heads, dim // heads)
            out[p + f"MultiHeadDotProductAttention_1/{name}/bias"] = qkv_b[j * dim:(j + 1) * dim].reshape(
                heads, dim // heads)
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(
            heads, dim // heads, dim)
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for j, fc in ((0, "fc1"), (1, "fc2")):
            out[p + f"MlpBlock_3/Dense_{j}/kernel"] = sd[b + f"mlp.{fc}.weight"].T
            out[p + f"MlpBlock_3/Dense_{j}/bias"] = sd[b + f"mlp.{fc}.bias"]
    np.savez(path, **out)


def test_google_npz_layout_loads_through_the_same_path(tmp_path):
    """The real ViT-B/16 IN-21K file is a Google .npz; a small ViT saved in that key layout must load
    through create_backbone (timm's checkpoint_path) and give the same features."""
    torch.manual_seed(5)
    source = timm.create_model("vit_demo_patch4_32", pretrained=False, num_classes=0).eval()
    path = tmp_path / "ViT-demo.npz"
    _to_google_npz(source, path)
    model, _ = create_backbone(demo_spec(checkpoint=str(path)), num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), source.forward_features(x),
                                   rtol=1e-5, atol=1e-5)


class _Payload:
    """An object whose unpickling would run code (creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, path)
    with pytest.raises(BackboneError, match=r"cannot load .*evil\.pth"):
        create_backbone(demo_spec(checkpoint=str(path)), num_classes=2)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused_clearly(tmp_path):
    _, path = saved_demo(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BackboneError, match="cannot load"):
        create_backbone(demo_spec(checkpoint=str(path)), num_classes=2)
