"""`vpeft plan`: the work of every run counted from the config, and its GPU time from measured
throughput or from FLOPs counted on a meta-device backbone."""

from __future__ import annotations

import copy

import subprocess
import sys
from pathlib import Path

import pytest

from vpeft.config import deep_merge, load_method_configs, load_yaml, resolve_suites
from vpeft.plan import forward_flops, plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def full_benchmark():
    config = deep_merge(load_yaml(ROOT / "config/config.yaml"), load_yaml(ROOT / "config/benchmark.yaml"))
    # measured rates for every backbone, so this test needs no FLOP counting: 100 train / 400 eval samples/s
    config["cost_plan"]["throughput"] = {b: {"train": 100.0, "eval": 400.0} for b in config["backbones"]}
    return config, load_method_configs(ROOT / "config/methods")


def test_work_per_run_follows_the_published_protocols(full_benchmark):
    config, methods = full_benchmark
    rows = {(r.suite, r.method): r for r in plan(config, methods)}
    # VTAB-1k: 1000 training images x 100 epochs; the test sets of the 19 tasks, averaged per job
    vtab_tests = [t["sizes"]["test"] for t in config["suites"]["vtab"]["tasks"].values()]
    assert rows["vtab", "lora"].jobs == 19 and rows["vtab", "lora"].train_samples == 1000 * 100
    assert rows["vtab", "lora"].eval_samples == sum(vtab_tests) // 19
    # SSv2: 168,913 training videos x 90 epochs; 24,777 validation videos x 4 clips x 3 crops
    assert rows["ssv2", "lora"].train_samples == 168_913 * 90 and rows["ssv2", "lora"].eval_samples == 24_777 * 12
    # COCO 3x: 36 epochs of train2017; VOC: 07+12 trainval repeated 3x, 4 epochs; ADE20K: 160k iterations x 16
    assert rows["coco", "mona"].train_samples == 118_287 * 36
    assert rows["voc", "mona"].train_samples == 16_551 * 3 * 4
    assert rows["ade20k", "mona"].train_samples == 160_000 * 16
    # every default suite and each of its methods appears once
    suites = resolve_suites(config)
    assert {r.suite for r in rows.values()} == set(config["default_suites"])
    assert len(rows) == sum(len(methods if suites[s]["methods"] == "all" else suites[s]["methods"])
                            for s in config["default_suites"])


def test_measured_throughput_gives_the_hours(full_benchmark):
    config, methods = full_benchmark
    (row,) = [r for r in plan(config, methods, ["hmdb51"]) if r.method == "lora"]
    assert row.source == "measured"
    assert row.gpu_hours == pytest.approx((3570 * 90 / 100.0 + 1530 * 12 / 400.0) / 3600)


def test_forward_flops_of_vit_b16_match_its_published_cost():
    # ViT-B/16 at 224 px: 17.6 G multiply-adds per image (timm / DeiT tables) = 35.1 GFLOP
    flops = forward_flops("vit_base_patch16_224.orig_in21k", (1, 3, 224, 224))
    assert flops == pytest.approx(2 * 17.58e9, rel=0.01)


def test_estimate_from_flops_uses_peak_and_utilisation_and_each_method_s_training_step(full_benchmark):
    """Full fine-tuning: forward + backward (3 forwards); a linear probe without the feature cache (VTAB's
    augmentation, drop-path): the frozen forward only; a cached probe: one forward per training image."""
    config, methods = full_benchmark
    config = copy.deepcopy(dict(config, cost_plan=dict(config["cost_plan"], throughput={})))
    rows = {r.method: r for r in plan(config, methods, ["vtab"])}
    flops = forward_flops("vit_base_patch16_224.orig_in21k", (1, 3, 224, 224))
    peak = 790e12 * 0.4
    tests = sum(t["sizes"]["test"] for t in config["suites"]["vtab"]["tasks"].values())
    assert rows["full"].source == "estimated" and rows["full"].cost_model == "full backward"
    assert rows["full"].gpu_hours == pytest.approx((19 * 100_000 * 3 * flops + tests * flops) / peak / 3600)
    assert rows["linear"].cost_model == "forward only"
    assert rows["linear"].gpu_hours == pytest.approx((19 * 100_000 * flops + tests * flops) / peak / 3600)
    assert rows["lst"].cost_model == "forward only"  # side-tuning (needs_backbone_grad = False): no gradient through the backbone

    config["suites"]["vtab"].update(protocol="vtab1k")
    config["training"]["drop_path"] = 0.0
    config["seeds"] = [1, 2, 3]
    rows = {r.method: r for r in plan(config, methods, ["vtab"])}
    cached = rows["linear"]
    assert cached.cost_model == "cached features" and cached.jobs == 57 and cached.seeds == 3
    assert cached.gpu_hours_per_seed == pytest.approx((19 * 1_000 * flops + tests * flops) / peak / 3600)
    assert cached.gpu_hours == pytest.approx(3 * cached.gpu_hours_per_seed)


