"""Video backbones (random init): our models against reference implementations, loaded from checkpoints
in the official / torchvision / Hugging Face key layouts through the benchmark's own loading path
(`create_backbone` -> timm `checkpoint_path` -> the model's layout conversion). VideoMAE's parity runs at
a small width and depth (the same code: key conversion, fused q/v biases, pooling); its real-size
parameter count is taken on the meta device."""

from __future__ import annotations


import pytest
import timm
import torch
from safetensors.torch import load_file

from helpers.models import meta_counts, meta_model

from vpeft.backbones import BackboneSpec, create_backbone
from vpeft.methods import apply_method, build_method
from vpeft.video import models  # noqa: F401  (registers the video architectures)

DEMO_CKPT = "assets/vit_demo_patch4_32.fractal.safetensors"


def _spec(arch, checkpoint, size, **kwargs):
    return BackboneSpec.from_config("test", {"arch": arch, "checkpoint": str(checkpoint), "input_size": size,
                                             "mean": [0.5] * 3, "std": [0.5] * 3, "model_kwargs": kwargs})


def _clip(frames, size, batch=2, seed=0):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


# -- VideoMAE ViT-B -----------------------------------------------------------------------------
# The parity model: ViT-B's structure at width 64, depth 2 (4 heads of 16, MLP 4x).
WIDTH, DEPTH, HEADS = 64, 2, 4


@pytest.fixture(scope="module")
def hf_videomae():
    transformers = pytest.importorskip("transformers")  # under CI=true a skip fails (conftest)
    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(image_size=32, num_frames=4, tubelet_size=2, patch_size=16, hidden_size=WIDTH,
                                         num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                         intermediate_size=4 * WIDTH,
                                         qkv_bias=True, qv_bias=True, use_mean_pooling=True, layer_norm_eps=1e-6)
    model = transformers.VideoMAEModel(config).eval()
    with torch.no_grad():  # make the q / v biases matter
        for layer in model.encoder.layer:
            layer.attention.attention.query.bias.normal_(0, 0.02)
            layer.attention.attention.value.bias.normal_(0, 0.02)
    return model


def _official_videomae_layout(hf_state: dict) -> dict:
    """The HF weights renamed to the official VideoMAE pre-training layout (`encoder.blocks.N.attn.qkv`
    without bias + `q_bias` / `v_bias`, decoder keys present), written independently of our converter."""
    out = {"mask_token": torch.zeros(1, 1, 384), "encoder_to_decoder.weight": torch.zeros(384, WIDTH),
           "decoder.norm.weight": torch.ones(384), "encoder.norm.weight": torch.ones(WIDTH),
           "encoder.norm.bias": torch.zeros(WIDTH)}
    out["encoder.patch_embed.proj.weight"] = hf_state["embeddings.patch_embeddings.projection.weight"]
    out["encoder.patch_embed.proj.bias"] = hf_state["embeddings.patch_embeddings.projection.bias"]
    for i in range(DEPTH):
        hf, ours = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        out[ours + "attn.qkv.weight"] = torch.cat([hf_state[hf + f"attention.attention.{n}.weight"]
                                                   for n in ("query", "key", "value")])
        out[ours + "attn.q_bias"] = hf_state[hf + "attention.attention.query.bias"]
        out[ours + "attn.v_bias"] = hf_state[hf + "attention.attention.value.bias"]
        for hf_name, name in (("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"),
                              ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                              ("output.dense", "mlp.fc2")):
            out[ours + name + ".weight"] = hf_state[hf + hf_name + ".weight"]
            out[ours + name + ".bias"] = hf_state[hf + hf_name + ".bias"]
    return out


def _huggingface_v4_layout(hf_state: dict) -> dict:
    """The layout of the hub's VideoMAE files (transformers 4): `q_bias` / `v_bias` beside bias-free
    query / key / value Linears, under `videomae.`."""
    out = {}
    for key, value in hf_state.items():
        for name, new in (("query.bias", "q_bias"), ("value.bias", "v_bias")):
            if key.endswith("attention.attention." + name):
                key = key[: -len(name)] + new
        out["videomae." + key] = value
    return out


