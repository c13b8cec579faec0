"""SCT: salient channels = largest class-mean L2 norm at the input of norm2 (patch tokens only);
a Linear on those channels between the attention and MLP residuals; a selection stage that leaves
the model alone."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from helpers.models import small_vit

from vpeft.methods import MethodError, apply_method, build_method, method_layers
from vpeft.methods.sct import SctBlock


def random_batch(seed: int, n: int = 6, num_classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % num_classes


def constructed_vit():
    """Block 0's norm2 input is exactly the patch tokens, whose channel 0 is the image's red value and
    channel 1 its green value (all other channels 0). A huge CLS token on channel 0 must be ignored."""
    model = small_vit().eval()
    with torch.no_grad():
        model.pos_embed.zero_()
        model.cls_token.zero_()
        model.cls_token[..., 0] = 100.0
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.patch_embed.proj.weight[0, 0] = 1 / 64  # mean red of the 8x8 patch
        model.patch_embed.proj.weight[1, 1] = 1 / 64  # mean green
        for block in model.blocks:
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
    return model


def coloured(red: list[float], green: list[float], labels: list[int]):
    images = torch.zeros(len(labels), 3, 32, 32)
    images[:, 0] = torch.tensor(red).view(-1, 1, 1)
    images[:, 1] = torch.tensor(green).view(-1, 1, 1)
    return images, torch.tensor(labels)


def test_selects_the_channels_with_the_largest_class_mean_norm():
    """9 images of class 0 (red 1.2, green 1) and 1 of class 1 (green 1). Per-class norms over 16 patch
    tokens: red (14.4, 0) -> mean 7.2; green (12, 4) -> mean 8. The class mean picks green although
    the pooled norm (red 14.4 > green 12.6) and the CLS token (red 100) would pick red."""
    x, y = coloured([1.2] * 9 + [0.0], [1.0] * 10, [0] * 9 + [1])
    method = build_method("sct", {"top_n": 1})
    selection = method.compute_selection(constructed_vit(), [(x[:4], y[:4]), (x[4:], y[4:])], 5)
    assert selection["blocks.0"].tolist() == [1]
    # a different batch (class 1 now has no green: green mean 6 < red 7.2) changes the selection
    x2, y2 = coloured([1.2] * 9 + [0.0], [1.0] * 9 + [0.0], [0] * 9 + [1])
    assert method.compute_selection(constructed_vit(), [(x2, y2)], 5)["blocks.0"].tolist() == [0]
    # N = 2 takes both non-zero channels, in ascending order
    assert build_method("sct", {"top_n": 2}).compute_selection(constructed_vit(), [(x, y)], 5)["blocks.0"].tolist() \
        == [0, 1]


def test_selection_matches_a_block_by_block_reference():
    model = small_vit().eval()
    batches = [random_batch(1), random_batch(2, n=4)]
    selection = build_method("sct", {"top_n": 6}).compute_selection(model, batches, 5)
    sums = [torch.zeros(5, 48, dtype=torch.float64) for _ in model.blocks]
    with torch.no_grad():
        for images, labels in batches:
            x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
            for i, block in enumerate(model.blocks):
                h = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
                for sample, label in zip(h[:, 1:], labels):
                    sums[i][label] += sample.double().pow(2).sum(0)
                x = h + block.drop_path2(block.ls2(block.mlp(block.norm2(h))))
    for i in range(2):
        score = sums[i].sqrt().mean(0)  # all 5 classes present
        expected = sorted(score.argsort(descending=True)[:6].tolist())
        assert selection[f"blocks.{i}"].tolist() == expected


def test_compute_selection_leaves_the_model_untouched():
    model = small_vit()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    selection = build_method("sct", {"top_n": 6}).compute_selection(model, [random_batch(1)], 5)
    assert all(v.dtype == torch.int64 and v.shape == (6,) for v in selection.values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert state.keys() == model.state_dict().keys()
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert modes == {n: m.training for n, m in model.named_modules()}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    again = build_method("sct", {"top_n": 6}).compute_selection(model, [random_batch(1)], 5)
    assert all(torch.equal(selection[k], again[k]) for k in selection)


def test_the_block_adds_a_linear_on_the_salient_channels_before_the_mlp():
    model = small_vit().eval()
    reference = copy.deepcopy(model)
    method = build_method("sct", {"top_n": 6})
    selection = method.compute_selection(model, [random_batch(1)], 5)
    apply_method(model, method, selection)
    layer = model.blocks[0]
    assert isinstance(layer, SctBlock) and layer.linear.weight.shape == (6, 6)
    assert layer.linear.bias.abs().sum() == 0 and 0 < layer.linear.weight.std() < 0.05  # trunc-normal(0.02)
    with torch.no_grad():
        layer.linear.bias.normal_()
        x = torch.randn(3, 17, 48)
        block, s = reference.blocks[0], selection["blocks.0"]
        h = x + block.attn(block.norm1(x))
        h[:, :, s] = h[:, :, s] + h[:, :, s] @ layer.linear.weight.t() + layer.linear.bias
        expected = h + block.mlp(block.norm2(h))
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)


def test_zero_weights_give_the_frozen_model_exactly():
    model = small_vit().eval()
    reference = copy.deepcopy(model)
    method = build_method("sct", {"top_n": 6})
    apply_method(model, method, method.compute_selection(model, [random_batch(1)], 5))
    with torch.no_grad():
        for layer in method_layers(model):
            layer.linear.weight.zero_()
        x, _ = random_batch(4)
        torch.testing.assert_close(model.forward_features(x), reference.forward_features(x), rtol=0, atol=0)


def test_channel_count_validation_and_ratio():
    with pytest.raises(MethodError, match="only 48 wide"):
        build_method("sct", {"top_n": 96}).compute_selection(small_vit(), [random_batch(1)], 5)
    method = build_method("sct", {"top_ratio": 0.125})  # d / 8, as 96 / 768
    model = small_vit()
    applied = apply_method(model, method, method.compute_selection(model, [random_batch(1)], 5))
    assert applied.parameter_counts()["trainable"] == 2 * (6 * 6 + 6)
    with pytest.raises(MethodError, match="another top_n"):
        selection = build_method("sct", {"top_n": 4}).compute_selection(small_vit(), [random_batch(1)], 5)
        apply_method(small_vit(), build_method("sct", {"top_n": 6}), selection)
    with pytest.raises(MethodError, match="top_ratio must be"):
        build_method("sct", {"top_ratio": 1.5})


def test_swin_is_refused_clearly():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                              depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=3)
    with pytest.raises(MethodError, match="ViT-style blocks"):
        build_method("sct", {"top_n": 4}).compute_selection(model, [(torch.randn(2, 3, 56, 56), torch.tensor([0, 1]))], 3)
