"""huggingface peft's tuners as methods (vpeft.methods.hf_peft): peft's own counts, timm module names as
targets, refusals by name, AdaLoRA's schedule from the engine's steps, provenance, and `export --to peft`.

The method table (tests/test_methods.py CASES) runs every peft row through the shared checks too."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

import pytest
import timm
import torch
from helpers.models import small_swin, small_vit

from vpeft import cli
from vpeft.engine.train import run_training
from vpeft.export import export_run, exportable_methods, load_run
from vpeft.methods import MethodError, apply_method, available_methods, build_method, get_method_class
from vpeft.methods.hf_peft import TUNERS, PeftTunerMethod, peft_tuner

ROOT = Path(__file__).resolve().parents[1]
PEFT_METHODS = [t.name for t in TUNERS]
#: hyper-parameters that fit the small test models (width 48 ViT, width 24 / 48 Swin)
SMALL = {"peft-oft": {"args": {"oft_block_size": 8}}, "peft-vera": {"args": {"r": 16}},
         "peft-fourierft": {"args": {"n_frequency": 50}}, "peft-adalora": {"args": {"init_r": 4, "target_r": 2}}}


def test_every_tuner_is_a_registered_peft_method_with_its_yaml():
    assert set(PEFT_METHODS) <= set(available_methods())
    shipped = {"lora", "dora", "rslora", "pissa", "vera", "oft", "boft", "hra", "ia3", "loha", "lokr", "adalora",
               "fourierft", "ln-tuning"}
    assert {n.removeprefix("peft-") for n in PEFT_METHODS} == shipped
    from vpeft.config import load_method_configs

    configs = load_method_configs(ROOT / "config/methods", ROOT / "workflow/schemas/method.schema.yaml")
    for t in TUNERS:
        hparams = configs[t.name]["hparams"]
        assert hparams["peft_config"] == t.peft_config  # the YAML names peft's class, in peft's terms
        assert build_method(t.name, hparams).config.to_dict() == build_method(t.name).config.to_dict(), \
            f"config/methods/{t.name}.yaml must state the method's defaults"
        assert get_method_class(t.name).category == "peft"


def test_default_run_does_not_include_the_peft_rows():
    import yaml

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for suite in config["default_suites"]:
        methods = config["suites"][suite].get("methods", [])
        assert not [m for m in methods if str(m).startswith("peft-")], suite


@pytest.mark.parametrize("name", PEFT_METHODS)
def test_our_count_equals_peft_own_count_at_vit_b16(name):
    """Our counter (head excluded) against `PeftModel.get_nb_trainable_parameters` for the same peft config."""
    import peft

    tuner = get_method_class(name).tuner
    device = "meta" if tuner.meta_device else "cpu"
    with torch.device(device):
        ours = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
        theirs = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
        method = build_method(name)
        counts = apply_method(ours, method).parameter_counts()
        peft_trainable, _ = peft.get_peft_model(theirs, method.peft_config_for(theirs)).get_nb_trainable_parameters()
    assert counts["trainable"] == peft_trainable > 0


def test_targets_are_timm_module_names_and_one_that_matches_nothing_is_named():
    model = small_vit()
    applied = apply_method(model, build_method("peft-lora", {"target_modules": ["attn.proj", "fc1"]}))
    assert applied.matched == sorted(f"blocks.{b}.{m}" for b in range(2) for m in ("attn.proj", "mlp.fc1"))
    assert "patch_embed.proj" not in applied.matched  # "attn.proj" is a dotted tail, not any "proj"
    with pytest.raises(MethodError, match=r"peft-dora: target 'qkvz' matches no module of VisionTransformer; "
                                          r"its module names include: .*\bqkv\b"):
        apply_method(small_vit(), build_method("peft-dora", {"target_modules": ["qkv", "qkvz"]}))


def test_identity_placeholders_are_not_targets():
    """timm's final norm and patch_embed.norm share the name "norm"; the latter is an absent nn.Identity."""
    model = small_vit()
    assert isinstance(model.patch_embed.norm, torch.nn.Identity)
    applied = apply_method(model, build_method("peft-ln-tuning"))
    assert "norm" in applied.matched and "patch_embed.norm" not in applied.matched
    assert len(applied.matched) == 2 * 2 + 1


