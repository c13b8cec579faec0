"""The Snakemake workflow itself: lint, a tiny end-to-end run in a temporary folder, and the errors a
user meets on bad targets or missing real data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_workflow

from vpeft.config import deep_merge, load_method_configs, load_yaml, resolve_suites, suite_methods

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]

pytestmark = pytest.mark.slow


def smoke_config(tmp_path: Path) -> Path:
    """The shipped config shrunk to 2 methods x 2 tasks x 1 epoch on tiny generated data."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    mini = config["suites"]["vtab-mini"]
    mini.update(methods=["linear", "lora"], sizes={"train800": 12, "val200": 4, "test": 16},
                tasks={k: mini["tasks"][k] for k in ("digits", "dsprites_loc")})
    mini["training"].update(epochs=1, warmup_epochs=0, batch_size=8)
    for backbone in config["backbones"].values():  # shipped checkpoints, from a run in another folder
        if str(backbone.get("checkpoint") or "").startswith("assets/"):
            backbone["checkpoint"] = str(ROOT / backbone["checkpoint"])
    # the image track only: the video and dense tracks have end-to-end tests of their own
    config["default_suites"] = ["vtab-mini", "vtab-mini-scratch"]
    config["suites"]["vtab-mini-scratch"]["methods"] = ["linear"]
    config["suites"]["vtab"]["root"] = str(tmp_path / "no-vtab-here")
    config["backbones"]["vit-b16-in21k"]["url"] = "http://127.0.0.1:9/ViT-B_16.npz"  # refused at once
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_workflow(tmp_path, smoke_config(tmp_path), *args, check=check)


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_end_to_end_default_run_builds_the_report(tmp_path):
    snakemake(tmp_path, "--cores", "2")
    report = (tmp_path / "reports/index.html").read_text()
    for name in ("linear", "lora", "digits", "dsprites_loc", "PPT"):
        assert name in report
    table = (tmp_path / "results/vtab-mini/table.csv").read_text()
    assert table.splitlines()[0].startswith("method") or "digits" in table.splitlines()[0]
    run = json.loads((tmp_path / "results/vtab-mini/lora/digits/seed-42/metrics.json").read_text())
    assert run["status"] == "ok" and run["config"]["training"]["epochs"] == 1
    assert (tmp_path / "logs/train/vtab-mini/lora/digits/seed-42.log").read_text().count("epoch 1/1") == 1

    # Adding a run does not re-run the others: a new seed trains only the new runs.
    config = yaml.safe_load((tmp_path / "smoke.yaml").read_text())
    config["seeds"] = [42, 43]
    two_seeds = tmp_path / "two-seeds.yaml"
    two_seeds.write_text(yaml.safe_dump(config, sort_keys=False))
    dry = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(two_seeds), "-n"],
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    stats = dict(line.split() for line in dry.stdout.splitlines()
                 if line.split()[:1] and line.split()[0] in ("train_run", "generate_embedded_task") and len(line.split()) == 2)
    assert stats == {"train_run": "6"}, dry.stdout[-2000:]  # (2 methods x 2 tasks) + scratch linear x 2


def test_method_folder_target(tmp_path):
    result = snakemake(tmp_path, "--cores", "2", "results/vtab-mini/linear/")
    summary = json.loads((tmp_path / "results/vtab-mini/linear/summary.json").read_text())
    assert set(summary["tasks"]) == {"digits", "dsprites_loc"}
    assert summary["trainable_params"] == 0 and summary["metric"] == "top1"
    assert not (tmp_path / "results/vtab-mini/lora").exists(), result.stdout


@pytest.mark.parametrize("target, message", [
    ("results/vtab-mini/loraa/", "unknown method 'loraa' for suite 'vtab-mini'; valid methods: linear, lora"),
    ("results/vtab-mini/lora/cifar/seed-42/metrics.json", "unknown task 'cifar' in suite 'vtab-mini'; valid tasks"),
    ("results/vtab-maxi/lora/", "unknown suite 'vtab-maxi'"),
])
def test_unknown_names_in_targets_list_valid_ones(tmp_path, target, message):
    result = snakemake(tmp_path, "-n", target, check=False)
    assert result.returncode != 0 and message in result.stdout + result.stderr


