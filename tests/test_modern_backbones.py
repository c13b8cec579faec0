"""The modern ViT backbones (issue #22): DINOv2 (with and without registers), CLIP (OpenAI, LAION-2B),
MAE, ViT-L/16 and ViT-H/14 IN-21K.

Real weights cannot be downloaded here, so: release-file loaders on small generated checkpoints in
the real key layouts; every architecture at real size on the meta device (shapes, counts, which
methods refuse); at tiny size on the CPU, a run trains end to end from a release file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from helpers.models import meta_model
from helpers.runs import TRAINING
from safetensors.torch import save_file

from vpeft.backbones import BackboneError, BackboneSpec, create_backbone, model_kwargs
from vpeft.backbones.google_npz import save_google_npz
from vpeft.backbones.release import save_release
from vpeft.methods import MethodError, apply_method, available_methods, build_method, get_method_class

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config/config.yaml").read_text())
ENTRIES = CONFIG["backbones"]
MODERN = ["dinov2-vitb14", "dinov2-vitb14-reg4", "clip-vitb16-openai", "clip-vitb16-laion2b", "mae-vitb16",
          "vit-l16-in21k", "vit-h14-in21k"]
TINY = {"embed_dim": 48, "depth": 2, "num_heads": 3}
EXT = {"dinov2": ".pth", "open-clip": ".safetensors", "mae": ".pth", "google-npz": ".npz"}

#: what each architecture is at real size: width, depth, MLP width, patch, prefix tokens, LayerScale,
#: bias of the patch embedding, pre-norm (CLIP's ln_pre)
SHAPES = {
    "dinov2-vitb14": (768, 12, 3072, 14, 1, True, True, False),
    "dinov2-vitb14-reg4": (768, 12, 3072, 14, 5, True, True, False),
    "clip-vitb16-openai": (768, 12, 3072, 16, 1, False, False, True),
    "clip-vitb16-laion2b": (768, 12, 3072, 16, 1, False, False, True),
    "mae-vitb16": (768, 12, 3072, 16, 1, False, True, False),
    "vit-l16-in21k": (1024, 24, 4096, 16, 1, False, True, False),
    "vit-h14-in21k": (1280, 32, 5120, 14, 1, False, True, False),
}

#: (backbone, method) pairs that refuse, and the words their error says
REFUSALS = {
    ("clip-vitb16-openai", "ssf"): "Conv2d without weight and bias",  # CLIP's patch embedding has no bias
    ("clip-vitb16-laion2b", "ssf"): "Conv2d without weight and bias",
}


def spec_of(name: str, **overrides) -> BackboneSpec:
    return BackboneSpec.from_config(name, {**ENTRIES[name], **overrides})


def test_every_modern_backbone_has_a_release_file_a_check_and_its_preprocessing():
    for name in MODERN:
        e = ENTRIES[name]
        assert e["url"].startswith("https://") and e["checkpoint"].startswith("resources/backbones/")
        # no published hash: the first download records one in the lock file, and every later load checks it
        assert "sha256" in e and CONFIG["download_lock"]
        assert e["input_size"] == 224 and len(e["mean"]) == len(e["std"]) == 3
        assert e["interpolation"] in ("bilinear", "bicubic")
        assert timm.is_model(e["arch"].split(".")[0]) and "." in e["arch"], f"{name}: arch.tag"
        assert e.get("checkpoint_format", "google-npz") in ("dinov2", "open-clip", "mae", "google-npz")
    assert ENTRIES["clip-vitb16-openai"]["mean"] == [0.48145466, 0.4578275, 0.40821073]


def tiny_release(name: str, tmp_path: Path, *, source_size: int | None = None, seed: int = 0, **kwargs):
    """A random-init tiny model of the entry's architecture, saved as the entry's release format.
    Returns (source model, spec pointing at the file, input size)."""
    e = ENTRIES[name]
    fmt = e.get("checkpoint_format", "google-npz")
    patch = SHAPES[name][3]
    size = 4 * patch
    torch.manual_seed(seed)
    arch_kwargs = {**TINY, **kwargs}
    source = timm.create_model(e["arch"].split(".")[0], pretrained=False, num_classes=16 if fmt == "open-clip" else 0,
                               img_size=source_size or size, **arch_kwargs).eval()
    path = tmp_path / (Path(e["checkpoint"]).stem + EXT[fmt])
    if fmt == "google-npz":
        save_google_npz(source, path, head_classes=21843, representation=True)
    else:
        save_release(source, path, fmt)
    spec = spec_of(name, checkpoint=str(path), input_size=size, model_kwargs=arch_kwargs)
    return source, spec, size


@pytest.mark.parametrize("name", MODERN)
def test_release_file_loads_into_the_unmodified_timm_model_and_reproduces_features(tmp_path, name):
    source, spec, size = tiny_release(name, tmp_path)
    model, digest = create_backbone(spec, num_classes=5)
    assert type(model) is type(source) and model.get_classifier().out_features == 5
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), source.forward_features(x), rtol=1e-5, atol=1e-5)
    assert model.num_prefix_tokens == SHAPES[name][4] and len(digest) == 64


@pytest.mark.parametrize("name", ["dinov2-vitb14", "dinov2-vitb14-reg4"])
def test_dinov2_position_embedding_is_resampled_from_the_file_grid(tmp_path, name):
    """Meta's files hold the 518 px grid (37 x 37); a 224 px run needs 16 x 16. Here: a 6 x 6 file
    loaded at 4 x 4 equals timm's bicubic resampling of the file's patch positions, the CLS untouched."""
    from timm.layers import resample_abs_pos_embed

    source, spec, size = tiny_release(name, tmp_path, source_size=6 * 14)
    model, _ = create_backbone(spec, num_classes=2)
    assert model.patch_embed.grid_size == (4, 4)
    prefix = 0 if model.no_embed_class else 1
    expected = resample_abs_pos_embed(source.pos_embed.detach(), (4, 4), (6, 6), num_prefix_tokens=prefix)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    torch.testing.assert_close(model.cls_token.detach(), source.cls_token.detach(), rtol=0, atol=1e-6)
    if name.endswith("reg4"):  # the register tokens are loaded, not left at their random init
        torch.testing.assert_close(model.reg_token.detach(), source.reg_token.detach(), rtol=0, atol=0)


def test_a_release_file_of_another_format_is_refused_naming_what_it_lacks(tmp_path):
    _, clip, _ = tiny_release("clip-vitb16-openai", tmp_path)
    spec = spec_of("dinov2-vitb14", checkpoint=clip.checkpoint, input_size=56, model_kwargs=TINY)
    with pytest.raises(BackboneError, match=r"cannot load .*\(dinov2 format\).*not a dinov2 release file: "
                                            r"it lacks \['mask_token'"):
        create_backbone(spec, num_classes=2)


def test_a_release_file_of_another_depth_is_refused_naming_the_keys(tmp_path):
    _, deep, _ = tiny_release("mae-vitb16", tmp_path, depth=3)
    spec = spec_of("mae-vitb16", checkpoint=deep.checkpoint, input_size=64, model_kwargs=TINY)
    with pytest.raises(BackboneError, match=r"mae_pretrain_vit_base\.pth \(mae\) does not fit .*depth 2.*"
                                            r"unexpected keys \['blocks\.2\."):
        create_backbone(spec, num_classes=2)


def test_a_pickled_object_in_a_release_file_is_never_run(tmp_path):
    path = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save({"mask_token": torch.zeros(1), "evil": print}, path)  # a callable: unpickling it needs code
    spec = spec_of("dinov2-vitb14", checkpoint=str(path), input_size=56, model_kwargs=TINY)
    with pytest.raises(BackboneError, match="cannot load"):
        create_backbone(spec, num_classes=2)


def test_clip_text_tower_and_projection_are_left_out(tmp_path):
    """The open_clip file holds the text tower and CLIP's projection `visual.proj`: the image tower is
    loaded, the projection (a pre-training head) is replaced by the task head."""
    source, spec, _ = tiny_release("clip-vitb16-laion2b", tmp_path)
    model, _ = create_backbone(spec, num_classes=7)
    assert model.get_classifier().weight.shape == (7, 48)
    torch.testing.assert_close(model.norm_pre.weight, source.norm_pre.weight, rtol=0, atol=0)


def test_average_pooling_normalises_the_pooled_feature_with_the_files_final_norm(tmp_path):
    source, spec, size = tiny_release("mae-vitb16", tmp_path)
    spec = spec_of("mae-vitb16", checkpoint=spec.checkpoint, input_size=size, model_kwargs={**TINY, "global_pool": "avg"})
    model, _ = create_backbone(spec, num_classes=2)
    assert isinstance(model.norm, torch.nn.Identity)
    torch.testing.assert_close(model.fc_norm.weight, source.norm.weight, rtol=0, atol=0)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = source.blocks(source._pos_embed(source.patch_embed(x)))
        expected = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (48,), source.norm.weight, source.norm.bias,
                                                  source.norm.eps)
        torch.testing.assert_close(model.eval().forward_head(model.forward_features(x), pre_logits=True), expected)


def test_a_timm_file_loads_at_another_input_size(tmp_path):
    """`input_size` other than the architecture's: the model is built for it and the file's position
    embedding resampled (here the demo ViT's 8 x 8 grid at 48 px: 12 x 12)."""
    torch.manual_seed(2)
    source = timm.create_model("vit_demo_patch4_32", pretrained=False, num_classes=0)
    path = tmp_path / "demo.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    spec = BackboneSpec(name="vit-demo", arch="vit_demo_patch4_32.fractal", checkpoint=str(path), input_size=48)
    assert model_kwargs(spec) == {"img_size": 48}
    model, _ = create_backbone(spec, num_classes=3)
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 128)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight, rtol=0, atol=0)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 3)


