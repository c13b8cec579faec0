"""One parametrised table over every method: trainability, gradients, counts, init, merge.

Small models check behaviour; ViT-B/16 on the meta device checks the counts at real size against the
paper's shapes written out per method.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import timm
import torch
from helpers.models import meta_counts, small_swin
from helpers.models import small_vit as _small_vit

from vpeft.methods import (
    MethodError,
    MethodLayer,
    ModuleRef,
    SelectiveMethod,
    apply_method,
    available_methods,
    build_method,
    get_method_class,
    method_layers,
)
from vpeft.methods.base import PeftMethod, check_references

D, L, H = 768, 12, 3072  # ViT-B/16 width, depth, MLP width


@dataclass(frozen=True)
class Case:
    """One row of the method table.

    small: hyper-parameters on the small test ViT; vitb: hyper-parameters at ViT-B/16;
    formula: trainable parameters at ViT-B/16 (head excluded) from the method's own formula;
    published: the count V-PETL / the paper prints, where our formula reproduces it (else None, and
    PUBLISHED_DIFFERS says in one line why, the module docstring in full); identity: the wrapped model
    equals the frozen one at init.
    """

    small: dict = field(default_factory=dict)
    vitb: dict = field(default_factory=dict)
    formula: Callable[[], int] = lambda: 0
    published: int | None = None
    identity: bool = True


CASES = {
    "full": Case(formula=lambda: 85_798_656, published=85_798_656),
    "linear": Case(formula=lambda: 0, published=0),
    "bitfit": Case(formula=lambda: L * (3 * D + D + H + D + 2 * D) + D + D, published=102_912),
    "ln-tune": Case(formula=lambda: L * 2 * 2 * D + 2 * D, published=38_400),
    "partial": Case({"k": 1}, {"k": 1},
                    lambda: 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + (D * H + H) + (H * D + D)
                    + 2 * D),  # last block + final norm as VPT's code: 7,089,408 (VPT prints no absolute count)
    "lora": Case({"rank": 4}, {"rank": 8}, lambda: L * 4 * D * 8, published=294_912),
    "adapter": Case({"bottleneck": 4}, {"bottleneck": 8}, lambda: L * (2 * D * 8 + 8 + D), published=156_768,
                    identity=False),  # NOAH's Xavier init: a small, not an exact, identity (see adapter.py)
    "vpt-shallow": Case({"num_tokens": 3}, {"num_tokens": 100}, lambda: 100 * D, published=76_800, identity=False),
    "vpt-deep": Case({"num_tokens": 3}, {"num_tokens": 10}, lambda: L * 10 * D, identity=False),
    "gps": Case({"top_k": 2}, {"top_k": 1}, lambda: (1 + 1) * (D + L * (3 * D + D + H + D))),  # K*rows + biases
    "snf": Case({"flow_length": 2}, {}, lambda: L * 2 * 2 * D, identity=False),  # affine flows: the abstract's 0.036M
    "adaptformer": Case({"bottleneck": 4}, {"bottleneck": 8}, lambda: L * (2 * D * 8 + 8 + D), published=156_768),
    "prefix-tuning": Case({"num_tokens": 3}, {"num_tokens": 10}, lambda: L * 2 * 10 * D, identity=False),
    "sct": Case({"top_n": 6}, {"top_n": 96}, lambda: L * (96 * 96 + 96), published=111_744, identity=False),
    "hydra": Case({"rank": 2}, {"rank": 2},
                  lambda: L * (2 * (2 * D * 2 + 2 + D) + (H * 2 + 2 + 2 * D + D) + (2 * D * 2 + 2 + D))),
    "ssf": Case(formula=lambda: L * 2 * (3 * D + D + H + D + D + D) + 2 * D + 2 * D, published=205_824,
                identity=False),
    "fact-tk": Case({"rank": 4, "scale": 1.0}, {"rank": 32}, lambda: 2 * D * 32 + 12 * L * 32 + 32**3),  # 1680r + r^3
    "fact-tt": Case({"rank": 4, "scale": 1.0}, {"rank": 16}, lambda: 2 * D * 16 + 12 * L * 16**2),  # 1536r + 144r^2
    "repadapter": Case({"hidden_dim": 8}, {"hidden_dim": 8}, lambda: 2 * L * (D * 8 + 8 + D * 8 // 2 + D)),
    "dtl": Case({"start_block": 1}, {}, lambda: L * 2 * D * 2, published=36_864),
    "dtl-plus": Case({"start_block": 1}, {}, lambda: L * 2 * D * 2 + D * 3 * 3),
    "lst": Case({"reduction_factor": 4}, {},  # side width ds = D/8, MLP hs = H/8; V-PETL prints 2.38M
                lambda ds=D // 8, hs=H // 8: L * (4 * ds * ds + 2 * ds * hs + 9 * ds + hs)  # side blocks
                + (L + 1) * (D * ds + ds) + L + 2 * ds + (ds * D + D),  # ladders, gates, side LN, up
                published=2_376_492, identity=False),
    "hst": Case({"stage_dims": (8, 16), "num_heads": (2, 2)}, {},  # paper: d_s 32/48/64/72, 3 blocks per stage
                lambda: (27 * 32 + 2 * 32 + 4 * 32 * 32 + 32 + 2 * 32)  # stem: conv, BN, conv, LN
                + sum(9 * a * b + 3 * b for a, b in ((32, 48), (48, 64), (64, 72)))  # stage convs + LN
                + sum(3 * (12 * d * d + 13 * d) + 2 * d + D * d + d + 3 * 2 * d for d in (32, 48, 64, 72))
                + L * D  # meta tokens: 727,976
                + L * 4 * D,  # block LayerNorms, trained as the official code: 764,840 (see hst.py)
                identity=False),
    "last": Case({"rank": 4}, {"rank": 16}, lambda: L * (4 * D * 16 + 3 * 16 + 3 * D)),  # 618,048; see last.py
    "u-tuning": Case({"num_tokens": 3, "ffn_tokens": 2}, {"num_tokens": 10}, lambda: L * 2 * D * 10),
    "noah": Case({"prompt_dims": (2, 1), "lora_ranks": (0, 2), "adapter_dims": (3, 0)},
                 {"prompt_dims": (10, 5, 10, 1, 5, 1, 10, 1, 10, 5, 1, 10),  # NOAH's released CIFAR-100 subnet
                  "lora_ranks": (10, 1, 5, 5, 1, 10, 1, 1, 1, 10, 1, 1),
                  "adapter_dims": (5, 10, 10, 10, 5, 1, 1, 1, 10, 10, 10, 1)},
                 lambda: D * 69 + 4 * D * 47 + (2 * D + 1) * 74 + 12 * D, identity=False),
    "bapat": Case({"adapter_bottleneck": 4, "patt_dim": 4}, {},  # AdaptFormer r=64 + PATT(k, v) m=128, released code
                  lambda: L * (2 * D * 64 + 64 + D) + L * (D * 128 + 128 + 128 * 2 * D + 2 * D),
                  identity=False),  # 4,748,544; see bapat.py
    "mona": Case({"bottleneck": 8}, {},  # 2 modules per block: 133 d + 9,728 each at m = 64 (see mona.py)
                 lambda m=64: L * 2 * (5 * D + 2 * D * m + m * (9 + 25 + 49) + 3 * m + m * m + 2 * m), identity=False),
    "lorand": Case({"bottleneck": 8, "kernel_rank": 2}, {},  # alpha (2 beta (d + m) + beta^2) + m + d, 2 per block
                   lambda a=2, b=8, m=D // 2: L * 2 * (a * (2 * b * (D + m) + b * b) + m + D)),
    "e3va": Case({"bottleneck": 8, "kernel_rank": 2}, {},  # LoRand-style adapters x 2 per block + final norm
                 lambda a=2, b=8, m=D // 2: L * 2 * (a * (2 * b * (D + m) + b * b) + m + D) + 2 * D),
    # huggingface peft's tuners (hf_peft.py), at their defaults on ViT-B/16: formulas from each tuner's shapes
    "peft-lora": Case({"args": {"r": 4}}, {}, lambda: L * 8 * (D + 3 * D)),  # A (r x d), B (3d x r) on qkv
    "peft-dora": Case({"args": {"r": 4}}, {}, lambda: L * (8 * (D + 3 * D) + 3 * D)),  # + magnitude per output
    "peft-rslora": Case({"args": {"r": 4}}, {}, lambda: L * 8 * (D + 3 * D)),
    "peft-pissa": Case({"args": {"r": 4}}, {}, lambda: L * 8 * (D + 3 * D), identity=False),  # W_res + BA = W, rounded
    "peft-vera": Case({"args": {"r": 16}}, {}, lambda: L * (256 + 3 * D)),  # lambda_d (r) + lambda_b (3d)
    "peft-oft": Case({"args": {"oft_block_size": 16}}, {}, lambda: L * (D // 32) * (32 * 31 // 2)),  # skew blocks
    "peft-boft": Case({}, {}, lambda: L * ((D // 4) * 4 * 4 + 3 * D)),  # butterfly blocks (m = 1) + output scale
    "peft-hra": Case({"args": {"r": 4}}, {}, lambda: L * 8 * D,  # r Householder vectors of length d
                     identity=False),  # its reflection pairs cancel only up to float rounding
    "peft-ia3": Case({}, {}, lambda: L * (3 * D + H)),  # qkv output scale + fc2 input scale
    "peft-loha": Case({"args": {"r": 4, "alpha": 4}}, {}, lambda: L * 2 * 8 * (D + 3 * D)),
    "peft-lokr": Case({}, {},  # 3d x d = (48 x 48) x (24 x 32): w1 48 x 24 full, w2 = (48 x r)(r x 32)
                      lambda: L * (48 * 24 + 8 * (48 + 32))),
    "peft-adalora": Case({"args": {"init_r": 4, "target_r": 2}}, {}, lambda: L * (12 * (D + 3 * D) + 12)),  # P, Q, E
    "peft-fourierft": Case({"args": {"n_frequency": 50}}, {}, lambda: L * 3000, identity=False),  # Gaussian init
    "peft-ln-tuning": Case(formula=lambda: L * 2 * 2 * D + 2 * D, published=38_400),
}
# Why a published count (V-PETL's tables, published/*.csv) is not the `formula` at the case's settings.
PUBLISHED_DIFFERS = {
    "vpt-deep": "printed 0.56 M is at VPT's per-task prompt lengths, not the 10 tokens of this case",
    "gps": "V-PETL's 0.22 M is not derivable from the official scripts (K = 1 on all but one task: 0.17 M mean)",
    "snf": "printed 0.25 M is one planar flow (K = 1) plus the FGVC head, not the paper's 0.036M (test_method_snf.py)",
    "prefix-tuning": "printed 0.36 M counts the FGVC head (test_method_prefix_tuning.py: count + mean head)",
    "hydra": "printed 0.28 M counts the VTAB head (test_method_hydra.py: count + mean head rounds to it)",
    "u-tuning": "printed 0.36 M counts the FGVC head (test_method_u_tuning.py: count + mean head)",
    "repadapter": "printed 0.22 M leaves out the up-projection biases the official code trains "
                  "(test_method_repadapter.py)",
    "fact-tk": "printed rows average per-task ranks and scales, not one setting (fact.py)",
    "fact-tt": "printed rows average per-task ranks and scales, not one setting (fact.py)",
    "hst": "printed 0.78 M includes a VTAB head and is reproduced only roughly (hst.py)",
    "last": "printed 0.66 M counts the VTAB head (test_method_last.py: count + mean head rounds to it); r unverified",
    "noah": "printed 0.43 M is NOAH's own counting of its searched subnets, not reproduced (noah.py)",
    "bapat": "printed 2.06 M (ViT-B) is at a setting the released code (Video Swin only) does not give (bapat.py)",
}
REAL_WEIGHTS_TO_COUNT = {"hst",  # builds its side network from the backbone's weights
                         "peft-boft"}  # peft's BOFT reads tensor values while building (no meta device)
IDENTITY_AT_INIT = sorted(name for name, case in CASES.items() if case.identity)


def apply_case(name: str, model: torch.nn.Module, hparams: dict, num_classes: int = 5, images=None):
    """Build `name`, run its selection stage on a training batch when it has one, apply it."""
    method = build_method(name, hparams)
    selection = None
    if method.needs_selection:
        if images is None:
            images = batch(num_classes=num_classes)
        selection = method.compute_selection(model, [images], num_classes)
    return apply_method(model, method, selection)


def test_every_registered_method_is_in_the_table():
    assert sorted(CASES) == available_methods()


def test_methods_declare_family_paper_and_year():
    for name in available_methods():
        cls = get_method_class(name)
        assert cls.paper and re.search(r"(19|20)\d\d", cls.paper), f"{name}: paper must name the reference and year"


def small_vit(num_classes: int = 5):
    return _small_vit(depth=2, num_classes=num_classes)


def batch(n: int = 6, num_classes: int = 5):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % num_classes


@pytest.fixture(scope="module")
def vit_b16():
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_only_method_tensors_and_head_are_trainable(name):
    model = small_vit()
    applied = apply_case(name, model, CASES[name].small)
    assert applied.matched, "a method must say which modules it acted on"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {"head.weight", "head.bias"}
    assert head <= trainable
    owned = set(applied.method.method_parameter_names(model))  # its MethodLayers' (peft: peft's layers')
    rest = trainable - head - owned
    if name == "full":
        assert trainable == {n for n, _ in model.named_parameters()}
    elif name == "bitfit":
        assert rest and all(n.rpartition(".")[2] == "bias" for n in rest)
    elif name == "ln-tune":
        assert rest == {n for n, _ in model.named_parameters() if "norm" in n}
    elif name == "partial":
        assert rest == {n for n, _ in model.named_parameters()  # last of 2 blocks + final norm (VPT)
                        if n.startswith(("blocks.1.", "norm."))}
    else:
        assert rest == set(applied.method.select_backbone_parameters(model)), \
            f"{name} trains backbone tensors it does not own: {sorted(rest)[:5]}"
    if name != "full" and not isinstance(applied.method, SelectiveMethod):
        assert owned, f"{name} added no trainable tensors"


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_trainable_tensor_gets_gradient_and_frozen_ones_do_not(name):
    """Two optimiser steps on a real batch: zero-init branches (LoRA B, adapter up) become live after
    the first, so by the second backward every trainable tensor must have a non-zero gradient."""
    model = small_vit()
    apply_case(name, model, CASES[name].small)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = batch()
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if step == 0:
            opt.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: {n} gets no gradient"
        else:
            assert p.grad is None, f"{name}: frozen {n} received a gradient"
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{name}: frozen {n} was modified"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "gps" else n for n in sorted(CASES)])
def test_parameter_count_at_vit_b16_is_the_papers_shapes(name, request):
    """The count of the built method equals the count written out from the paper's shapes (`formula`),
    and the published number where that reproduces it. Built on the meta device (real shapes, no
    storage), except where building needs real weights: a data-dependent selection (GPS, SCT) or
    weights copied from the backbone (HST)."""
    case = CASES[name]
    if get_method_class(name).needs_selection or name in REAL_WEIGHTS_TO_COUNT:
        images = (torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1]))
        model = copy.deepcopy(request.getfixturevalue("vit_b16"))
        counts = apply_case(name, model, case.vitb, num_classes=10, images=images).parameter_counts()
    else:
        counts = meta_counts(name, case.vitb)
    assert counts["trainable"] == case.formula()
    if case.published is not None:
        assert counts["trainable"] == case.published
    assert counts["head"] == 769 * 10
    assert counts["trainable_with_head"] == counts["trainable"] + counts["head"]


def test_every_published_count_is_reproduced_or_its_difference_explained():
    import csv

    from helpers.snake import ROOT

    printed = set()
    for table in ("vtab1k", "fgvc"):
        with open(ROOT / "src/vpeft/report/published" / f"{table}.csv", newline="") as f:
            printed |= {row["method"] for row in csv.DictReader(f)}
    printed = {"prefix-tuning" if m == "prefix" else m for m in printed} & set(CASES)
    unexplained = sorted(m for m in printed if CASES[m].published is None and m not in PUBLISHED_DIFFERS)
    assert unexplained == []
    assert not [m for m in PUBLISHED_DIFFERS if CASES[m].published is not None]


@pytest.mark.parametrize("name", sorted(IDENTITY_AT_INIT))
def test_output_unchanged_at_init(name):
    model = small_vit().eval()
    reference = copy.deepcopy(model)
    apply_case(name, model, CASES[name].small)
    if isinstance(model.norm, torch.nn.Identity) and not isinstance(reference.norm, torch.nn.Identity):
        reference.norm = torch.nn.Identity()  # DTL moves the final norm after pooling: compare token streams
    x, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), reference.forward_features(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(n for n in CASES if get_method_class(n).mergeable))
def test_merged_model_equals_unmerged(name):
    model = small_vit().eval()
    applied = apply_case(name, model, CASES[name].small)
    with torch.no_grad():  # move away from the identity init so merging has something to fold in
        for param_name in applied.method.method_parameter_names(model):
            model.get_parameter(param_name).normal_(0, 0.1)
    x, _ = batch()
    with torch.no_grad():
        before = model(x)
        plain = applied.merge_and_unload()
        after = plain(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert not method_layers(plain), "merge_and_unload must leave the plain timm architecture"
    reference = small_vit()
    assert type(plain) is type(reference)
    assert {k: v.shape for k, v in plain.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in plain.modules()), "merged model keeps hooks"


@pytest.mark.parametrize("name", sorted(CASES))
def test_frozen_prefix_blocks_build_no_graph(name):
    """Blocks before the first one a method touches (all of them for side-tuning) run without autograd
    history: no backward pass goes through them, and their outputs are cacheable."""
    model = small_vit()
    applied = apply_case(name, model, CASES[name].small)
    method = applied.method
    blocks = list(model.blocks)
    frozen = method.frozen_prefix_blocks(model)
    assert 0 <= frozen <= len(blocks)
    if not method.needs_backbone_grad:
        assert frozen == len(blocks), "a side-tuning method must leave every backbone block frozen"
    outputs = []
    hooks = [b.register_forward_hook(lambda m, a, out: outputs.append(out.requires_grad)) for b in blocks]
    model(batch()[0])
    for h in hooks:
        h.remove()
    assert outputs[:frozen] == [False] * frozen, f"{name}: a block it declares frozen carries gradient history"
    if frozen < len(blocks):
        assert outputs[frozen], f"{name}: declares only {frozen} frozen blocks but block {frozen} has no graph"


def test_lora_unmerge_restores_frozen_weight():
    model = small_vit().eval()
    method = build_method("lora", {"rank": 2})
    apply_method(model, method)
    layer = method_layers(model)[0]
    with torch.no_grad():
        layer.lora_B["q"].normal_()
    original = layer.base_layer.weight.detach().clone()
    method.merge(model)
    assert not torch.equal(layer.base_layer.weight, original)
    method.unmerge(model)
    torch.testing.assert_close(layer.base_layer.weight, original, rtol=0, atol=1e-6)


def test_lora_acts_on_q_and_v_thirds_only():
    model = small_vit().eval()
    apply_method(model, build_method("lora", {"rank": 2}))
    layer = method_layers(model)[0]
    with torch.no_grad():
        for p in layer.lora_B.values():
            p.normal_()
    delta = layer.delta_weight()
    d = delta.shape[0] // 3
    assert delta[:d].abs().sum() > 0 and delta[2 * d:].abs().sum() > 0
    assert delta[d:2 * d].abs().sum() == 0


def test_vpt_keeps_token_layout_for_the_head():
    model = small_vit().eval()
    apply_method(model, build_method("vpt-deep", {"num_tokens": 3}))
    x, _ = batch()
    with torch.no_grad():
        tokens = model.forward_features(x)
    assert tokens.shape[1] == 1 + (32 // 8) ** 2


SWIN_METHODS = ["bitfit", "ln-tune", "partial", "lora", "adapter", "linear", "full", "adaptformer", "ssf", "hydra",
                "gps", "prefix-tuning"]


@pytest.mark.parametrize("name", SWIN_METHODS)
def test_generic_methods_apply_to_swin(name):
    """The video and dense tracks reuse these on Swin: they must inject, train and (if mergeable) merge there."""
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                              depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=3)
    images = (torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1]))
    applied = apply_case(name, model, CASES[name].small, num_classes=3, images=images)
    out = model(images[0])
    out.sum().backward()
    assert out.shape == (2, 3)
    assert applied.parameter_counts()["trainable_with_head"] > 0
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, f"{name} on Swin: {n}"
    if applied.method.mergeable:
        model.eval()
        with torch.no_grad():
            before = model(images[0])
            after = applied.merge_and_unload()(images[0])
        torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_vpt_on_swin_is_refused_clearly():
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                              depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=3)
    with pytest.raises(MethodError, match="ViT-style"):
        apply_method(model, build_method("vpt-shallow", {"num_tokens": 2}))


def test_unknown_method_lists_valid_names():
    with pytest.raises(MethodError) as error:
        build_method("loraa")
    assert str(error.value).endswith("valid methods: " + ", ".join(sorted(available_methods())))


def test_unknown_or_bad_hyperparameter_is_named():
    with pytest.raises(MethodError, match=r"unknown hyper-parameter\(s\) \['rnak'\].*valid: .*rank"):
        build_method("lora", {"rnak": 4})
    with pytest.raises(MethodError, match="lora.rank: expected int"):
        build_method("lora", {"rank": "four"})
    with pytest.raises(MethodError, match="rank must be >= 1"):
        build_method("lora", {"rank": 0})


def test_targets_that_match_nothing_are_an_error_not_a_silent_no_op():
    with pytest.raises(MethodError, match="lora: no Linear of VisionTransformer matches target_modules="):
        apply_method(small_vit(), build_method("lora", {"target_modules": r"attn\.qkvz"}))


@pytest.mark.parametrize("name, hparams, expected", [
    ("partial", {"k": 1}, 12 * 1024**2 + 13 * 1024 + 169 * 32 + 2 * 1024),  # + final norm (VPT); dense: 12,601,632
    ("ln-tune", {}, 4 * 12_032 + 2 * 128 + 2 * (4 * 128 + 4 * 256 + 4 * 512) + 2 * 1024),  # timm Swin-B: 57,600
    ("lora", {"rank": 64}, 256 * 12_032),  # 4 * r * sum(dim x blocks), the catalog's 3,080,192 for Swin-B
])
def test_counts_at_swin_b(name, hparams, expected):
    assert meta_counts(name, hparams, arch="swin_base_patch4_window7_224")["trainable"] == expected


# -- the method-layer API: ModuleRef, layer-owned hooks, deep copies that own their tensors ----------


# the dense track's Swin methods beyond the generic ones (config/config.yaml dense suites)
SWIN_CASES = sorted(set(SWIN_METHODS) | {"lorand", "e3va", "mona"})
BACKBONES = [("vit", n) for n in sorted(CASES)] + [("swin", n) for n in SWIN_CASES]


def applied_model(backbone: str, name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    if backbone == "vit":
        model, (x, y) = small_vit(), batch()
        apply_case(name, model, CASES[name].small)
    else:
        model = small_swin(num_classes=3)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(2, 3, 56, 56, generator=g), torch.tensor([0, 1])
        apply_case(name, model, CASES[name].small, num_classes=3, images=(x, y))
    return model.eval(), x, y  # eval: no dropout or subnet sampling, so two runs compare exactly


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@torch.no_grad()
def perturb_method_tensors(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every trainable tensor except the head (the head alone for methods without any)."""
    g = torch.Generator().manual_seed(seed)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    own = [p for n, p in trainable if not n.startswith("head.")] or [p for _, p in trainable]
    for p in own:
        p.add_(torch.randn(p.shape, generator=g).to(p.dtype))


