"""A finished run keeps its trained tensors; `load_run` rebuilds it exactly; `vpeft export` writes a
peft LoRA adapter and a merged timm state dict that peft / timm load with the same outputs as ours."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

from vpeft import cli
from vpeft.artifacts import ArtifactError
from vpeft.backbones import BackboneError
from vpeft.engine.train import run_training
from vpeft.export import ExportError, export_run, exportable_methods, load_run
from vpeft.methods import available_methods, get_method_class

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "assets/vit_demo_patch4_32.fractal.safetensors"
ARCH = "vit_demo_patch4_32.fractal"
TRAINING = {"epochs": 2, "warmup_epochs": 0, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-2,
            "label_smoothing": 0.1, "drop_path": 0.0}
#: Small settings where the defaults are large for the demo ViT (width 128, depth 4).
HPARAMS = {"lora": {"rank": 2, "alpha": 4.0}, "noah": {"prompt_dims": (2, 1, 0, 2), "lora_ranks": (0, 2, 1, 0),
                                                       "adapter_dims": (3, 0, 0, 2)},
           "hst": {"stage_dims": (8, 16), "num_heads": (2, 2)}, "sct": {"top_n": 8}, "gps": {"top_k": 1},
           "dtl": {"start_block": 1}, "dtl-plus": {"start_block": 1}}


def backbone(checkpoint: Path | None = ASSET) -> dict:
    sha = hashlib.sha256(ASSET.read_bytes()).hexdigest() if checkpoint == ASSET else None
    return {"name": "vit-demo", "arch": ARCH, "checkpoint": str(checkpoint) if checkpoint else None, "sha256": sha,
            "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}


def train(task_dir: Path, out: Path, method: str, hparams: dict | None = None, *, checkpoint=ASSET,
          seed: int = 3) -> dict:
    values = {"suite": "toy-suite", "task": "toy", "method": method, "seed": seed, "task_dir": str(task_dir),
              "num_classes": 3, "backbone": backbone(checkpoint),
              "protocol": {"name": "vtab1k", "train_split": "train800val200", "eval_split": "test"},
              "method_hparams": HPARAMS.get(method, {}) if hparams is None else hparams, "training": TRAINING,
              "pretrained": checkpoint is not None}
    return run_training(values, out / "metrics.json")


def test_run_keeps_its_trained_tensors_with_what_rebuilds_it_and_writes_them_before_metrics(vtab_task, tmp_path,
                                                                                             monkeypatch):
    import vpeft.engine.train as engine

    order = []
    write_json = engine.atomic_write_json

    def record(path, obj):
        order.append((Path(path).name, (Path(path).parent / "trained.safetensors").is_file()))
        write_json(path, obj)

    monkeypatch.setattr(engine, "atomic_write_json", record)
    metrics = train(vtab_task, tmp_path / "run", "lora")
    assert order == [("metrics.json", True)], "trained.safetensors must exist before metrics.json is written"

    path = tmp_path / "run/trained.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        meta = {k: json.loads(v) for k, v in fh.metadata().items()}
    # the method's tensors (LoRA A and B on q and v of every block) and the head, nothing frozen
    assert sum(torch.Size(s).numel() for s in shapes.values()) == metrics["params"]["trainable_with_head"]
    assert {k for k in shapes if "lora_" in k} == {f"blocks.{b}.attn.qkv.lora_{m}.{t}"
                                                   for b in range(4) for m in "AB" for t in "qv"}
    assert {k for k in shapes if "lora_" not in k} == {"head.weight", "head.bias"}
    assert path.stat().st_size < 64 * 1024
    assert meta["method"] == "lora" and meta["method_config"] == json.loads(json.dumps(metrics["config"]["method_hparams"]))
    assert meta["method_config"]["rank"] == 2 and meta["method_config"]["targets"] == ["q", "v"]
    assert meta["backbone_arch"] == ARCH and meta["seed"] == 3 and meta["num_classes"] == 3
    assert meta["backbone_sha256"] == hashlib.sha256(ASSET.read_bytes()).hexdigest()
    assert meta["fingerprint"] == metrics["config"]["fingerprint"]
    assert not list(path.parent.glob("*.tmp")) and not (path.parent / "checkpoint").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny finished run per registered method on the pretrained demo ViT (trained once per module)."""
    from conftest import write_vtab_task

    root = tmp_path_factory.mktemp("runs")
    task = write_vtab_task(root / "toy")
    return task, {m: (root / m, train(task, root / m, m)) for m in available_methods()}


