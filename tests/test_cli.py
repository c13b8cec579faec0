"""The `vpeft` command line: method listing and parameter counts at ViT-B/16 (heads excluded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vpeft.cli import main


@pytest.mark.parametrize("method, extra, expected", [
    ("lora", ["--set", "rank=8"], 294_912),
    ("adapter", ["--set", "bottleneck=8"], 156_768),
    ("bitfit", [], 102_912),
    ("vpt-shallow", ["--set", "num_tokens=100"], 76_800),
    ("linear", [], 0),
])
def test_count_at_vit_b16(capsys, method, extra, expected):
    assert main(["count", method, "--backbone", "vit_base_patch16_224", "--num-classes", "10", *extra]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainable_params"] == expected
    assert out["trainable_params_with_head"] == expected + 769 * 10


def test_count_reports_matched_modules(capsys):
    main(["count", "lora", "--backbone", "vit_demo_patch4_32", "--show-matched"])
    out = json.loads(capsys.readouterr().out)
    assert out["matched"] == [f"blocks.{i}.attn.qkv" for i in range(4)]


def test_methods_lists_family_mergeable_stages_reference(capsys):
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["lora"]["mergeable"] is True and rows["adapter"]["mergeable"] is False
    assert rows["bitfit"]["family"] == "partial"
    assert rows["gps"]["stages"] == ["selection"] and rows["noah"]["stages"] == ["search"]
    assert rows["lst"]["backbone_grad"] is False
    assert "2022" in rows["lora"]["reference"]
    families = [r["family"] for r in rows.values()]
    assert families == sorted(families, key=["baseline", "partial", "addition", "reparameterization", "side",
                                             "unified", "peft"].index), "listed in table order"


def test_methods_markdown_is_the_readme_table(capsys):
    assert main(["methods", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    readme = (Path(__file__).resolve().parents[1] / "docs/methods.md").read_text()
    assert table in readme, "docs/methods.md's method table is out of date: paste `vpeft methods --markdown`"


def test_count_runs_the_selection_stage_of_data_dependent_methods(capsys):
    assert main(["count", "sct", "--backbone", "vit_base_patch16_224", "--num-classes", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 111_744


def test_unknown_method_and_bad_hparam_are_clear():
    with pytest.raises(SystemExit, match=r"unknown method 'lorra' \(did you mean 'lora' or 'lorand'\?\); "
                                            r"valid methods: adapter"):
        main(["count", "lorra", "--backbone", "vit_demo_patch4_32"])
    with pytest.raises(SystemExit, match="lora.rank: expected int"):
        main(["count", "lora", "--backbone", "vit_demo_patch4_32", "--set", "rank=x"])
    with pytest.raises(SystemExit, match="unknown backbone architecture 'vit_nope'"):
        main(["count", "lora", "--backbone", "vit_nope"])


# issue #22: every modern backbone, by its backbones: entry (its input size) and by timm arch.tag
# (LAION's CLIP, ViT-L and ViT-H: the same code path as OpenAI's CLIP and ViT-B, only bigger: slow)
MODERN_COUNTS = [("dinov2-vitb14", 768, 12), ("dinov2-vitb14-reg4", 768, 12), ("clip-vitb16-openai", 768, 12),
                 pytest.param("clip-vitb16-laion2b", 768, 12, marks=pytest.mark.slow), ("mae-vitb16", 768, 12),
                 pytest.param("vit-l16-in21k", 1024, 24, marks=pytest.mark.slow),
                 pytest.param("vit-h14-in21k", 1280, 32, marks=pytest.mark.slow)]


@pytest.mark.parametrize("backbone, width, depth", MODERN_COUNTS)
def test_count_works_for_every_modern_backbone(capsys, backbone, width, depth):
    import yaml

    from helpers.snake import ROOT

    config = str(ROOT / "config/config.yaml")
    arch = yaml.safe_load(open(config))["backbones"][backbone]["arch"]
    for name in (backbone, arch) if backbone == "dinov2-vitb14-reg4" else (backbone,):  # arch.tag: once is enough
        assert main(["count", "lora", "--backbone", name, "--num-classes", "10", "--config", config,
                     "--set", "rank=8"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["arch"] == arch and out["trainable_params"] == depth * 4 * width * 8
        assert out["head_params"] == (width + 1) * 10


def test_count_runs_a_selection_stage_at_the_entrys_input_size(capsys):
    """SCT's selection looks at images: at DINOv2's 224 px (its entry), not timm's 518 px default."""
    from helpers.snake import ROOT

    assert main(["count", "sct", "--backbone", "dinov2-vitb14", "--num-classes", "10",
                 "--config", str(ROOT / "config/config.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 12 * (96 * 96 + 96)


def test_python_dash_m_vpeft_is_the_command_line():
    result = subprocess.run([sys.executable, "-m", "vpeft", "count", "lora", "--backbone", "vit_demo_patch4_32"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["trainable_params"] > 0


def test_a_method_missing_an_attribute_is_one_clear_line(monkeypatch):
    from vpeft.methods.base import MethodError, PeftMethod, from_paper
    from vpeft.methods.registry import register_method

    class NoConfig(PeftMethod):
        name, category, paper, provenance = "no-config", "addition", "Me, 2026", from_paper("section 1")

    with pytest.raises(MethodError, match=r"^method class NoConfig \(.*\) does not set `config_cls`: config_cls = "
                                          r"the MethodConfig dataclass"):
        register_method(NoConfig)

    class Bare(PeftMethod):
        pass

    with pytest.raises(MethodError, match="does not set `name`, `config_cls`, `category`, `paper`, `provenance`"):
        register_method(Bare)

    def broken(args):  # what discovery raises when such a module is imported
        register_method(NoConfig)

    monkeypatch.setattr("vpeft.cli.cmd_methods", broken)
    with pytest.raises(SystemExit, match="^error: method class NoConfig .* does not set `config_cls`"):
        main(["methods"])
