"""Checkpoints load through the same code for the demo and real backbones; bad files are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from vpeft.backbones import BackboneError, BackboneSpec, create_backbone, sha256_of
from vpeft.backbones.google_npz import save_google_npz
from vpeft.backbones.swin_official import save_official_swin

ROOT = Path(__file__).resolve().parents[1]


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


def test_google_npz_layout_loads_through_the_same_path(tmp_path):
    """The real ViT-B/16 IN-21K file is a Google .npz; a small ViT saved in that key layout (with the
    IN-21k files' representation layer and 21,843-way head) must load through create_backbone and
    give the same features."""
    torch.manual_seed(5)
    source = timm.create_model("vit_demo_patch4_32", pretrained=False, num_classes=0).eval()
    path = save_google_npz(source, tmp_path / "ViT-demo.npz", head_classes=21843, representation=True)
    with np.load(path) as npz:
        assert {"embedding/kernel", "Transformer/encoderblock_3/MultiHeadDotProductAttention_1/query/kernel",
                "pre_logits/kernel", "head/kernel"} <= set(npz.files)
    model, _ = create_backbone(demo_spec(checkpoint=str(path)), num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), source.forward_features(x),
                                   rtol=1e-5, atol=1e-5)


def test_google_npz_of_another_depth_is_refused_naming_the_file(tmp_path):
    other = timm.create_model("vit_demo_patch4_32", pretrained=False, num_classes=0, depth=2)
    path = save_google_npz(other, tmp_path / "ViT-B_16.npz")
    with pytest.raises(BackboneError, match=r"cannot load .*ViT-B_16\.npz \(google-npz format\).*4 blocks.*2 blocks"):
        create_backbone(demo_spec(checkpoint=str(path)), num_classes=2)


SMALL_SWIN = {"embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8)}


def swin_spec(path, **kwargs) -> BackboneSpec:
    return BackboneSpec(name="swin-small-test", arch="swin_tiny_patch4_window7_224", checkpoint=str(path),
                        checkpoint_format="swin-official", input_size=224, model_kwargs=kwargs or SMALL_SWIN)


def test_official_swin_checkpoint_loads_and_reproduces_features(tmp_path):
    """Microsoft's Swin .pth layout ({'model': ...}, patch merging at the end of a stage, `head`,
    stored buffers), written from a timm Swin of the same class, loads to the same features."""
    torch.manual_seed(6)
    source = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, **SMALL_SWIN).eval()
    path = save_official_swin(source, tmp_path / "swin_small_22k.pth", head_classes=21841)
    keys = set(torch.load(path, weights_only=True)["model"])
    assert {"layers.0.downsample.reduction.weight", "head.weight", "layers.2.blocks.1.attn_mask",
            "layers.0.blocks.0.attn.relative_position_index"} <= keys
    assert "layers.3.downsample.reduction.weight" not in keys
    model, digest = create_backbone(swin_spec(path), num_classes=5)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), source.forward_features(x), rtol=0, atol=0)
    assert digest == sha256_of(path) and model.get_classifier().out_features == 5


def test_official_swin_of_another_size_is_refused_naming_keys(tmp_path):
    other = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0,
                              **dict(SMALL_SWIN, depths=(1, 1, 1, 1)))
    path = save_official_swin(other, tmp_path / "swin.pth")
    with pytest.raises(BackboneError, match=r"cannot load .*swin\.pth \(swin-official format\).*missing keys"):
        create_backbone(swin_spec(path), num_classes=2)


# ViT-L and Swin-L load through the same converters as ViT-B and Swin-B (the same release formats),
# so their real-size builds would add minutes and no code path.
REAL = [("vit-b16-in21k", 21843), ("swin-b-in22k", 21841)]


@pytest.mark.slow
@pytest.mark.parametrize("name, head_classes", REAL, ids=[n for n, _ in REAL])
def test_real_size_backbones_load_from_their_release_format(tmp_path, name, head_classes):
    """The config's image backbones at their real size: random init, saved in the release file's key
    layout (Google npz / official Swin .pth, with the pre-training head), loaded through the config's
    entry and create_backbone, one 224 px image gives the same features."""
    entry = yaml.safe_load((ROOT / "config/config.yaml").read_text())["backbones"][name]
    torch.manual_seed(0)
    source = timm.create_model(entry["arch"], pretrained=False, num_classes=0).eval()
    path = tmp_path / Path(entry["checkpoint"]).name
    if entry["checkpoint_format"] == "google-npz":
        save_google_npz(source, path, head_classes=head_classes, representation=True)
    else:
        save_official_swin(source, path, head_classes=head_classes)
    spec = BackboneSpec.from_config(name, dict(entry, checkpoint=str(path)))
    model, _ = create_backbone(spec, num_classes=10)
    x = torch.randn(1, 3, 224, 224)
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