@pytest.mark.parametrize("backbone, name", BACKBONES)
def test_a_deep_copy_computes_and_trains_with_its_own_tensors(backbone, name):
    model, x, y = applied_model(backbone, name)
    hooks = hook_count(model)
    twin = copy.deepcopy(model)
    assert hook_count(twin) == hooks
    with torch.no_grad():
        before = model(x)
        assert torch.equal(twin(x), before), f"{name}: the copy computes something else"

    torch.nn.functional.cross_entropy(twin(x), y).backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == [], \
        f"{name}: a backward on the copy reached the original's tensors"
    for n, p in twin.named_parameters():
        assert (p.grad is not None) == p.requires_grad, f"{name}: copy's {n} (trainable={p.requires_grad})"

    perturb_method_tensors(twin, seed=1)
    with torch.no_grad():
        changed = twin(x)
        assert not torch.equal(changed, before), f"{name}: the copy's tensors do not drive the copy"
        assert torch.equal(model(x), before), f"{name}: editing the copy changed the original's output"
        perturb_method_tensors(model, seed=2)
        assert torch.equal(twin(x), changed), f"{name}: the copy's output depends on the original's tensors"

    for layer in method_layers(twin):
        layer.remove_hooks()
    assert hook_count(twin) == 0, f"{name}: the copy keeps hooks its layers cannot remove"
    assert hook_count(model) == hooks, f"{name}: removing the copy's hooks removed the original's"


