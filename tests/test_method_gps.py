"""GPS: top-K |gradient| per output neuron, SupCon selection loss, a selection stage that leaves the
model alone, sparse deltas that merge into exactly the selected entries."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch

from vpeft.methods import MethodError, apply_method, build_method, method_layers
from vpeft.methods.gps import GpsSparseDelta, supervised_contrastive_loss, top_k_per_row


def small_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                             depth=2, num_heads=3, num_classes=5)


def images(seed: int, n: int = 6, num_classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % num_classes


CANDIDATES = ["patch_embed.proj"] + [f"blocks.{i}.{m}" for i in range(2)
                                     for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


def test_top_k_per_row_picks_largest_magnitudes_on_a_hand_made_gradient():
    grad = torch.tensor([[0.1, -3.0, 2.0, 0.0],
                         [5.0, 0.0, -6.0, 1.0],
                         [0.0, 0.2, 0.0, -0.3]])
    assert top_k_per_row(grad, 1).tolist() == [1, 6, 11]
    assert top_k_per_row(grad, 2).tolist() == [1, 2, 4, 6, 9, 11]
    conv = grad.reshape(3, 1, 2, 2)  # conv weights: rows are output channels, flattened over in x kh x kw
    assert top_k_per_row(conv, 1).tolist() == [1, 6, 11]
    with pytest.raises(MethodError, match="exceeds the fan-in"):
        top_k_per_row(grad, 5)


def naive_supcon(features, labels, temperature):
    """SupCon written out anchor by anchor (Khosla et al., eq. 2)."""
    z = torch.nn.functional.normalize(features, dim=1)
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        denom = torch.logsumexp(torch.stack([z[i] @ z[a] / temperature for a in others]), 0)
        losses.append(-sum((z[i] @ z[p] / temperature - denom) for p in positives) / len(positives))
    return torch.stack(losses).mean()


def test_supcon_loss_matches_the_written_out_formula():
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(8, 5, generator=g), torch.tensor([0, 1, 2, 0]).repeat(2)  # 2 views of 4
    torch.testing.assert_close(supervised_contrastive_loss(features, labels, 0.07),
                               naive_supcon(features, labels, 0.07))


def test_selection_is_the_top_k_of_the_summed_supcon_gradient():
    """Recompute GPS's criterion independently: frozen copy, both views = the image, SupCon on the
    pre-logit feature, gradients summed over two batches; the selection is its top-K per row."""
    model = small_vit()
    batches = [images(1), images(2)]
    method = build_method("gps", {"top_k": 2, "contrast_views": False})
    selection = method.compute_selection(model, batches, 5)
    assert sorted(selection) == sorted(CANDIDATES)

    reference = copy.deepcopy(model).eval()
    weights = {n: reference.get_submodule(n).weight for n in CANDIDATES}
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    for x, y in batches:
        feats = reference.forward_head(reference.forward_features(torch.cat([x, x])), pre_logits=True)
        loss = naive_supcon(feats, torch.cat([y, y]), 0.07)
        for n, grad in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
            total[n] += grad
    for n in CANDIDATES:
        rows = total[n].reshape(total[n].shape[0], -1).abs()
        expected = (rows.argsort(dim=1, descending=True)[:, :2]
                    + torch.arange(rows.shape[0]).unsqueeze(1) * rows.shape[1]).reshape(-1).sort().values
        assert selection[n].dtype == torch.int64
        assert selection[n].tolist() == expected.tolist(), n


def test_compute_selection_leaves_the_model_untouched():
    model = small_vit()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head") or name.endswith("bias"))
    model.blocks[1].train(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    build_method("gps").compute_selection(model, [images(1)], 5)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert modes == {n: m.training for n, m in model.named_modules()}
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_selection_depends_on_the_batch_and_is_deterministic_for_a_seed():
    model = small_vit()
    method = build_method("gps")  # random crop + flip views
    torch.manual_seed(7)
    first = method.compute_selection(model, [images(1)], 5)
    torch.manual_seed(7)
    again = method.compute_selection(model, [images(1)], 5)
    assert all(torch.equal(first[n], again[n]) for n in first)
    torch.manual_seed(7)
    other = method.compute_selection(model, [images(2)], 5)
    assert any(not torch.equal(first[n], other[n]) for n in first)


def test_trainable_count_is_k_per_row_plus_biases():
    rows = 48 + 2 * (3 * 48 + 48 + 4 * 48 + 48)
    for k, bias in [(1, True), (3, True), (2, False)]:
        model = small_vit()
        method = build_method("gps", {"top_k": k, "tune_bias": bias, "contrast_views": False})
        applied = apply_method(model, method, method.compute_selection(model, [images(1)], 5))
        assert applied.parameter_counts()["trainable"] == k * rows + (rows if bias else 0)
        assert all(isinstance(model.get_submodule(n), GpsSparseDelta) for n in CANDIDATES)


def test_merge_changes_exactly_the_selected_entries():
    model = small_vit().eval()
    original = copy.deepcopy(model)
    method = build_method("gps", {"top_k": 2, "contrast_views": False})
    selection = method.compute_selection(model, [images(1)], 5)
    applied = apply_method(model, method, selection)
    with torch.no_grad():
        for layer in method_layers(model):
            layer.delta.uniform_(0.5, 1.0)
            layer.bias_delta.uniform_(0.5, 1.0)
    x, _ = images(3)
    with torch.no_grad():
        before = model(x)
        plain = applied.merge_and_unload()
        torch.testing.assert_close(plain(x), before, rtol=0, atol=1e-5)
    for name in CANDIDATES:
        changed = (plain.get_submodule(name).weight != original.get_submodule(name).weight).reshape(-1)
        assert changed.nonzero().reshape(-1).tolist() == selection[name].tolist()
        assert (plain.get_submodule(name).bias != original.get_submodule(name).bias).all()
    for name, p in plain.named_parameters():
        if not any(name.startswith(c + ".") for c in CANDIDATES) and not name.startswith("head"):
            assert torch.equal(p, original.get_parameter(name)), name


def test_unmerge_restores_the_frozen_weight():
    model = small_vit().eval()
    method = build_method("gps", {"contrast_views": False})
    apply_method(model, method, method.compute_selection(model, [images(1)], 5))
    layer = model.blocks[0].mlp.fc1
    with torch.no_grad():
        layer.delta.normal_()
    weight = layer.base_layer.weight.detach().clone()
    method.merge(model)
    assert not torch.equal(layer.base_layer.weight, weight)
    method.unmerge(model)
    torch.testing.assert_close(layer.base_layer.weight, weight, rtol=0, atol=1e-6)


def test_a_selection_for_another_k_or_model_is_refused():
    model = small_vit()
    selection = build_method("gps", {"top_k": 1}).compute_selection(model, [images(1)], 5)
    with pytest.raises(MethodError, match="another top_k"):
        apply_method(small_vit(), build_method("gps", {"top_k": 2}), selection)
    with pytest.raises(MethodError, match="does not fit this model"):
        apply_method(small_vit(), build_method("gps"), {k: v for k, v in selection.items() if "blocks.1" not in k})
    with pytest.raises(MethodError, match="needs its selection stage"):
        apply_method(small_vit(), build_method("gps"))
    with pytest.raises(MethodError, match="smallest fan-in"):
        build_method("gps", {"top_k": 49}).compute_selection(small_vit(), [images(1)], 5)


def test_gps_applies_to_swin():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                              depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=3)
    x = torch.randn(4, 3, 56, 56)
    method = build_method("gps")
    applied = apply_method(model, method, method.compute_selection(model, [(x, torch.tensor([0, 1, 2, 0]))], 3))
    model(x).sum().backward()
    assert "head.fc" not in applied.matched and "layers.1.downsample.reduction" in applied.matched
    assert math.isfinite(applied.parameter_counts()["trainable"])


def _summed_top1(model, batches, train):
    """GPS's criterion written out with the model in the given mode: both views the image itself."""
    ref = copy.deepcopy(model).train(train)
    weights = {n: ref.get_submodule(n).weight for n in CANDIDATES}
    for p in ref.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    for x, y in batches:
        feats = ref.forward_head(ref.forward_features(torch.cat([x, x])), pre_logits=True)
        loss = supervised_contrastive_loss(feats, torch.cat([y, y]), 0.07)
        for n, g in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
            total[n] += g
    return {n: top_k_per_row(g, 1) for n, g in total.items()}