@pytest.mark.parametrize("layout", ["official", "huggingface", "huggingface-v4"])
def test_videomae_vit_b_matches_the_reference_from_both_checkpoint_layouts(layout, hf_videomae, tmp_path):
    hf_state = hf_videomae.state_dict()
    if layout == "official":
        path = tmp_path / "checkpoint.pth"
        torch.save({"model": _official_videomae_layout(hf_state)}, path)
    else:
        path = tmp_path / "pytorch_model.bin"
        torch.save(_huggingface_v4_layout(hf_state) if layout == "huggingface-v4"
                   else {f"videomae.{k}": v for k, v in hf_state.items()}, path)
    ours, _ = create_backbone(_spec("videomae_vit_base_patch16_224.k400_pt", path, 32, num_frames=4, img_size=32,
                                    embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS), 5)
    ours.eval()
    x = _clip(4, 32)
    with torch.no_grad():
        expected = hf_videomae(pixel_values=x.transpose(1, 2)).last_hidden_state
        got = ours.forward_features(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_videomae_vit_b_has_the_published_parameter_count():
    model = meta_model("videomae_vit_base_patch16_224", num_frames=4, img_size=32, num_classes=5)
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head")) == 86_236_416  # 86.2 M


def test_adaptformer_counts_on_videomae_vit_b():
    counts = meta_counts("adaptformer", {"bottleneck": 64}, arch="videomae_vit_base_patch16_224", num_classes=174,
                         num_frames=4, img_size=32)
    assert counts["trainable"] == 1_189_632  # 12 x (2 x 768 x 64 + 64 + 768), the published 1.19 M
    # the same builder at a small width: clips in, one logit per class out
    model = timm.create_model("videomae_vit_base_patch16_224", num_classes=174, num_frames=4, img_size=32,
                              embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS)
    assert model(_clip(4, 32)).shape == (2, 174)


# -- Video Swin-B -------------------------------------------------------------------------------
# The parity model: Video Swin-B's structure (4 stages, patch 2x4x4, window 8x7x7, shifted windows) at
# width 16 and two blocks per stage; the real-size count is taken on the meta device.
SWIN_SMALL = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4)}


@pytest.fixture(scope="module")
def torchvision_swin3d_b():
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    torch.manual_seed(0)
    return SwinTransformer3d(patch_size=[2, 4, 4], window_size=[8, 7, 7], stochastic_depth_prob=0.1,
                             **{k: list(v) if isinstance(v, tuple) else v for k, v in SWIN_SMALL.items()}).eval()


def _official_swin_layout(tv_state: dict) -> dict:
    """torchvision's swin3d_b weights renamed to the official Video-Swin-Transformer / mmaction layout."""
    out = {}
    for key, value in tv_state.items():
        parts = key.split(".")
        if parts[0] == "features":
            index = int(parts[1])
            if index % 2:
                key = f"layers.{index // 2}.downsample." + ".".join(parts[2:])
            else:
                rest = ".".join(parts[3:]).replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
                key = f"layers.{index // 2}.blocks.{parts[2]}.{rest}"
        if key.startswith("head."):
            out["cls_head.fc_cls." + key.split(".", 1)[1]] = value
        else:
            out["backbone." + key] = value
    return {"meta": {"epoch": 30}, "state_dict": out}


@pytest.mark.parametrize("layout", ["torchvision", "official"])
def test_video_swin_b_matches_torchvision_from_both_checkpoint_layouts(layout, torchvision_swin3d_b, tmp_path):
    tv_state = torchvision_swin3d_b.state_dict()
    path = tmp_path / "swin.pth"
    torch.save(tv_state if layout == "torchvision" else _official_swin_layout(tv_state), path)
    ours, _ = create_backbone(_spec("video_swin_base_patch244_window877.k400_in22k", path, 64, **SWIN_SMALL), 400)
    ours.eval()
    with torch.no_grad():
        ours.head.load_state_dict(torchvision_swin3d_b.head.state_dict())
        # 4 x 64 x 64: padding to whole windows, shifted-window masks and windows cropped to small inputs
        x = _clip(4, 64, batch=1)
        torch.testing.assert_close(ours(x), torchvision_swin3d_b(x), rtol=1e-4, atol=1e-4)


def test_video_swin_b_has_the_published_parameter_count():
    model = meta_model("video_swin_base_patch244_window877", num_classes=400)
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head")) == 87_638_984  # 87.64 M