def test_existing_backbones_keep_their_model_arguments():
    """The entries of the default run get no img_size: their input size is the architecture's."""
    for name in ("vit-demo", "vit-demo-random", "vit-b16-in21k", "swin-b-in22k", "video-demo", "swin-demo"):
        from vpeft.backbones import register_architecture

        register_architecture(ENTRIES[name]["arch"])
        assert "img_size" not in model_kwargs(spec_of(name)), name


# -- real size, meta device ------------------------------------------------------------------------


def real_meta(name: str, num_classes: int = 10) -> torch.nn.Module:
    return meta_model(ENTRIES[name]["arch"], num_classes=num_classes, **model_kwargs(spec_of(name)))


def vit_params(name: str) -> int:
    """Every backbone tensor of the architecture, written out from its shapes (head excluded)."""
    d, depth, h, p, prefix, layer_scale, patch_bias, pre_norm = SHAPES[name]
    grid = (224 // p) ** 2
    pos = grid + (1 if prefix == 1 else 0)  # DINOv2-reg: neither CLS nor registers get a position
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * h + h) + (h * d + d) + (2 * d if layer_scale else 0)
    return (3 * p * p * d + (d if patch_bias else 0)) + prefix * d + pos * d + (2 * d if pre_norm else 0) \
        + depth * block + 2 * d