def test_a_tuner_that_cannot_run_on_a_module_says_so_by_name():
    with pytest.raises(MethodError, match=r"peft-vera cannot run on VisionTransformer: peft's VeraModel refuses its "
                                          r"targets \['patch_embed.proj'\]"):
        apply_method(small_vit(), build_method("peft-vera", {"target_modules": ["patch_embed.proj"],
                                                             "args": {"r": 4}}))


def test_wrong_arguments_name_the_method_the_peft_class_and_its_arguments():
    with pytest.raises(MethodError, match=r"peft-dora.args: peft's LoraConfig rejects them .*rank.*its arguments: "
                                          r".*\blora_alpha\b.*\br\b"):
        apply_method(small_vit(), build_method("peft-dora", {"args": {"rank": 4}}))
    with pytest.raises(MethodError, match="peft-dora runs peft's LoraConfig, not 'VeraConfig'"):
        build_method("peft-dora", {"peft_config": "VeraConfig"})
    with pytest.raises(MethodError, match=r"peft-adalora.args.total_step: set by the engine"):
        build_method("peft-adalora", {"args": {"total_step": 10}})
    with pytest.raises(MethodError, match=r"peft-lora.args.target_modules: set by peft-lora.target_modules"):
        build_method("peft-lora", {"args": {"target_modules": ["qkv"]}})


def test_args_are_laid_over_the_defaults():
    config = build_method("peft-dora", {"args": {"r": 4}}).config
    assert config.args == {"r": 4, "lora_alpha": 8, "use_dora": True}


def test_boft_never_silently_changes_its_butterfly_factor():
    from peft.tuners.boft.layer import get_fbd_cuda

    method = build_method("peft-boft", {"args": {"boft_n_butterfly_factor": 2}})
    if get_fbd_cuda():  # peft's CUDA kernel built: factor 2 runs as asked
        model = small_vit()
        apply_method(model, method)
        assert model.blocks[0].attn.qkv.boft_R["default"].shape[0] == 2
    else:
        with pytest.raises(MethodError, match="boft_n_butterfly_factor=2 needs peft's compiled BOFT CUDA kernel"):
            apply_method(small_vit(), method)


@pytest.mark.parametrize("name", PEFT_METHODS)
def test_every_tuner_runs_on_swin_by_the_same_module_names(name):
    model = small_swin(num_classes=3)
    hparams = {**SMALL.get(name, {})}
    if name == "peft-oft":
        hparams = {"args": {"oft_block_size": 4}}  # divides both stage widths (24, 48)
    method = build_method(name, hparams)
    applied = apply_method(model, method)
    assert applied.matched and all(any(n == t or n.endswith("." + t) for t in method.config.target_modules)
                                   for n in applied.matched)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    model(x).sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(applied.method.method_parameter_names(model)) | {"head.fc.weight", "head.fc.bias"}
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    model.eval()
    with torch.no_grad():
        before = model(x)
        plain = applied.merge_and_unload()
        torch.testing.assert_close(plain(x), before, atol=1e-5, rtol=0)
    assert type(plain) is type(small_swin(num_classes=3)) and peft_tuner(plain) is None


def test_adalora_budget_follows_the_engine_step_count():
    """peft's rank allocator, driven by the steps `begin_training` is given, prunes to target_r per layer on
    average by `total_step - tfinal` (and not before `tinit`)."""
    model = small_vit()
    method = build_method("peft-adalora", {"args": {"init_r": 4, "target_r": 2}, "schedule": {"tinit": 0.2,
                                                                                               "tfinal": 0.3}})
    apply_method(model, method)
    total = 20
    after_step = method.begin_training(model, total)
    config = peft_tuner(model).peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal) == (20, 4, 6)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(6) % 5
    kept = []
    for _ in range(total):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        after_step()
        kept.append(sum(int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n))
    layers = 2
    assert kept[2] == 4 * layers  # warm-up: every rank kept
    assert kept[-1] == 2 * layers  # the final budget: target_r on average over the layers
    assert config.rank_pattern is not None