class _Reader(MethodLayer):
    """A toy layer that reads a frozen Linear and hooks it."""

    def __init__(self, frozen: torch.nn.Module):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self._frozen = ModuleRef(frozen)
        self.add_forward_hook(frozen, self._rescale)

    def _rescale(self, module, args, output):
        return output * self.scale


class _ReaderMethod(PeftMethod):
    name = "reader"
    category = "addition"

    def __init__(self, outside: bool = False):
        self.outside = outside

    def inject(self, model):
        target = torch.nn.Linear(2, 2) if self.outside else model[0]
        model.add_module("reader", _Reader(target))
        return ["0"]


def test_a_module_ref_is_neither_a_child_nor_a_parameter_of_the_layer():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    apply_method(model, _ReaderMethod())
    layer = model.reader
    assert [n for n, _ in layer.named_parameters()] == ["scale"]
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "reader.scale"]
    assert not model[0].weight.requires_grad
    assert layer._frozen.module is model[0]
    twin = copy.deepcopy(model)
    assert twin.reader._frozen.module is twin[0]


def test_a_module_ref_outside_the_model_is_refused():
    with pytest.raises(MethodError, match="reader._frozen refers to a Linear that is not part of the model"):
        apply_method(torch.nn.Sequential(torch.nn.Linear(2, 2)), _ReaderMethod(outside=True))
    check_references(torch.nn.Sequential(torch.nn.Linear(2, 2)))  # no method layers: nothing to check