def test_invalid_config_names_the_key(tmp_path):
    config = yaml.safe_load(smoke_config(tmp_path).read_text())
    config["suites"]["vtab-mini"]["training"]["epochs"] = "ten"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(bad), "-n"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "suites.vtab-mini.training.epochs" in result.stdout + result.stderr


def test_real_suite_is_planned_and_missing_data_says_where_to_put_it(tmp_path):
    dry = snakemake(tmp_path, "-n", "results/vtab/lora/")
    assert "check_task_data" in dry.stdout and "download_backbone" in dry.stdout
    run = snakemake(tmp_path, "--cores", "1", "--keep-going", "results/vtab/lora/", check=False)
    assert run.returncode != 0
    logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.log"))
    assert "Put an extracted VTAB-1k copy" in logs
    assert "place it at" in logs and "ViT-B_16.npz" in logs
    assert not list((tmp_path / "results/vtab").rglob("metrics.json"))


def test_shipped_demo_checkpoint_matches_its_record():
    record = json.loads((ROOT / "assets/vit_demo_patch4_32.fractal.safetensors.json").read_text())
    from vpeft.backbones import sha256_of

    assert sha256_of(ROOT / "assets/vit_demo_patch4_32.fractal.safetensors") == record["sha256"]
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    assert config["backbones"]["vit-demo"]["sha256"] == record["sha256"]


def test_keep_going_still_builds_a_report_that_shows_the_failure(tmp_path):
    config = yaml.safe_load(smoke_config(tmp_path).read_text())
    config["suites"]["vtab-mini"]["training"]["warmup_epochs"] = 0
    # lora has no suite-level lr of its own, so this task-level lr reaches it and blows the loss up
    config["suites"]["vtab-mini"]["tasks"]["dsprites_loc"]["training"] = {"lr": 1e30, "epochs": 2}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(broken),
                             "--cores", "2", "--keep-going"], capture_output=True, text=True, timeout=900)
    assert result.returncode != 0
    report = (tmp_path / "reports/index.html").read_text()
    assert "failed" in report and "TrainingError: loss is" in report
    assert json.loads((tmp_path / "results/vtab-mini/lora/digits/seed-42/metrics.json").read_text())["status"] == "ok"
    assert not (tmp_path / "results/vtab-mini/lora/dsprites_loc/seed-42/metrics.json").exists()

    # Fix the cause and run the plain command again: the failed run trains now (it is not "nothing to
    # be done" because a report exists) and the rebuilt report shows no failure.
    del config["suites"]["vtab-mini"]["tasks"]["dsprites_loc"]["training"]
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump(config, sort_keys=False))
    rerun = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(fixed), "--cores", "2"],
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert job_counts(rerun.stdout + rerun.stderr).get("train_run", 0) >= 1
    assert json.loads((tmp_path / "results/vtab-mini/lora/dsprites_loc/seed-42/metrics.json").read_text())[
        "status"] == "ok"
    assert "TrainingError" not in (tmp_path / "reports/index.html").read_text()


