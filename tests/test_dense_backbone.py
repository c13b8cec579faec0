"""The dense backbone: method parameter counts at Swin-B / Swin-L (catalog 3.4), checkpoints in the
official layout, multi-scale outputs, the dense papers' methods on Swin, registration with mmdet/mmseg."""

from __future__ import annotations

import copy

import pytest
import torch

from vpeft.backbones import BackboneError
from vpeft.dense.backbone import DenseSwin
from vpeft.methods import apply_method, build_method

SWIN_B = {"name": "swin-b", "arch": "swin_base_patch4_window7_224", "model_kwargs": {"weight_init": "skip"}}
SWIN_L = {"name": "swin-l", "arch": "swin_large_patch4_window7_224", "model_kwargs": {"weight_init": "skip"}}
DEMO = {"name": "swin-demo", "arch": "swin_demo_patch4_window4"}
# The dense papers' Adapter: a bottleneck-64 adapter after the attention and after the MLP of every block,
# expressed with the image Adapter's own hyper-parameters.
# (`attn.proj` ends the attention branch and is called with the tokens alone, unlike Swin's `attn`).
DENSE_ADAPTER = {"bottleneck": 64, "target_modules": r"(^|\.)blocks\.\d+\.(attn\.proj|mlp)$"}


def sum_dim_blocks(widths, depths=(2, 2, 18, 2)):
    return sum(w * d for w, d in zip(widths, depths))


B_DIMS, L_DIMS = (128, 256, 512, 1024), (192, 384, 768, 1536)


COUNTS = [  # (method, hparams, Swin-B, Swin-L)
    ("bitfit", {}, 201_656, 302_484),          # published (catalog 3.4), output norms included
    ("ln-tune", {}, 59_392, 89_088),           # published: counts mmdet's four per-stage output norms
    ("partial", {"k": 1}, 12_601_632, 28_339_632),  # published: 12 d^2 + 13 d + 169 heads, last block
    ("adapter", DENSE_ADAPTER, 3_107_328, 4_659_456),  # published: 2 (129 d + 64) per block
    ("lora", {"rank": 64}, 256 * sum_dim_blocks(B_DIMS), 256 * sum_dim_blocks(L_DIMS)),  # README 3.03 / 4.57 M
    ("mona", {}, 2 * (133 * sum_dim_blocks(B_DIMS) + 24 * 9_728),
     2 * (133 * sum_dim_blocks(L_DIMS) + 24 * 9_728)),  # README 4.16 / 5.08 M; see mona.py
    ("full", {}, 86_745_016, 194_998_164),     # published Swin-B 86.75 M; Swin-L printed 198.58 M
    ("linear", {}, 0, 0),
]


def _check_counts(spec, column):
    """Counts on the real-size backbone built on the meta device (every shape, no storage); each method
    is configured on the CPU first (its validation may compute)."""
    with torch.device("meta"):
        model = DenseSwin(spec, "linear", pretrained=False)
    for method, hparams, *expected in COUNTS:
        built = build_method(method, hparams)
        with torch.device("meta"):
            counts = apply_method(copy.deepcopy(model), built).parameter_counts()
        assert counts["trainable"] == expected[column], (method, model.arch)
        assert counts["head"] == 0  # no classifier: neck and heads live outside the backbone


def test_method_counts_at_swin_b():
    _check_counts(SWIN_B, 0)


def test_method_counts_at_swin_l():
    _check_counts(SWIN_L, 1)


def test_output_norms_replace_the_final_norm():
    with torch.device("meta"):  # names and widths only
        swin_base = DenseSwin(SWIN_B, "linear", pretrained=False)
    names = [n for n, _ in swin_base.named_parameters()]
    assert {f"norm{i}.weight" for i in range(4)} <= set(names)
    assert not any(n.startswith(("norm.", "head")) for n in names)
    assert swin_base.channels == list(B_DIMS)