@pytest.mark.parametrize("name", MODERN)
def test_real_size_architecture_and_counts_on_the_meta_device(name):
    d, depth, h, p, prefix, _, _, _ = SHAPES[name]
    model = real_meta(name)
    assert model.patch_embed.grid_size == (224 // p, 224 // p) and model.num_prefix_tokens == prefix
    assert (model.embed_dim, len(model.blocks), model.blocks[0].mlp.fc1.out_features) == (d, depth, h)
    with torch.device("meta"):
        counts = {m: apply_method(real_meta(name), build_method(m, hp)).parameter_counts()["trainable"]
                  for m, hp in (("full", {}), ("lora", {"rank": 8}), ("vpt-shallow", {"num_tokens": 100}),
                                ("adapter", {"bottleneck": 8}), ("dtl", {}), ("linear", {}))}
    assert counts == {"full": vit_params(name), "lora": depth * 4 * d * 8, "vpt-shallow": 100 * d,
                      "adapter": depth * (2 * d * 8 + 8 + d), "dtl": depth * 2 * d * 2, "linear": 0}


# architectures whose sweep adds depth or an activation but no code path (ViT-L/16 is ViT-B/16 deeper,
# LAION's CLIP is OpenAI's with GELU): slow
SAME_PATH = {"vit-l16-in21k", "clip-vitb16-laion2b"}
SWEEP = [pytest.param(n, marks=pytest.mark.slow) if n in SAME_PATH else n for n in MODERN]
NEEDS_WEIGHTS = {"hst", "lst", "peft-boft"}  # side networks from the backbone's weights; BOFT reads tensor values


@pytest.mark.parametrize("name", SWEEP)
def test_every_method_applies_at_real_size_or_refuses_by_name(name):
    """All 30 methods on the real-size architecture (meta device): each applies, or it is in REFUSALS
    and its error names the method and the reason."""
    refused = {}
    for method in available_methods():
        cls = get_method_class(method)
        if cls.needs_selection or method in NEEDS_WEIGHTS:
            continue  # data- or weight-dependent build: covered at tiny size below
        built = build_method(method, {"start_block": -6} if method.startswith("dtl") else {})
        with torch.device("meta"):
            try:
                counts = apply_method(real_meta(name), built).parameter_counts()
            except MethodError as err:
                refused[(name, method)] = str(err)
                continue
        assert counts["head"] == (SHAPES[name][0] + 1) * 10
    assert sorted(refused) == sorted(k for k in REFUSALS if k[0] == name)
    for key, text in refused.items():
        assert text.startswith(key[1]) and REFUSALS[key] in text


# -- tiny size, CPU: every method trains on every architecture; one run end to end ------------------


def tiny_model(name: str, **kwargs) -> tuple[torch.nn.Module, int]:
    patch = SHAPES[name][3]
    torch.manual_seed(0)
    options = {**TINY, "img_size": 4 * patch, "num_classes": 3, **kwargs}
    return timm.create_model(ENTRIES[name]["arch"].split(".")[0], pretrained=False, **options), 4 * patch


#: hyper-parameters that fit the tiny models (width 48, depth 2); every other method at its defaults
TINY_HPARAMS = {
    "partial": {"k": 1}, "lora": {"rank": 4}, "adapter": {"bottleneck": 4}, "vpt-shallow": {"num_tokens": 3},
    "vpt-deep": {"num_tokens": 3}, "gps": {"top_k": 2}, "snf": {"flow_length": 2}, "adaptformer": {"bottleneck": 4},
    "prefix-tuning": {"num_tokens": 3}, "sct": {"top_n": 6}, "hydra": {"rank": 2}, "fact-tk": {"rank": 4},
    "fact-tt": {"rank": 4}, "repadapter": {"hidden_dim": 8}, "dtl": {"start_block": 1},
    "dtl-plus": {"start_block": 1}, "lst": {"reduction_factor": 4},
    "hst": {"stage_dims": (8, 16), "num_heads": (2, 2)}, "last": {"rank": 4},
    "u-tuning": {"num_tokens": 3, "ffn_tokens": 2},
    "noah": {"prompt_dims": (2, 1), "lora_ranks": (0, 2), "adapter_dims": (3, 0)},
    "bapat": {"adapter_bottleneck": 4, "patt_dim": 4}, "mona": {"bottleneck": 8},
    "lorand": {"bottleneck": 8, "kernel_rank": 2}, "e3va": {"bottleneck": 8, "kernel_rank": 2},
}


def apply_tiny(method: str, model: torch.nn.Module, images):
    """Build `method` for the tiny models, run its selection stage on `images` if it has one, apply it."""
    built = build_method(method, TINY_HPARAMS.get(method, {}))
    selection = built.compute_selection(model, [images], 3) if built.needs_selection else None
    return apply_method(model, built, selection)


@pytest.mark.parametrize("name", SWEEP)
def test_every_method_trains_on_the_tiny_architecture_or_refuses_by_name(name):
    refused = set()
    for method in available_methods():
        model, size = tiny_model(name)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(4, 3, size, size, generator=g), torch.arange(4) % 3
        try:
            applied = apply_tiny(method, model, (x, y))
        except MethodError as err:
            assert str(err).startswith(method) and REFUSALS[(name, method)] in str(err)
            refused.add((name, method))
            continue
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, f"{method} on {name}: {n}"
        if applied.method.mergeable:
            model.eval()
            with torch.no_grad():
                before = model(x)
                torch.testing.assert_close(applied.merge_and_unload()(x), before, rtol=0, atol=1e-4)
    assert refused == {k for k in REFUSALS if k[0] == name}


def test_prompts_go_after_the_cls_and_register_tokens():
    """DINOv2-reg has 5 prefix tokens (CLS + 4 registers): VPT's prompts sit after all of them, the
    prefix and patch tokens are untouched, and the head sees the original layout again."""
    model, size = tiny_model("dinov2-vitb14-reg4")
    model.eval()
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        plain = model.forward_features(x)
    method = build_method("vpt-deep", {"num_tokens": 3})
    apply_method(model, method)
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    model.blocks[0]._forward_pre_hooks.move_to_end(hook.id)  # after VPT's own hook
    with torch.no_grad():
        prompted = model.forward_features(x)
    before, after = seen[0], seen[-1]
    assert after.shape[1] == before.shape[1] + 3 == 5 + 16 + 3
    torch.testing.assert_close(after[:, :5], before[:, :5], rtol=0, atol=0)
    torch.testing.assert_close(after[:, 5:8], model.vpt_prompts.prompts[0].expand(2, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(after[:, 8:], before[:, 5:], rtol=0, atol=0)
    assert prompted.shape == plain.shape


def test_dtl_pools_the_patch_tokens_without_cls_and_registers():
    """DTL classifies norm(mean of the patch tokens): on DINOv2-reg the 4 registers are prefix tokens,
    left out of the mean as the CLS is."""
    model, size = tiny_model("dinov2-vitb14-reg4")
    reference = tiny_model("dinov2-vitb14-reg4")[0].eval()
    apply_method(model, build_method("dtl", {"start_block": 1}))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = reference.forward_features(x)  # DTL is the identity at init: same token stream
        norm = reference.norm
        pre_norm = reference.blocks(reference.norm_pre(reference._pos_embed(reference.patch_embed(x))))
        expected = norm(pre_norm[:, 5:].mean(1))
        got = model.eval().forward_head(model.forward_features(x), pre_logits=True)
    assert tokens.shape[1] == 5 + 16
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("method", ["lst", "last", "hst", "ssf"])
def test_methods_that_touch_the_head_input_follow_the_pooling(method):
    """With average pooling (MAE-style `global_pool: avg`, final norm after pooling) side networks and
    SSF feed the pooled feature: the head input is fc_norm(mean of the patch tokens they deliver)."""
    model, size = tiny_model("mae-vitb16", global_pool="avg")
    x = torch.randn(2, 3, size, size)
    apply_tiny(method, model, (x, torch.tensor([0, 1])))
    got = []
    model.fc_norm.register_forward_pre_hook(lambda m, args: got.append(args[0].detach()))
    with torch.no_grad():
        tokens = model.eval().forward_features(x)
        model.forward_head(tokens)
    torch.testing.assert_close(got[-1], tokens[:, 1:].mean(1))


@pytest.mark.parametrize("name, method", [("mae-vitb16", "dtl"), ("mae-vitb16", "hst"), ("mae-vitb16", "last")])
def test_attention_pool_heads_are_refused_by_name(name, method):
    model, _ = tiny_model(name, global_pool="map")
    with pytest.raises(MethodError, match=f"^{method}: .*(attention pool|attention-pool)"):
        apply_method(model, build_method(method, {"start_block": 1} if method == "dtl" else {}))


E2E = [("dinov2-vitb14-reg4", "vpt-shallow"), ("clip-vitb16-openai", "lora"), ("mae-vitb16", "dtl"),
       ("vit-h14-in21k", "adapter")]


@pytest.mark.parametrize("name, method", E2E, ids=[f"{n}-{m}" for n, m in E2E])
def test_a_run_trains_end_to_end_from_a_release_file(vtab_task, tmp_path, name, method):
    """The engine's run on a toy task, with the entry's architecture at tiny size loaded from a release
    file in its real format: trains, evaluates, records the backbone and its checkpoint's sha256."""
    from vpeft.engine.train import run_training

    _, spec, size = tiny_release(name, tmp_path)
    backbone = {**{k: v for k, v in ENTRIES[name].items() if k != "sha256"}, "name": name,
                "checkpoint": spec.checkpoint, "input_size": size, "model_kwargs": TINY}
    hparams = {"num_tokens": 2} if method == "vpt-shallow" else {"start_block": 1} if method == "dtl" else {}
    values = {"suite": "toy-suite", "task": "toy", "method": method, "seed": 1, "task_dir": str(vtab_task),
              "num_classes": 3, "backbone": backbone,
              "protocol": {"name": "vtab1k", "train_split": "train800val200", "eval_split": "test"},
              "method_hparams": hparams, "training": {**TRAINING, "epochs": 1, "warmup_epochs": 0},
              "pretrained": True}
    out = tmp_path / "metrics.json"
    run_training(values, out)
    m = json.loads(out.read_text())
    assert m["status"] == "ok" and 0.0 <= m["metric"]["value"] <= 1.0 and m["eval"]["num_images"] == 10
    assert m["config"]["backbone"]["arch"] == ENTRIES[name]["arch"]
    assert m["train"]["history"][0]["loss"] > 0 and m["params"]["trainable"] > 0


def test_ssf_runs_on_clip_without_the_bias_free_patch_embedding():
    """The way out the refusal names: SSF's targets without CLIP's bias-free `patch_embed.proj`."""
    from vpeft.methods.ssf import SsfConfig

    targets = SsfConfig().target_modules.replace(r"^patch_embed\.(proj|norm)$", r"^patch_embed\.norm$")
    model, size = tiny_model("clip-vitb16-openai")
    applied = apply_method(model, build_method("ssf", {"target_modules": targets}))
    assert "patch_embed.proj" not in applied.matched and "norm_pre" not in applied.matched
    x = torch.randn(2, 3, size, size)
    model.eval()
    with torch.no_grad():
        before = model(x)
        torch.testing.assert_close(applied.merge_and_unload()(x), before, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_a_suite_on_dinov2_plans_on_the_cluster(tmp_path):
    """The issue's example: `suites: {vtab: {backbone: dinov2-vitb14, methods: [...]}}` planned by
    `snakemake -n --profile slurm`: the DINOv2 file is downloaded and checked once, every task trained
    per method, the suite tabled and reported."""
    import subprocess

    from helpers.snake import ROOT as REPO, SNAKEMAKE, job_blocks

    methods = ["lora", "ssf", "adapter"]
    user = tmp_path / "dinov2.yaml"
    user.write_text(yaml.safe_dump({"default_suites": ["vtab"],
                                    "suites": {"vtab": {"backbone": "dinov2-vitb14", "methods": methods}}}))
    result = subprocess.run([*SNAKEMAKE, "--profile", "slurm", "--workflow-profile", "none", "-n", "--configfile",
                             "config/config.yaml", "config/benchmark.yaml", str(user)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    jobs = job_blocks(result.stdout)
    downloads = [j["wildcards"]["filename"] for j in jobs if j["rule"] == "download_backbone"]
    assert downloads == ["dinov2_vitb14_pretrain.pth"]
    assert [j["wildcards"]["backbone"] for j in jobs if j["rule"] == "check_backbone"] == ["dinov2-vitb14"]
    runs = [(j["wildcards"]["suite"], j["wildcards"]["method"]) for j in jobs if j["rule"] == "train_run"]
    tasks = len(yaml.safe_load((REPO / "config/config.yaml").read_text())["suites"]["vtab"]["tasks"])
    assert sorted(set(runs)) == sorted(("vtab", m) for m in methods) and len(runs) == len(methods) * tasks
    assert {j["rule"] for j in jobs} >= {"suite_table", "report"}