def test_snakemake_job_killed_mid_run_resumes_on_rerun(tmp_path):
    """SIGKILL the whole Snakemake process group mid-training; the same command resumes the run from
    its last complete epoch (the checkpoint folder is not a declared output, so it survives) and
    ends with the metrics of an uninterrupted run."""
    import os
    import signal
    import time

    target = "results/vtab-mini/lora/digits/seed-42/metrics.json"

    def configure(folder: Path) -> Path:
        folder.mkdir()
        config = yaml.safe_load(smoke_config(folder).read_text())
        config["suites"]["vtab-mini"]["training"].update(epochs=60, warmup_epochs=0)
        path = folder / "long.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def command(folder: Path, config: Path) -> list[str]:
        return [*SNAKEMAKE, "--directory", str(folder), "--configfile", str(config), "--cores", "1", target]

    reference_dir = tmp_path / "reference"
    ref_config = configure(reference_dir)
    subprocess.run(command(reference_dir, ref_config), check=True, capture_output=True, timeout=900)
    reference = json.loads((reference_dir / target).read_text())

    work = tmp_path / "killed"
    config = configure(work)
    state = work / target.replace("metrics.json", "checkpoint/state.pt")
    proc = subprocess.Popen(command(work, config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.1)  # let an epoch or two more pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (work / target).exists(), "the run finished before it could be killed"

    # Snakemake itself was killed too, so its lock stays: the documented recovery is --unlock first.
    subprocess.run([*command(work, config), "--unlock"], check=True, capture_output=True, timeout=300)
    rerun = subprocess.run([*command(work, config), "--rerun-incomplete"], capture_output=True, text=True,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = json.loads((work / target).read_text())
    assert resumed["train"]["resumed_from_epoch"] >= 1
    assert "resuming from the checkpoint of epoch" in (work / "logs/train/vtab-mini/lora/digits/seed-42.log").read_text()
    assert resumed["metric"] == reference["metric"]
    assert [h["loss"] for h in resumed["train"]["history"]] == [h["loss"] for h in reference["train"]["history"]]


TOY_METHOD = '''"""Toy method for the "adding a method" test: a learnable per-channel scale on the final norm."""

from dataclasses import dataclass

import torch
from torch import nn

from .base import MethodConfig, MethodLayer, PeftMethod, wrap_modules
from .registry import register_method


@dataclass
class ToyScaleConfig(MethodConfig):
    """No hyper-parameters."""


class ToyScale(MethodLayer):
    def __init__(self, base_layer):
        super().__init__()
        self.base_layer = base_layer
        self.scale = nn.Parameter(torch.ones(base_layer.normalized_shape[0]))

    def forward(self, x):
        return self.base_layer(x) * self.scale


@register_method
class ToyScaleMethod(PeftMethod):
    name = "toy-scale"
    category = "reparameterization"
    config_cls = ToyScaleConfig
    paper = "toy method of the test suite, 2026"

    def inject(self, model):
        return wrap_modules(model, r"^norm$", ToyScale, method=self.name)
'''


def job_counts(stdout: str) -> dict[str, int]:
    """Snakemake's job-stats table as {rule: count}."""
    return {parts[0]: int(parts[1]) for parts in (line.split() for line in stdout.splitlines())
            if len(parts) == 2 and parts[1].isdigit() and re.fullmatch(r"[a-z_]+", parts[0])
            and parts[0] != "total"}


def test_adding_a_method_is_one_module_plus_one_yaml_and_retrains_nothing_else(tmp_path):
    """The README's recipe, literally: copy the project, keep two methods, run; add a module and a YAML,
    run the same command again: only the new method's runs train, and the report shows its row."""
    project = tmp_path / "project"
    project.mkdir()
    for part in ("Snakefile", "workflow", "config", "src", "envs"):
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, project / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / part)
    methods_dir = project / "src/vpeft/methods"
    for module in methods_dir.glob("*.py"):
        if module.stem not in ("__init__", "_discover", "base", "registry", "linear", "lora"):
            module.unlink()
    for yaml_file in (project / "config/methods").glob("*.yaml"):
        if yaml_file.stem not in ("linear", "lora"):
            yaml_file.unlink()
    config = yaml.safe_load(smoke_config(tmp_path).read_text())
    config["suites"]["vtab-mini"]["methods"] = "all"
    for suite in config["suites"].values():  # other suites' method lists name modules deleted above
        if isinstance(suite.get("methods"), list):
            suite["methods"] = [m for m in suite["methods"] if m in ("linear", "lora")] or ["linear"]
    (project / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "--cores", "2"]

    first = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "toy-scale" not in (project / "reports/index.html").read_text()

    (methods_dir / "toy_scale.py").write_text(TOY_METHOD)
    (project / "config/methods/toy-scale.yaml").write_text("# toy\nhparams: {}\ntraining: {}\n")
    second = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    jobs = job_counts(second.stdout + second.stderr)
    assert jobs == {"train_run": 2, "suite_table": 1, "report": 1, "all": 1}, jobs
    report = (project / "reports/index.html").read_text()
    assert "toy-scale" in report
    assert json.loads((project / "results/vtab-mini/toy-scale/digits/seed-42/metrics.json").read_text())[
        "status"] == "ok"