@pytest.mark.parametrize("name, hparams, expected", [
    # biases 137,216 + relative-position tables 15*13*13 * sum(heads x blocks) = 2535 * 376 = 953,160
    ("bitfit", {}, 1_090_376),
    ("adaptformer", {"bottleneck": 64}, 1_553_664),  # sum over blocks of 129 d + 64 (README 1.56 M)
    ("lora", {"rank": 16}, 770_048),  # 4 r sum(d): the README's 0.75 M is closest to r = 16
    # AdaptFormer r = 64 + PATT(k, v) m = 128 with biases, the released command: 6,201,088 (README 6.18 M =
    # this less PATT's up-projection biases 2 sum(d); see bapat.py)
    ("bapat", {}, 1_553_664 + (128 + 2 * 128 + 2) * 12_032 + 128 * 24),
    ("prefix-tuning", {"num_tokens": 20, "reparam_dim": 64}, 214 * 12_032 + 64 * 24),  # README 6.37 M: no
])
def test_method_counts_at_video_swin_b(name, hparams, expected):
    counts = meta_counts(name, hparams, arch="video_swin_base_patch244_window877", num_classes=51)
    assert counts["trainable"] == expected


@pytest.mark.parametrize("name, hparams", [("prefix-tuning", {"num_tokens": 3}), ("lora", {"rank": 2}),
                                           ("adaptformer", {"bottleneck": 4}), ("bapat", {"adapter_bottleneck": 4,
                                                                                           "patt_dim": 4}),
                                           ("bitfit", {})])
def test_methods_train_on_a_small_video_swin(name, hparams):
    torch.manual_seed(0)
    model = timm.create_model("video_swin_base_patch244_window877", num_classes=3, embed_dim=16, depths=(2, 2),
                              num_heads=(1, 2), window_size=(2, 4, 4))
    applied = apply_method(model, build_method(name, hparams))
    x = _clip(4, 32)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, f"{name} on Video Swin: {n}"
    if applied.method.mergeable:
        model.eval()
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.01)
            before = model(x)
            torch.testing.assert_close(applied.merge_and_unload()(x), before, rtol=0, atol=1e-5)


# -- the demo video backbone --------------------------------------------------------------------
def test_demo_video_backbone_is_the_demo_image_backbone_inflated_along_time():
    """Every weight but the patch projection is the image checkpoint's; the projection is the image's
    spread over the tubelet's 2 frames, so on a clip of one repeated frame each time step's tokens (with
    the time code off) are exactly the image model's tokens of that frame."""
    from vpeft.backbones import demo  # noqa: F401

    image = timm.create_model("vit_demo_patch4_32", num_classes=0, checkpoint_path=DEMO_CKPT).eval()
    video = timm.create_model("video_vit_demo_patch4_32", num_classes=0, checkpoint_path=DEMO_CKPT,
                              temporal_pos_scale=0.0).eval()
    weights = load_file(DEMO_CKPT)
    video_state = video.state_dict()
    for key, value in weights.items():
        if key != "patch_embed.proj.weight":
            assert torch.equal(video_state[key], value), key
    torch.testing.assert_close(video.patch_embed.proj.weight.sum(dim=2), weights["patch_embed.proj.weight"])
    frame = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    clip = frame.unsqueeze(2).expand(-1, -1, 4, -1, -1)
    with torch.no_grad():
        tokens_image = image._pos_embed(image.patch_embed(frame))  # [CLS] + 64 patches, positions added
        tokens_video = video._add_positions(video.patch_embed(clip))  # [CLS] + 2 x 64 patches
    torch.testing.assert_close(tokens_video[:, 0], tokens_image[:, 0])
    for t in range(2):
        torch.testing.assert_close(tokens_video[:, 1 + 64 * t:1 + 64 * (t + 1)], tokens_image[:, 1:],
                                   rtol=1e-5, atol=1e-5)


def test_demo_video_backbone_sees_frame_order():
    """With the default time code, reversing a clip changes the features (the backbone is not order-blind)."""
    video = timm.create_model("video_vit_demo_patch4_32", num_classes=0, checkpoint_path=DEMO_CKPT).eval()
    x = _clip(4, 32)
    with torch.no_grad():
        assert (video(x) - video(x.flip(2))).abs().max() > 1e-3


def test_wrong_clip_shape_is_a_clear_error():
    model = timm.create_model("video_vit_demo_patch4_32", num_classes=0)
    with pytest.raises(ValueError, match=r"expected clips \(B, C, 4, 32, 32\)"):
        model(_clip(8, 32))