def test_selection_runs_in_train_mode_as_the_official_calculate_gradient():
    """Official `calculate_gradient` calls model.train(): drop-path is active during the selection."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                              depth=2, num_heads=3, num_classes=5, drop_path_rate=0.5)
    batches = [images(1), images(2)]
    torch.manual_seed(3)
    official = build_method("gps", {"contrast_views": False}).compute_selection(model, batches, 5)
    torch.manual_seed(3)
    expected = _summed_top1(model, batches, train=True)
    assert all(torch.equal(official[n], expected[n]) for n in CANDIDATES)
    torch.manual_seed(3)
    frozen_mode = build_method("gps", {"contrast_views": False, "selection_mode": "eval"}).compute_selection(
        model, batches, 5)
    assert all(torch.equal(frozen_mode[n], _summed_top1(model, batches, train=False)[n]) for n in CANDIDATES)
    assert any(not torch.equal(official[n], frozen_mode[n]) for n in CANDIDATES)


def test_contrast_views_jitter_colour_with_p_08_and_grayscale_with_p_02():
    """Official `transforms_contrastaug_train`: RandomApply(ColorJitter(.4, .4, .4, .1), p=.8) then
    RandomGrayscale(p=.2). Constant-colour images stay constant under crop and flip, so a view keeps
    its colour only when neither step fired (p = .2 * .8 = .16) and is grey with p ~ .2."""
    from vpeft.methods.gps import contrast_view

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    n = 400
    colours = 0.15 + 0.7 * torch.rand(n, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    pixels = colours.expand(n, 3, 8, 8)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    views = contrast_view((pixels - m) / s, torch.Generator().manual_seed(1), mean, std) * s + m
    flat = views.flatten(2)
    assert torch.allclose(flat, flat[:, :, :1].expand_as(flat), atol=1e-5)  # still constant images
    got = flat[:, :, 0]
    unchanged = (got - colours.view(n, 3)).abs().max(1).values < 1e-4
    grey = (got.max(1).values - got.min(1).values) < 1e-4
    assert 0.08 < unchanged.float().mean() < 0.26
    assert 0.12 < grey.float().mean() < 0.30
    plain = contrast_view((pixels - m) / s, torch.Generator().manual_seed(1))  # no stats: crop + flip only
    assert torch.allclose(plain * s + m, pixels, atol=1e-5)