def test_multi_scale_outputs_any_size():
    backbone = DenseSwin(DEMO, "lora", {"rank": 2}, pretrained=False)
    with torch.no_grad():
        outs = backbone(torch.randn(2, 3, 70, 97))  # not a multiple of the patch or of the windows
    expected_hw = [((70 + 3) // 4, (97 + 3) // 4)]
    for _ in range(3):
        h, w = expected_hw[-1]
        expected_hw.append(((h + 1) // 2, (w + 1) // 2))
    assert [tuple(o.shape[1:]) for o in outs] == [(c, *hw) for c, hw in zip((32, 64, 128, 256), expected_hw)]
    three = DenseSwin(DEMO, "linear", out_indices=(1, 2, 3), pretrained=False)
    assert three.channels == [64, 128, 256] and not hasattr(three, "norm0")
    assert len(three(torch.randn(1, 3, 64, 64))) == 3


def test_official_checkpoint_loads_through_the_checkpoint_code(tmp_path):
    import timm

    from vpeft.backbones.swin_official import save_official_swin

    reference = timm.create_model("swin_demo_patch4_window4", pretrained=False, num_classes=0)
    path = save_official_swin(reference, tmp_path / "swin_demo_22k.pth", head_classes=7)
    entry = dict(DEMO, checkpoint=str(path), checkpoint_format="swin-official")
    backbone = DenseSwin(entry, "linear")
    theirs = reference.state_dict()
    for name, tensor in backbone.state_dict().items():
        if not name.startswith("norm"):
            torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0, msg=name)
    wrong = dict(entry, sha256="0" * 64)
    with pytest.raises(BackboneError, match="sha256"):
        DenseSwin(wrong, "linear")


@pytest.mark.slow
def test_real_size_official_swin_b_checkpoint(tmp_path):
    """Swin-B at real size, random init, saved as Microsoft's swin_base_patch4_window7_224_22k.pth is."""
    import timm

    from vpeft.backbones.swin_official import save_official_swin

    reference = timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=0)
    path = save_official_swin(reference, tmp_path / "swin_base_patch4_window7_224_22k.pth", head_classes=21_841)
    backbone = DenseSwin({"name": "swin-b-in22k", "arch": "swin_base_patch4_window7_224.ms_in22k",
                          "checkpoint": str(path), "checkpoint_format": "swin-official"}, "lora", {"rank": 64})
    state = reference.state_dict()
    torch.testing.assert_close(backbone.layers[3].blocks[1].mlp.fc2.weight, state["layers.3.blocks.1.mlp.fc2.weight"])
    assert backbone.applied.parameter_counts()["trainable"] == 3_080_192


def test_foreign_checkpoint_is_refused_naming_the_file(tmp_path):
    import timm

    from vpeft.backbones.swin_official import save_official_swin

    other = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0)
    path = save_official_swin(other, tmp_path / "tiny.pth")
    with pytest.raises(BackboneError, match="tiny.pth"):
        DenseSwin(dict(DEMO, checkpoint=str(path), checkpoint_format="swin-official"), "linear")


@pytest.mark.parametrize("method, hparams", [
    ("mona", {"bottleneck": 8}), ("lorand", {"bottleneck": 8, "kernel_rank": 2}),
    ("e3va", {"bottleneck": 8, "kernel_rank": 2}), ("adapter", {"bottleneck": 8, "target_modules":
                                                                DENSE_ADAPTER["target_modules"]}),
    ("bitfit", {}), ("ln-tune", {}), ("partial", {"k": 1}), ("full", {}),
    ("lora", {"rank": 4}), ("adaptformer", {"bottleneck": 8}),
])
def test_methods_train_inside_the_dense_backbone(method, hparams):
    """Every trainable tensor gets a gradient from a loss on all four maps; frozen ones get none."""
    torch.manual_seed(0)
    backbone = DenseSwin(DEMO, method, hparams, pretrained=False)
    backbone.eval()  # no stochastic depth / dropout: with batch 2, dropping a block for both samples is likely
    opt = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(2, 3, 64, 64)
    # A fixed random linear probe of each map, not sum(o ** 2): every map leaves through a LayerNorm
    # (the output norms), whose squared output is constant per token, so that loss would give the last
    # block almost no gradient and hide nothing but test its own blind spot.
    probes = [torch.randn(o.shape[1:]) for o in backbone(x)]
    for step in range(2):  # zero-initialised branches become live after the first step
        opt.zero_grad(set_to_none=True)
        sum((o * w).mean() for o, w in zip(backbone(x), probes)).backward()
        if step == 0:
            opt.step()
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable
    for name, param in backbone.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{method}: {name} gets no gradient"
        else:
            assert param.grad is None, f"{method}: frozen {name} received a gradient"


def test_e3va_highway_never_enters_the_backbone():
    """E3VA: no block output carries an autograd graph, yet every output map (and the loss) does."""
    backbone = DenseSwin(DEMO, "e3va", {"bottleneck": 8, "kernel_rank": 2}, pretrained=False)
    flags = []
    hooks = [m.register_forward_hook(lambda mod, a, out: flags.append(out.requires_grad))
             for n, m in backbone.named_modules() if n.endswith(tuple(f"blocks.{i}" for i in range(2)))
             and "e3va" not in n]
    outs = backbone(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert flags and not any(flags)
    assert all(o.requires_grad for o in outs)
    trainable = {n.split(".")[0] for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"e3va_highway", "norm0", "norm1", "norm2", "norm3"}


def test_e3va_and_lorand_start_as_the_frozen_backbone():
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)  # the same random backbone weights for all three
    reference = DenseSwin(DEMO, "linear", pretrained=False).eval()
    for method in ("e3va", "lorand"):
        torch.manual_seed(0)
        backbone = DenseSwin(DEMO, method, pretrained=False).eval()
        with torch.no_grad():
            for a, b in zip(backbone(x), reference(x)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_selection_methods_are_refused_clearly():
    with pytest.raises(BackboneError, match="data-dependent stage"):
        DenseSwin(DEMO, "gps", pretrained=False)


def test_registered_in_mmdet_and_mmseg():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    for registry in (DET, SEG):
        built = registry.build({"type": "VPeftSwin", "backbone": DEMO, "method": "bitfit", "pretrained": False})
        assert isinstance(built, DenseSwin) and built.applied.parameter_counts()["trainable"] > 0