def test_cli_prints_the_plan_and_names_a_missing_size(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vpeft.cli", "plan", "--suite", "hmdb51"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("all suites") and "GPU-days on NVIDIA H200" in last
    config = load_yaml(ROOT / "config/config.yaml")
    del config["cost_plan"]["dataset_sizes"]["hmdb51"]
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(config))
    broken = subprocess.run([sys.executable, "-m", "vpeft.cli", "plan", "--suite", "hmdb51", "--configfile",
                             str(tmp_path / "c.yaml")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert broken.returncode != 0
    assert "no size for split 'train800val200' of hmdb51/hmdb51" in broken.stderr


def test_plan_counts_fewshot_jobs_and_the_shift_stage():
    """A few-shot suite plans one job per method x task x shots x seed, each training k x classes images
    per epoch; a suite with shift targets adds its evaluate_shift stage (targets x WiSE alphas)."""
    config = load_yaml(ROOT / "config/config.yaml")
    config["cost_plan"]["throughput"] = {b: {"train": 100.0, "eval": 400.0} for b in config["backbones"]}
    methods = load_method_configs(ROOT / "config/methods")
    suites = resolve_suites(config)
    rows = {(r.suite, r.method, r.stage): r for r in plan(config, methods, ["vtab-mini-fewshot", "vtab-mini-shift"])}
    few = suites["vtab-mini-fewshot"]
    shots, seeds = few["fewshot"]["shots"], few["fewshot"]["seeds"]
    lora = rows["vtab-mini-fewshot", "lora", "train"]
    assert lora.jobs == len(few["tasks"]) * len(shots) * len(seeds)
    epochs = few["training"]["epochs"]
    expected = [k * t["num_classes"] * epochs for t in few["tasks"].values() for k in shots for _ in seeds]
    assert lora.train_samples == sum(expected) // len(expected)
    assert ("vtab-mini-fewshot", "lora", "shift") not in rows  # no targets, no shift stage
    # shift: per run the source test split and 3 targets (the odd-class one half of the test split),
    # at 5 alphas for a mergeable method and full fine-tuning, once for the adapter
    test = few["sizes"]["test"]
    per_run = test * 3 + test // 2
    assert rows["vtab-mini-shift", "lora", "shift"].eval_samples == per_run * 5
    assert rows["vtab-mini-shift", "full", "shift"].eval_samples == per_run * 5
    assert rows["vtab-mini-shift", "adapter", "shift"].eval_samples == per_run
    assert rows["vtab-mini-shift", "lora", "shift"].jobs == rows["vtab-mini-shift", "lora", "train"].jobs == 6


def test_forward_flops_of_an_architecture_run_below_its_default_size():
    """DINOv2 is 518 px in timm and runs at 224 here (backbones.dinov2-vitb14.input_size): 256 patches of
    14 px + CLS, about 4/3 of ViT-B/16's 197 tokens."""
    ratio = forward_flops("vit_base_patch14_dinov2.lvd142m", (1, 3, 224, 224)) / \
        forward_flops("vit_base_patch16_224.orig_in21k", (1, 3, 224, 224))
    assert 1.25 < ratio < 1.40
