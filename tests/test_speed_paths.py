"""The speed paths of the engine, on CPU: the training split held on the device (same batches as the
DataLoader), the `auto` settings, and a training job's imports (no torch._dynamo, no video or dense
stack for an image run)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from helpers.runs import run_values
from vpeft.data.layouts import get_layout
from vpeft.engine.build import RunConfig, TrainingConfig, build_run_model
from vpeft.engine.device_data import DeviceBatches
from vpeft.engine.train import run_training

ROOT = Path(__file__).resolve().parents[1]


def _split_and_loader_set(task_dir, **training):
    run = RunConfig.from_dict(run_values(task_dir, "lora", **training))
    tc = TrainingConfig.from_dict(run.training)
    spec, _, _ = build_run_model(run, tc, ".")
    layout = get_layout(run.layout)
    return layout.train_uint8(run, spec, tc), layout.train_dataset(run, spec, tc)


def test_device_batches_equal_the_loader_batches_without_augmentation(vtab_task):
    split, loader_set = _split_and_loader_set(vtab_task)
    assert split.images.dtype == torch.uint8 and not split.augment
    loader = DataLoader(loader_set, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3))
    device = DeviceBatches(split, torch.device("cpu"), 5, torch.Generator().manual_seed(3))
    for _ in range(2):  # two epochs: the shuffle generator advances the same way
        pairs = list(zip(loader, device, strict=True))
        assert len(pairs) == 4
        for (a, la), (b, lb) in pairs:
            assert torch.equal(a, b) and torch.equal(la, lb)


def test_a_run_with_the_split_on_the_device_equals_the_loader_run(vtab_task, tmp_path):
    loader = run_training(run_values(vtab_task, "lora", data_on_device=False), tmp_path / "loader.json")
    device = run_training(run_values(vtab_task, "lora", data_on_device=True), tmp_path / "device.json")
    assert loader["train"]["data_path"] == "loader" and device["train"]["data_path"] == "device"
    assert device["metric"] == loader["metric"]
    assert [h["loss"] for h in device["train"]["history"]] == [h["loss"] for h in loader["train"]["history"]]
    assert device["config"]["fingerprint"] != loader["config"]["fingerprint"]


def test_device_augmentation_flips_and_rand_augments_each_image(vtab_task):
    split, _ = _split_and_loader_set(vtab_task)
    vpetl = {"name": "vpetl", "train_split": "train800val200", "eval_split": "test", "augmentation": "vpetl"}
    run = RunConfig.from_dict({**run_values(vtab_task, "lora", train_aug=True), "protocol": vpetl})
    tc = TrainingConfig.from_dict(run.training)
    spec, _, _ = build_run_model(run, tc, ".")
    augmented = get_layout("vtab").train_uint8(run, spec, tc)
    assert augmented.augment and not split.augment
    plain = DeviceBatches(split, torch.device("cpu"), 16, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    first = [b for b, _ in DeviceBatches(augmented, torch.device("cpu"), 16, torch.Generator().manual_seed(0))]
    torch.manual_seed(0)
    again = [b for b, _ in DeviceBatches(augmented, torch.device("cpu"), 16, torch.Generator().manual_seed(0))]
    reference = [b for b, _ in plain]
    assert all(torch.equal(a, b) for a, b in zip(first, again)), "augmentation follows torch's seeded generator"
    assert all(a.shape == r.shape and torch.isfinite(a).all() for a, r in zip(first, reference))
    changed = sum(not torch.equal(a[i], r[i]) for a, r in zip(first, reference) for i in range(len(a)))
    assert changed >= len(split.labels) // 2, "most images change under flip + RandAugment"


def test_auto_settings_follow_the_device(monkeypatch):
    tc = TrainingConfig()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (tc.precision_on(cpu), tc.data_on_device_on(cpu), tc.eval_workers_on(cpu)) == ("fp32", False, 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert tc.precision_on(cuda) == "bf16" and tc.data_on_device_on(cuda) and tc.eval_workers_on(cuda) >= 1
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert tc.precision_on(cuda) == "fp32"
    assert TrainingConfig(precision="fp32").precision_on(cuda) == "fp32"
    with pytest.raises(ValueError, match="data_on_device"):
        TrainingConfig(data_on_device="sometimes")


# -- what a training job imports ----------------------------------------------------------------------

#: Never needed by an image training run: the real torch._dynamo (vpeft._lazy_dynamo keeps a stand-in
#: until something compiles) with sympy, triton and inductor, about 2 s of every job's start; the video
#: and dense stacks; data-science packages.
HEAVY = ("torch._dynamo.eval_frame", "torch._inductor", "sympy", "triton", "vpeft.video", "vpeft.dense", "pandas",
         "sklearn", "skimage", "decord", "mmcv", "optuna")


@pytest.mark.slow
def test_an_image_training_job_imports_no_heavy_module(vtab_task, tmp_path):
    values = run_values(vtab_task, "lora", epochs=1)
    listing = tmp_path / "modules.json"  # not stdout: log_to_file sends the job's stdout to its log
    child = (f"import json, sys\n"
             f"from vpeft.engine.train import run_training, with_searched_hparams  # as workflow/scripts/train.py\n"
             f"from vpeft.engine.tune import with_tuned_settings\n"
             f"from vpeft.logs import console, finished_run_line, log_to_file\n"
             f"log_to_file({str(tmp_path / 'train.log')!r})\n"
             f"metrics = run_training(json.loads({json.dumps(values)!r}), {str(tmp_path / 'metrics.json')!r})\n"
             f"console(finished_run_line(metrics))\n"
             f"open({str(listing)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:] + (tmp_path / "train.log").read_text()[-3000:]
    modules = json.loads(listing.read_text())
    assert "timm" in modules and "torchvision" in modules and "vpeft.methods.lora" in modules
    loaded = [h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules)]
    assert loaded == [], f"an image training job imported {loaded}"


def test_the_real_dynamo_loads_when_something_compiles_and_eager_code_is_unchanged():
    child = textwrap.dedent("""
        import sys, torch
        import vpeft.backbones, timm, torchvision
        assert "torch._dynamo.eval_frame" not in sys.modules, "timm loaded torch._dynamo"
        # eager uses of the stand-in: an optimizer's life, roi_align, timm's torch.compiler.disable
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        model(torch.ones(3, 4)).sum().backward()
        opt.step(); opt.zero_grad()
        state = opt.state_dict()
        from torchvision.ops import roi_align
        assert roi_align(torch.rand(1, 3, 8, 8), torch.tensor([[0, 0, 0, 4, 4.0]]), 2).shape == (1, 3, 2, 2)
        from timm.layers.typing import disable_compiler
        assert disable_compiler(lambda x: x + 1)(1) == 2
        assert "torch._dynamo.eval_frame" not in sys.modules, "an eager step loaded torch._dynamo"
        # compiling loads the real package, which replaces the stand-in everywhere
        compiled = torch.compile(lambda x: x * 2 + 1, backend="eager")
        assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 3.0))
        import torch._dynamo, torch._dynamo.utils
        assert type(torch._dynamo).__name__ == "module" and sys.modules["torch._dynamo"] is torch._dynamo
        assert sys.modules["torch._dynamo.utils"] is torch._dynamo.utils and hasattr(torch._dynamo, "optimize")
        from torchvision.ops.roi_align import is_compile_supported
        assert is_compile_supported("cpu") == torch._dynamo.utils.is_compile_supported("cpu")
        model(torch.ones(3, 4)).sum().backward()
        opt.step()  # the optimizer's disabled methods now go through the real torch._dynamo.disable
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def _epoch(host_each_step: bool, nan_in_step: int | None = None):
    from vpeft.engine.build import autocast_context
    from vpeft.engine.train import train_epoch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    images = torch.randn(20, 3, 2, 2)
    if nan_in_step is not None:
        images[6 * (nan_in_step - 1)] = float("nan")
    data = torch.utils.data.TensorDataset(images, torch.arange(20) % 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return train_epoch(model, model, DataLoader(data, batch_size=6), optimizer, torch.nn.CrossEntropyLoss(),
                       device="cpu", autocast=autocast_context(torch.device("cpu"), "fp32"), epoch=4,
                       where=lambda: "toy", host_each_step=host_each_step)


def test_the_gpu_way_of_reading_the_loss_once_per_epoch_gives_the_same_sums():
    step_by_step, per_epoch = _epoch(True), _epoch(False)
    assert {k: v for k, v in step_by_step.items() if k != "seconds"} == \
        {k: v for k, v in per_epoch.items() if k != "seconds"}
    assert per_epoch["images"] == 20
    for host_each_step in (True, False):
        with pytest.raises(RuntimeError, match=r"loss is nan at epoch 4, step 3 \(toy\)"):
            _epoch(host_each_step, nan_in_step=3)