@pytest.mark.parametrize("kind", [list, tuple, dict])
def test_a_layer_refuses_plain_containers_of_modules(kind):
    value = {"a": torch.nn.Linear(2, 2)} if kind is dict else kind([torch.nn.Linear(2, 2)])
    layer = MethodLayer()
    with pytest.raises(MethodError, match="as ModuleRef"):
        layer.blocks = value
    layer.handles = [1, 2]  # containers without modules stay plain attributes


def test_a_hook_must_be_a_method_of_the_layer():
    frozen = torch.nn.Linear(2, 2)
    layer = _Reader(frozen)
    other = _Reader(torch.nn.Linear(2, 2))
    for hook in (lambda module, args, output: output, other._rescale):
        with pytest.raises(MethodError, match="bound method of the layer itself"):
            layer.add_forward_hook(frozen, hook)
    layer.remove_hooks()
    assert hook_count(frozen) == 0


# -- resume: a run interrupted after a checkpoint ends as the uninterrupted one --------------------------
class _Interrupted(Exception):
    """Stands for the kill after epoch 1's checkpoint (test_reliability.py kills real processes)."""


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_run_interrupted_after_a_checkpoint_resumes_to_the_same_tensors_buffers_and_metric(
        name, vtab_task, tmp_path, monkeypatch):
    """Every method, on the toy task and the demo ViT: the final model's whole state (trained tensors
    and every buffer, e.g. HST's BatchNorm statistics) and the metric equal the uninterrupted run's,
    bit for bit."""
    from helpers.runs import run_values

    import vpeft.engine.train as train

    final_states = []
    save = train.save_trained_tensors

    def keep_state(path, model, *args, **kwargs):
        final_states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return save(path, model, *args, **kwargs)

    monkeypatch.setattr(train, "save_trained_tensors", keep_state)
    hparams = dict(CASES[name].small)
    if name == "noah":  # one value per block: the demo ViT has 4 blocks, the table's small ViT 2
        hparams = {k: tuple(v) * 2 for k, v in hparams.items()}
    values = {**run_values(vtab_task, name, epochs=2, warmup_epochs=1, drop_path=0.1), "method_hparams": hparams}
    reference = train.run_training(values, tmp_path / "whole" / "metrics.json")

    def interrupt(epoch, score):
        raise _Interrupted(f"after epoch {epoch}")

    out = tmp_path / "interrupted" / "metrics.json"
    with pytest.raises(_Interrupted):
        train.run_training(values, out, on_epoch_end=interrupt)
    assert (out.parent / "checkpoint" / "state.pt").is_file() and not out.exists()
    resumed = train.run_training(values, out)
    assert resumed["train"]["resumed_from_epoch"] == 1
    whole, again = final_states
    assert whole.keys() == again.keys()
    differ = [k for k in whole if not torch.equal(whole[k], again[k])]
    assert not differ, f"{name}: resumed state differs in {differ[:6]}"
    assert resumed["metric"] == reference["metric"]
    assert [h["loss"] for h in resumed["train"]["history"]] == [h["loss"] for h in reference["train"]["history"]]