def test_adalora_in_the_engine_gets_the_run_step_count(vtab_task, tmp_path):
    metrics = _train(vtab_task, tmp_path / "run", "peft-adalora", {"args": {"init_r": 4, "target_r": 2}})
    assert metrics["eval"]["merged"] is True
    kept = load_run(tmp_path / "run", merge=False).model
    # 3 epochs x ceil(12 / 4) steps: the budget phase ends at step 9 - int(0.2 * 9), so the trained E's hold
    # the final budget: two of four ranks per layer on average (4 blocks of the demo ViT)
    nonzero = sum(int((p != 0).sum()) for n, p in kept.named_parameters() if "lora_E" in n)
    assert nonzero == 2 * 4


def test_provenance_is_peft_at_its_installed_version(capsys):
    version = importlib.metadata.version("peft")
    for name in PEFT_METHODS:
        prov = get_method_class(name).provenance
        assert prov.kind == "official-code" and prov.repo == "huggingface/peft" and prov.version == version
        assert prov.summary().startswith(f"official-code: huggingface/peft@{version} (src/peft/tuners/")
        assert prov.problems() == []
    assert cli.main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {n for n, r in rows.items() if r["family"] == "peft"} == set(PEFT_METHODS)
    assert all(rows[n]["provenance"]["version"] == version for n in PEFT_METHODS)


# -- runs and export -----------------------------------------------------------------------------

ASSET = ROOT / "assets/vit_demo_patch4_32.fractal.safetensors"
ARCH = "vit_demo_patch4_32.fractal"


def _train(task_dir: Path, out: Path, method: str, hparams: dict | None = None) -> dict:
    values = {"suite": "toy-suite", "task": "toy", "method": method, "seed": 3, "task_dir": str(task_dir),
              "num_classes": 3, "pretrained": True,
              "backbone": {"name": "vit-demo", "arch": ARCH, "checkpoint": str(ASSET),
                           "sha256": hashlib.sha256(ASSET.read_bytes()).hexdigest(), "input_size": 32,
                           "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"},
              "protocol": {"name": "vtab1k", "train_split": "train800val200", "eval_split": "test"},
              "method_hparams": hparams or {},
              "training": {"epochs": 3, "warmup_epochs": 0, "batch_size": 4, "eval_batch_size": 16, "lr": 1e-2,
                           "label_smoothing": 0.1, "drop_path": 0.0}}
    return run_training(values, out / "metrics.json")


def test_peft_family_is_exportable_to_peft():
    assert set(PEFT_METHODS) <= set(exportable_methods("peft"))
    assert all(issubclass(get_method_class(n), PeftTunerMethod) for n in PEFT_METHODS)


@pytest.mark.parametrize("name", ["peft-dora", "peft-vera", "peft-pissa", "peft-ia3"])
def test_export_to_peft_is_peft_own_adapter_and_loads_with_our_outputs(vtab_task, tmp_path, name):
    from peft import PeftModel

    metrics = _train(vtab_task, tmp_path / "run", name, SMALL.get(name))
    assert metrics["eval"]["merged"] is True and metrics["provenance"]["packages"]["peft"] == \
        importlib.metadata.version("peft")
    out = export_run(tmp_path / "run", "peft", tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "vpeft_export.json"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == {"peft-dora": "LORA", "peft-vera": "VERA", "peft-pissa": "LORA", "peft-ia3": "IA3"}[name]
    assert config["modules_to_save"] == ["head"]

    base = timm.create_model(ARCH, checkpoint_path=str(ASSET), num_classes=0)
    base.reset_classifier(3)
    theirs = PeftModel.from_pretrained(base, str(out)).eval()
    ours = load_run(tmp_path / "run", merge=False)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(images), ours.predict(images), atol=1e-5, rtol=0)
    ours.model = theirs
    assert ours.evaluate() == metrics["metric"]["value"]