@pytest.mark.slow
@pytest.mark.parametrize("method", available_methods())
def test_load_run_rebuilds_every_method_with_its_recorded_test_accuracy(runs, method):
    _, by_method = runs
    run_dir, metrics = by_method[method]
    loaded = load_run(run_dir)
    assert loaded.method.name == method and loaded.merged == get_method_class(method).mergeable
    assert loaded.evaluate() == metrics["metric"]["value"]
    # not the freshly initialised model: the trained head is in it
    head = loaded.model.get_classifier().weight
    with safe_open(str(run_dir / "trained.safetensors"), framework="pt") as fh:
        assert torch.equal(head, fh.get_tensor("head.weight"))


@pytest.mark.slow
@pytest.mark.parametrize("method", available_methods())
def test_export_to_timm_loads_into_plain_timm_with_the_same_outputs_or_refuses_by_name(runs, method, tmp_path):
    task, by_method = runs
    run_dir, metrics = by_method[method]
    if not get_method_class(method).mergeable:
        with pytest.raises(ExportError, match=rf"method '{method}' cannot be exported to timm .*methods that can: "
                                              rf".*\blora\b"):
            export_run(run_dir, "timm", tmp_path / "timm")
        assert not (tmp_path / "timm").exists()
        return
    path = export_run(run_dir, "timm", tmp_path / "timm")
    model = timm.create_model(ARCH, checkpoint_path=str(path), num_classes=3).eval()
    assert type(model) is timm.models.VisionTransformer
    ours = load_run(run_dir, merge=False)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(images), ours.predict(images), atol=1e-5, rtol=0)
    loaded = load_run(run_dir)
    loaded.model = model
    assert loaded.evaluate() == metrics["metric"]["value"]


def test_timm_export_lists_every_mergeable_method():
    assert exportable_methods("timm") == sorted(m for m in available_methods() if get_method_class(m).mergeable)
    assert {"lora", "bitfit", "ssf", "linear"} <= set(exportable_methods("timm"))
    assert "adapter" not in exportable_methods("timm")


def peft_model_on_demo_backbone(adapter_dir: Path):
    """What the README tells a user to do: the plain timm backbone + peft."""
    from peft import PeftModel

    base = timm.create_model(ARCH, checkpoint_path=str(ASSET), num_classes=0)
    base.reset_classifier(3)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


@pytest.mark.parametrize("hparams", [{"rank": 2, "alpha": 4.0}, {"rank": 3, "alpha": 1.5, "targets": ("q", "k", "v")},
                                     {"rank": 2, "targets": ("v",), "target_modules": r"blocks\.[13]\.attn\.qkv$"}])