# -- training-mode parity with the official forwards ---------------------------------------------
#
# Each reference below is the official code's forward written out again from the cited file (the
# method's `provenance`), over the same tensors (read from the ported model) and drawing its random
# numbers in the official order: every dropout through torch's dropout, every stochastic depth through
# timm's `drop_path` (the function behind the official code's timm DropPath). Same seed, train mode,
# drop-path and dropout at 0.5, float64: the outputs must be equal, and `moved` (the same branch placed
# across a DropPath or dropout) must not be.

P = 0.5  # drop-path and dropout rate: with 8 samples some paths are dropped and some kept


def _drop(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.dropout(x, P, training=True)


def _drop_path(x: torch.Tensor) -> torch.Tensor:
    from timm.layers import drop_path

    return drop_path(x, P, training=True)


def _base(module):
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def _weights(module):
    """The weight and bias the official forward multiplies by: the backbone's own, or for GPS (whose
    official code edits the backbone tensors under a gradient mask) the frozen ones plus the trained
    sparse change."""
    if hasattr(module, "_added"):
        return module._added()
    base = _base(module)
    return base.weight, base.bias


def _lin(module, x):
    return torch.nn.functional.linear(x, *_weights(module))


def _ln(module, x):
    base = _base(module)
    return torch.nn.functional.layer_norm(x, base.normalized_shape, base.weight, base.bias, base.eps)


def _gelu(x):
    return torch.nn.functional.gelu(x)


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _attention(blk, h, qkv=None, proj=None):
    """timm's (= the official codes') attention: qkv, heads, softmax(q k^T / sqrt(d_h)) v, proj."""
    B, N, C = h.shape
    heads = blk.attn.num_heads
    q, k, v = (qkv or (lambda t: _lin(blk.attn.qkv, t)))(h).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return (proj or (lambda t: _lin(blk.attn.proj, t)))(out)


def _mlp(blk, h, fc1=None, fc2=None):
    mlp = _base(blk.mlp)
    return (fc2 or (lambda t: _lin(mlp.fc2, t)))(_gelu((fc1 or (lambda t: _lin(mlp.fc1, t)))(h)))


def _block(blk, x, attn=None, mlp=None):
    """timm 0.5's Block.forward, the one every official ViT code here starts from."""
    x = x + _drop_path((attn or (lambda h: _attention(blk, h)))(_ln(blk.norm1, x)))
    return x + _drop_path((mlp or (lambda h: _mlp(blk, h)))(_ln(blk.norm2, x)))


def _embed(model, images, proj=None):
    x = (proj or (lambda t: torch.nn.functional.conv2d(t, *_weights(model.patch_embed.proj), stride=8)))(images)
    x = x.flatten(2).transpose(1, 2) if x.ndim == 4 else x
    return torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed


def _head(model, x, norm=None):
    x = (norm or (lambda t: _ln(model.norm, t)))(x)
    return _lin(model.head, x[:, 0])


def _plain_official(model, images):
    x = _embed(model, images)
    for blk in model.blocks:
        x = _block(blk, x)
    return _head(model, x)


def _noah_official(model, images, moved=False):
    """NOAH e9c55f3, model/supernet_vision_transformer_timm.py: VisionTransformer.forward_features (input
    prompts of p_0 tokens after the position embedding, with their dropout), Block.forward (prompts
    expanded, dropped out, appended or replacing the previous block's p_{i-1}; x + drop_path(attn);
    x + adapter(drop_path(mlp))), Attention.forward (qkv + LoRA_b(LoRA_a(LoRA_drop(x)))), AdapterSuper."""
    noah = model.noah
    dims = noah.active["prompt_dims"]
    x = _embed(model, images)
    B, _, d = x.shape
    if dims[0]:
        x = torch.cat([x, _drop(x.new_zeros(1, dims[0], d).expand(B, -1, -1))], dim=1)  # replaced by block 0
    for i, blk in enumerate(model.blocks):
        p, last = dims[i], dims[i - 1] if i else dims[0]
        if p:
            tokens = _drop(noah.prompts[str(i)][:p].unsqueeze(0).expand(B, -1, -1))
            x = torch.cat([x if last == 0 else x[:, :-last], tokens], dim=1)
        lora, adapter = noah.loras[i], noah.adapters[i]

        def qkv(h, lora=lora, blk=blk):
            out = _lin(blk.attn.qkv, h)
            if lora is None or not lora.rank:
                return out
            r = lora.rank
            return out + torch.nn.functional.linear(torch.nn.functional.linear(_drop(h), lora.lora_A[:r]),
                                                    lora.lora_B[:, :r])

        def adapt(y, adapter=adapter):
            if adapter is None or not adapter.hidden:
                return y
            a = adapter.hidden
            h = _drop(_quick_gelu(torch.nn.functional.linear(y, adapter.down_weight[:a], adapter.down_bias[:a])))
            return y + torch.nn.functional.linear(h, adapter.up_weight[:, :a], adapter.up_bias)

        x = x + _drop_path(_attention(blk, _ln(blk.norm1, x), qkv=qkv))
        z = _mlp(blk, _ln(blk.norm2, x))
        x = x + (_drop_path(adapt(z)) if moved else adapt(_drop_path(z)))
    return _head(model, x)


def _vpt_official(model, images, moved=False):
    """VPT 4410440, src/models/vit_prompt/vit.py: incorporate_prompt (cls, dropout(prompt.expand(B)),
    patches) and forward_deep_prompt (layer i >= 1: its own prompts, expanded, then dropped out).
    `moved`: dropout before expanding (one mask for the batch)."""
    prompts = model.vpt_prompts.prompts
    x = _embed(model, images)
    B, n = x.shape[0], prompts.shape[1]

    def tokens(i):
        return _drop(prompts[i]).unsqueeze(0).expand(B, -1, -1) if moved else _drop(
            prompts[i].unsqueeze(0).expand(B, -1, -1))

    x = torch.cat([x[:, :1], tokens(0), x[:, 1:]], dim=1)
    for i, blk in enumerate(model.blocks):
        if i and prompts.shape[0] > 1:
            x = torch.cat([x[:, :1], tokens(i), x[:, 1 + n:]], dim=1)
        x = _block(blk, x)
    return _head(model, torch.cat([x[:, :1], x[:, 1 + n:]], dim=1))


def _adapter_official(model, images, moved=False):
    """NOAH e9c55f3 Block.forward with AdapterSuper: x + adapter(drop_path(mlp(norm2(x)))),
    adapter(y) = y + ln2(dropout(QuickGELU(ln1(y))))."""
    x = _embed(model, images)
    for blk in model.blocks:
        a = blk.drop_path2

        def adapt(y, a=a):
            return y + _lin(a.up, _drop(_quick_gelu(_lin(a.down, y))))

        x = x + _drop_path(_attention(blk, _ln(blk.norm1, x)))
        z = _mlp(blk, _ln(blk.norm2, x))
        x = x + (_drop_path(adapt(z)) if moved else adapt(_drop_path(z)))
    return _head(model, x)


def _adaptformer_official(model, images, moved=False):
    """AdaptFormer 6967d67, models/custom_modules.py Block.forward (ffn_option parallel): adapt_x =
    adaptmlp(x) from the post-attention residual, computed before the MLP; x = residual +
    drop_path(mlp(norm2(x))) + adapt_x; models/adapter.py: up(dropout(relu(down(x)))) * scale."""
    x = _embed(model, images)
    for blk in model.blocks:
        a = blk.mlp
        x = x + _drop_path(_attention(blk, _ln(blk.norm1, x)))
        adapt_x = _lin(a.up, _drop(torch.relu(_lin(a.down, x)))) * a.scale
        z = _mlp(blk, _ln(blk.norm2, x))
        x = x + (_drop_path(z + adapt_x) if moved else _drop_path(z) + adapt_x)
    return _head(model, x)


def _lora_official(model, images, moved=False):
    """loralib c4593f0, layers.py MergedLinear.forward (enable_lora q, v): W x + b + zero_pad(conv1d(
    A(lora_dropout(x)), B, groups=2)) * scaling. `moved`: the dropout on A's output instead."""
    x = _embed(model, images)
    for blk in model.blocks:
        layer = blk.attn.qkv

        def qkv(h, layer=layer):
            A = torch.cat([layer.lora_A[t] for t in layer.targets])
            B = torch.cat([layer.lora_B[t] for t in layer.targets])
            after_a = _drop(torch.nn.functional.linear(h, A)) if moved else torch.nn.functional.linear(_drop(h), A)
            after_b = torch.nn.functional.conv1d(after_a.transpose(-2, -1), B.unsqueeze(-1),
                                                 groups=len(layer.targets)).transpose(-2, -1)
            d = h.shape[-1]
            padded = after_b.new_zeros(*after_b.shape[:-1], 3 * d)
            for j, t in enumerate(layer.targets):
                i = "qkv".index(t)
                padded[..., i * d:(i + 1) * d] = after_b[..., j * d:(j + 1) * d]
            return _lin(layer, h) + padded * layer.scaling

        x = _block(blk, x, attn=lambda h, blk=blk, qkv=qkv: _attention(blk, h, qkv=qkv))
    return _head(model, x)


def _ssf(layer, t):
    return t * layer.scale + layer.shift


def _ssf_official(model, images, moved=False):
    """SSF e94e0e7, models/vision_transformer.py: ssf_ada after the patch projection, qkv, proj, fc1
    (before the activation), fc2, norm1 / norm2 (inside the residual branch) and the final norm.
    `moved`: the proj scale-shift outside the attention branch's DropPath."""
    x = _embed(model, images, proj=lambda t: _ssf(model.patch_embed.proj, torch.nn.functional.conv2d(
        t, _base(model.patch_embed.proj).weight, _base(model.patch_embed.proj).bias, stride=8).flatten(2).transpose(1, 2)))
    for blk in model.blocks:
        attn = blk.attn

        def branch(h, attn=attn, blk=blk, proj=True):
            return _attention(blk, h, qkv=lambda t: _ssf(attn.qkv, _lin(attn.qkv, t)),
                              proj=(lambda t: _ssf(attn.proj, _lin(attn.proj, t))) if proj else None)

        h = _ssf(blk.norm1, _ln(blk.norm1, x))
        x = x + (_ssf(attn.proj, _drop_path(branch(h, proj=False))) if moved else _drop_path(branch(h)))
        h = _ssf(blk.norm2, _ln(blk.norm2, x))
        x = x + _drop_path(_mlp(blk, h, fc1=lambda t, blk=blk: _ssf(blk.mlp.fc1, _lin(blk.mlp.fc1, t)),
                                fc2=lambda t, blk=blk: _ssf(blk.mlp.fc2, _lin(blk.mlp.fc2, t))))
    return _head(model, x, norm=lambda t: _ssf(model.norm, _ln(model.norm, t)))


def _repadapter_official(model, images, moved=False):
    """RepAdapter 360992f, repadapter.py forward_vit_block_adapter: x + drop_path(attn(adapter_attn(
    norm1(x)))), x + drop_path(mlp(adapter_mlp(norm2(x)))); RepAdapter.forward: conv_B(dropout(conv_A(x)))
    * scale + x, conv_B a grouped 1x1 conv. `moved`: dropout after conv_B."""
    def adapter(layer, h):
        g = layer.groups
        down = torch.nn.functional.conv1d(h.transpose(1, 2), layer.down.weight.unsqueeze(-1), layer.down.bias)
        down = down if moved else _drop(down)
        up_w = layer.up_weight.reshape(-1, layer.up_weight.shape[-1]).unsqueeze(-1)
        up = torch.nn.functional.conv1d(down, up_w, layer.up_bias, groups=g)
        up = _drop(up) if moved else up
        return (up * layer.scale).transpose(1, 2) + h

    x = _embed(model, images)
    for blk in model.blocks:
        x = x + _drop_path(_attention(blk, adapter(blk.attn.qkv, _ln(blk.norm1, x))))
        x = x + _drop_path(_mlp(blk, adapter(blk.mlp.fc1, _ln(blk.norm2, x))))
    return _head(model, x)


def _hydra_official(model, images, moved=False):
    """Hydra 4138457, vtab1k/hydra.py forward_vit_hydra_attn / _ffn: par = hydra_par(input of proj /
    fc2), seq = hydra_seq(its output), drop(out + par + seq); Hydra_layer: up(dropout(down(x))) * scale.
    `moved`: each branch's dropout on its output instead of its bottleneck."""
    def branch(b, u):
        return (_drop(_lin(b.up, _lin(b.down, u))) if moved else _lin(b.up, _drop(_lin(b.down, u)))) * b.scale

    def hydra(layer, u):
        par = branch(layer.parallel, u)
        y = _lin(layer, u)
        return y + par + branch(layer.sequential, y)

    x = _embed(model, images)
    for blk in model.blocks:
        x = _block(blk, x, attn=lambda h, blk=blk: _attention(blk, h, proj=lambda t: hydra(blk.attn.proj, t)),
                   mlp=lambda h, blk=blk: _mlp(blk, h, fc2=lambda t: hydra(blk.mlp.fc2, t)))
    return _head(model, x)


OFFICIAL_FORWARDS = {  # method: (reference, hyper-parameters with every dropout at P)
    "noah": (_noah_official, {"prompt_dims": (2, 0, 3, 1), "lora_ranks": (2, 0, 1, 2), "adapter_dims": (3, 2, 0, 1),
                              "dropout": P}),
    "vpt-shallow": (_vpt_official, {"num_tokens": 3, "dropout": P}),
    "vpt-deep": (_vpt_official, {"num_tokens": 3, "dropout": P}),
    "adapter": (_adapter_official, {"bottleneck": 4, "dropout": P}),
    "adaptformer": (_adaptformer_official, {"bottleneck": 4, "dropout": P}),
    "lora": (_lora_official, {"rank": 2, "alpha": 4.0, "dropout": P}),
    "ssf": (_ssf_official, {}),
    "repadapter": (_repadapter_official, {"hidden_dim": 8, "dropout": P}),
    "hydra": (_hydra_official, {"rank": 2, "dropout": P}),
    # selective methods: the official forward is the backbone's own (VPT's vit_models.py / GPS's train_gps.py)
    "full": (_plain_official, {}), "linear": (_plain_official, {}), "partial": (_plain_official, {"k": 1}),
    "gps": (_plain_official, {"top_k": 2}),
}
#: official-code ports without a training-mode reference here, and why (their own tests compare them)
NO_TRAIN_REFERENCE = {
    "bapat": "official code is Video Swin only (test_method_bapat.py)",
    "dtl": "no stochastic op of its own; test_method_dtl.py compares the official block and head",
    "dtl-plus": "as dtl",
    "fact-tk": "test_method_fact.py compares the official fact_forward_attn / fact_forward_mlp",
    "fact-tt": "as fact-tk",
    "hst": "test_method_hst.py compares the official prepended sequence",
    "snf": "test_method_snf.py compares the official flows",
}
# the peft family is not a port: its layers are huggingface peft's own code, run as installed
NO_TRAIN_REFERENCE.update({n: "peft's own layers, not a port (test_method_hf_peft.py)" for n in CASES
                           if n.startswith("peft-")})


def test_every_official_code_port_has_a_training_reference_or_says_why_not():
    official = {n for n in CASES if get_method_class(n).provenance.kind == "official-code"}
    assert official == set(OFFICIAL_FORWARDS) | set(NO_TRAIN_REFERENCE)
    assert not set(OFFICIAL_FORWARDS) & set(NO_TRAIN_REFERENCE)


def _train_mode_model(name: str, hparams: dict, depth: int = 4):
    from timm.layers import DropPath

    model = _small_vit(depth=depth, num_classes=5)
    for blk in model.blocks:  # P everywhere (timm's linear decay from 0 would leave block 0 without)
        blk.drop_path1, blk.drop_path2 = DropPath(P), DropPath(P)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(8, 3, 32, 32, generator=g)
    apply_case(name, model, hparams, images=(images, torch.arange(8) % 5))
    model.double()
    perturb_method_tensors(model, seed=3)  # zero-init branches (LoRA B, adapter up, ...) become live
    return model.train(), images.double()


@pytest.mark.parametrize("name", sorted(OFFICIAL_FORWARDS))
def test_train_mode_forward_equals_the_official_code(name):
    reference, hparams = OFFICIAL_FORWARDS[name]
    model, images = _train_mode_model(name, hparams)
    torch.manual_seed(11)
    ours = model(images)
    torch.manual_seed(11)
    official = reference(model, images)
    torch.manual_seed(12)
    other_draw = model(images)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-10)
    assert (ours - other_draw).abs().max() > 1e-3, f"{name}: the forward draws no random numbers (rates at {P})"
    if reference is not _plain_official:  # the same branch moved across a DropPath / dropout differs
        torch.manual_seed(11)
        moved = reference(model, images, moved=True)
        assert (ours - moved).abs().max() > 1e-6, f"{name}: moving the branch changes nothing; the test is blind"


def test_ssf_on_an_average_pooled_vit_scales_the_tokens_before_the_pool():
    """Official SSF (global_pool avg): norm is the identity, ssf_scale_1 scales the tokens after it,
    then mean over the patch tokens, then fc_norm without a scale-shift; our port does the same, and
    merging keeps that one (unfoldable) layer."""
    model = _small_vit(depth=2, num_classes=5, global_pool="avg", fc_norm=True)
    assert isinstance(model.norm, torch.nn.Identity)
    applied = apply_case("ssf", model, {})
    model.double().eval()
    perturb_method_tensors(model, seed=4)
    assert "norm" in applied.matched and "fc_norm" not in applied.matched
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5)).double()
    with torch.no_grad():
        tokens = model.forward_features(images)
        official = _lin(model.head, _ln(model.fc_norm, tokens[:, 1:].mean(1)))
        ours = model(images)
        torch.testing.assert_close(ours, official, rtol=0, atol=1e-10)
        torch.testing.assert_close(tokens, model.norm.base_layer(tokens) * 1.0, rtol=0, atol=0)  # already scaled
        merged = applied.merge_and_unload()
        torch.testing.assert_close(merged(images), ours, rtol=0, atol=1e-10)
    assert [type(m).__name__ for m in method_layers(merged)] == ["PooledTokenScaleShift"]


#: methods whose training forward differs from evaluation by design, not by a stochastic op
TRAIN_DIFFERS = {"hst": "its side network's BatchNorm normalises by batch statistics in training (official stem)"}


@pytest.mark.parametrize("name", sorted(set(CASES) - set(OFFICIAL_FORWARDS) - set(TRAIN_DIFFERS)))
def test_train_mode_without_stochastic_ops_equals_eval_mode(name):
    """The rest: with drop-path and every dropout of the method at 0, the training forward is the
    evaluation forward (no hidden train-only path); merged-vs-unmerged parity is tested above."""
    hparams = dict(CASES[name].small)
    if "dropout" in get_method_class(name).config_cls.__dataclass_fields__:
        hparams["dropout"] = 0.0
    model = _small_vit(depth=2, num_classes=5)
    x, y = batch()
    apply_case(name, model, hparams, images=(x, y))
    perturb_method_tensors(model, seed=6)
    if hasattr(model, "noah"):
        model.noah.sample_on_forward = False
    with torch.no_grad():
        train = model.train()(x)
        evaluated = model.eval()(x)
    torch.testing.assert_close(train, evaluated, rtol=0, atol=1e-6)