def test_export_to_peft_loads_with_peft_and_gives_our_outputs(vtab_task, tmp_path, hparams, capsys):
    metrics = train(vtab_task, tmp_path / "run", "lora", hparams)
    assert cli.main(["export", str(tmp_path / "run"), "--to", "peft", "--out", str(tmp_path / "adapter")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    targets = len(hparams.get("targets", ("q", "v")))
    assert config["peft_type"] == "LORA" and config["r"] == targets * hparams["rank"]
    assert config["modules_to_save"] == ["head"]

    peft_model = peft_model_on_demo_backbone(tmp_path / "adapter")
    layers = [n for n, m in peft_model.named_modules() if type(m).__module__.startswith("peft.tuners.lora")
              and n.endswith("qkv")]
    assert len(layers) == len(metrics["matched_modules"])
    ours = load_run(tmp_path / "run", merge=False)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine = peft_model(images), ours.predict(images)
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)
    assert mine.abs().max() > 1e-3  # not a trivially zero output
    ours.model = peft_model
    assert ours.evaluate() == metrics["metric"]["value"]


def test_export_to_peft_refuses_other_methods_by_name(runs, tmp_path):
    _, by_method = runs
    with pytest.raises(ExportError, match=r"method 'adapter' cannot be exported to peft .*methods that can: lora"):
        export_run(by_method["adapter"][0], "peft", tmp_path / "out")
    with pytest.raises(SystemExit, match="method 'ssf' cannot be exported to peft"):
        cli.main(["export", str(by_method["ssf"][0]), "--to", "peft", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_load_run_refuses_a_changed_backbone_checkpoint_and_a_run_without_tensors(vtab_task, tmp_path):
    checkpoint = tmp_path / "backbone.safetensors"
    shutil.copy(ASSET, checkpoint)
    train(vtab_task, tmp_path / "run", "bitfit", checkpoint=checkpoint)
    assert load_run(tmp_path / "run").method.name == "bitfit"
    other = tmp_path / "other"
    train(vtab_task, other, "bitfit", seed=4)  # same file contents are fine; different bytes are not
    shutil.copy(other / "trained.safetensors", tmp_path / "stale.safetensors")

    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoint))
    state["cls_token"] = state["cls_token"] + 1.0
    save_file(state, str(checkpoint))
    with pytest.raises(BackboneError, match="the run was trained on"):
        load_run(tmp_path / "run")

    # trained tensors of other settings than the metrics.json beside them
    shutil.copy(tmp_path / "stale.safetensors", tmp_path / "run/trained.safetensors")
    with pytest.raises(ArtifactError, match="other settings"):
        load_run(tmp_path / "run")
    (tmp_path / "run/trained.safetensors").unlink()
    with pytest.raises(ArtifactError, match="no trained tensors"):
        load_run(tmp_path / "run")


def test_random_init_backbone_is_rebuilt_from_the_seed(vtab_task, tmp_path, capsys):
    metrics = train(vtab_task, tmp_path / "run", "adapter", checkpoint=None)
    with safe_open(str(tmp_path / "run/trained.safetensors"), framework="pt") as fh:
        meta = {k: json.loads(v) for k, v in fh.metadata().items()}
    assert meta["pretrained"] is False and meta["backbone_sha256"] is None
    assert cli.main(["evaluate", str(tmp_path / "run")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["top1"] == printed["recorded"] == metrics["metric"]["value"]
    assert printed["method"] == "adapter" and printed["split"] == "test"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("name", ["trained.safetensors", "metrics.json"])
def test_a_damaged_run_file_is_one_line_naming_it_in_load_run_evaluate_export_and_the_report(
        vtab_task, tmp_path, capsys, name, damage):
    from vpeft.io import DamagedFileError
    from vpeft.report.summary import summarize_method
    from vpeft.report.tables import load_runs

    run = tmp_path / "results/toy-suite/lora/toy/seed-3"
    train(vtab_task, run, "lora")
    path = run / name
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00\xff" * 40}[damage])

    with pytest.raises(ArtifactError) as caught:
        load_run(run)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) - len(str(path)) < 250, message
    for command in (["evaluate", str(run)], ["export", str(run), "--to", "timm" if name == "metrics.json" else "peft",
                                                 "--out", str(tmp_path / "out")]):
        with pytest.raises(SystemExit) as stopped:
            cli.main(command)
        assert str(stopped.value).startswith(f"error: {path}: ") and "\n" not in str(stopped.value), stopped.value
    if name == "metrics.json":
        row = load_runs([path]).iloc[0]
        assert row["status"] == "failed" and row["error"].startswith(f"{path}: unreadable"), row["error"]
        with pytest.raises(DamagedFileError, match=f"^{path}: (empty file|damaged or truncated JSON|not UTF-8)"):
            summarize_method([path], "toy-suite", "lora")
