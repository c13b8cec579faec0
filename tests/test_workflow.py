"""The Snakemake workflow itself: lint, a tiny end-to-end run in a temporary folder, and the errors a
user meets on bad targets or missing real data."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.configs import smoke_config, write_config
from helpers.plan import expected_jobs
from helpers.report import read_report
from helpers.snake import ROOT, SNAKEMAKE, job_counts, run_workflow

from vpeft.backbones import sha256_of
from vpeft.config import deep_merge, load_yaml

pytestmark = pytest.mark.slow


def snakemake(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_workflow(tmp_path, smoke_config(tmp_path), *args, check=check)


def assert_all_runs_shown_ok(report: Path, suite: str, methods, tasks) -> None:
    """Every (method, task) cell of `suite` holds a number (no missing / failed class), the list of
    missing / failed runs is empty and the header counts every run as succeeded."""
    shown = read_report(report)[suite]
    for method in methods:
        for task in tasks:
            cell = shown.cell(method, task)
            assert not cell.classes & {"missing", "failed"} and float(cell.text) >= 0, (method, task, cell)
    assert shown.failures() == []
    n = len(methods) * len(tasks)
    assert f"{n} of {n} runs succeeded" in shown.meta


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr  # the lint's own all-clear line


def test_shipped_default_target_is_planned_as_shipped(tmp_path):
    """`snakemake -n` in a fresh checkout (the project's files linked into an empty folder, no result
    yet), with the shipped config/config.yaml untouched: the jobs `make benchmark` runs, per rule, counted
    from the config."""
    for part in ("Snakefile", "workflow", "config", "assets", "src"):
        (tmp_path / part).symlink_to(ROOT / part)
    dry = run_workflow(tmp_path, None, "-n")
    config = load_yaml(ROOT / "config/config.yaml")
    assert job_counts(dry.stdout) == expected_jobs(config), dry.stdout[-3000:]


def test_end_to_end_default_run_builds_the_report(smoke_run):
    assert_all_runs_shown_ok(smoke_run / "reports/index.html", "vtab-mini", ("linear", "lora"),
                             ("digits", "dsprites_loc"))
    # the random-init control is a row of vtab-mini's table (and a sentence), not a section of its own
    report = read_report(smoke_run / "reports/index.html")
    assert "vtab-mini-scratch" not in report
    for task in ("digits", "dsprites_loc"):
        cell = report["vtab-mini"].cell("control", task)
        assert not cell.classes & {"missing", "failed", "best"} and float(cell.text) >= 0
    assert re.search(r"linear, mean top-1 accuracy with vit-demo .* with vit-demo-random .*points\.",
                     " ".join(report["vtab-mini"].meta.split()) + (smoke_run / "reports/index.html").read_text())
    header = (smoke_run / "results/vtab-mini/table.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "method" and {"digits", "dsprites_loc", "ppt"} <= set(header)
    run = json.loads((smoke_run / "results/vtab-mini/lora/digits/seed-42/metrics.json").read_text())
    assert run["status"] == "ok" and run["config"]["training"]["epochs"] == 1
    assert (smoke_run / "logs/train/vtab-mini/lora/digits/seed-42.log").read_text().count("epoch 1/1") == 1

    # Adding a run does not re-run the others: a new seed trains only the new runs.
    config = yaml.safe_load((smoke_run / "smoke.yaml").read_text())
    config["seeds"] = [42, 43]
    dry = run_workflow(smoke_run, write_config(config, smoke_run.parent / "two-seeds.yaml"), "-n")
    counts = job_counts(dry.stdout)
    assert counts["train_run"] == 6, dry.stdout[-2000:]  # (2 methods x 2 tasks) + scratch linear x 2
    assert not {"generate_embedded_task", "check_task_data"} & set(counts), counts


def test_method_folder_target(tmp_path):
    result = snakemake(tmp_path, "--cores", "2", "results/vtab-mini/linear/")
    summary = json.loads((tmp_path / "results/vtab-mini/linear/summary.json").read_text())
    assert set(summary["tasks"]) == {"digits", "dsprites_loc"}
    assert summary["trainable_params"] == 0 and summary["metric"] == "top1"
    assert not (tmp_path / "results/vtab-mini/lora").exists(), result.stdout


@pytest.mark.parametrize("target, message", [
    ("results/vtab-mini/loraa/", "unknown method 'loraa' for suite 'vtab-mini' (did you mean 'lora'?); valid methods: "
                                 "linear, lora"),
    ("results/vtab-mini/hydra/", "method 'hydra' is not one of suite 'vtab-mini''s methods: add it to "
                                 "suites.vtab-mini.methods in config/config.yaml"),
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
    counts = job_counts(dry.stdout)
    n_tasks = len(yaml.safe_load((ROOT / "config/config.yaml").read_text())["suites"]["vtab"]["tasks"])
    assert counts["check_task_data"] == counts["train_run"] == n_tasks and counts["download_backbone"] == 1
    run = snakemake(tmp_path, "--cores", "1", "--keep-going", "results/vtab/lora/", check=False)
    assert run.returncode != 0
    # each message in the log of the job that stopped: the data archive's and the backbone's download
    [archive_log] = (tmp_path / "logs/data/download/vtab").glob("*.log")
    assert "Put an extracted VTAB-1k copy" in archive_log.read_text()
    [download_log] = (tmp_path / "logs").rglob("*ViT-B_16.npz*.log")
    assert "place it at" in download_log.read_text() and "ViT-B_16.npz" in download_log.read_text()
    assert not list((tmp_path / "results/vtab").rglob("metrics.json"))


def test_shipped_demo_checkpoint_matches_its_record():
    record = json.loads((ROOT / "assets/vit_demo_patch4_32.fractal.safetensors.json").read_text())
    from vpeft.backbones import sha256_of

    assert sha256_of(ROOT / "assets/vit_demo_patch4_32.fractal.safetensors") == record["sha256"]
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    assert config["backbones"]["vit-demo"]["sha256"] == record["sha256"]


def test_keep_going_still_builds_a_report_that_shows_the_failure(copy_smoke_run):
    work = copy_smoke_run
    config = yaml.safe_load((work / "smoke.yaml").read_text())
    # lora has no suite-level lr of its own, so this task-level lr reaches it and blows the loss up
    config["suites"]["vtab-mini"]["tasks"]["dsprites_loc"]["training"] = {"lr": 1e30, "epochs": 2}
    result = run_workflow(work, write_config(config, work / "broken.yaml"), "--cores", "2", "--keep-going",
                          check=False)
    assert result.returncode != 0
    assert job_counts(result.stdout + result.stderr)["train_run"] == 1  # only the changed run
    shown = read_report(work / "reports/index.html")["vtab-mini"]
    cell = shown.cell("lora", "dsprites_loc")
    assert cell.text == "failed" and "failed" in cell.classes and "TrainingError: loss is" in cell.title
    assert not shown.cell("lora", "digits").classes & {"failed", "missing"}
    assert not shown.cell("linear", "dsprites_loc").classes & {"failed", "missing"}
    [entry] = shown.failures()
    assert (entry["method"], entry["task"], entry["seed"]) == ("lora", "dsprites_loc", "42")
    assert entry["status"] == entry["status_class"] == "failed" and "TrainingError: loss is" in entry["reason"]
    assert "3 of 4 runs succeeded" in shown.meta
    assert json.loads((work / "results/vtab-mini/lora/digits/seed-42/metrics.json").read_text())["status"] == "ok"
    assert not (work / "results/vtab-mini/lora/dsprites_loc/seed-42/metrics.json").exists()

    # Fix the cause and run the plain command again: the failed run trains now (it is not "nothing to
    # be done" because a report exists) and the rebuilt report shows no failure.
    del config["suites"]["vtab-mini"]["tasks"]["dsprites_loc"]["training"]
    rerun = run_workflow(work, write_config(config, work / "fixed.yaml"), "--cores", "2")
    assert job_counts(rerun.stdout + rerun.stderr)["train_run"] == 1
    assert json.loads((work / "results/vtab-mini/lora/dsprites_loc/seed-42/metrics.json").read_text())[
        "status"] == "ok"
    assert_all_runs_shown_ok(work / "reports/index.html", "vtab-mini", ("linear", "lora"), ("digits", "dsprites_loc"))


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

from .base import MethodConfig, MethodLayer, PeftMethod, variant, wrap_modules
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
    provenance = variant("a toy method of the test suite, verified by nothing")

    def inject(self, model):
        return wrap_modules(model, r"^norm$", ToyScale, method=self.name)
'''


def test_adding_a_method_is_one_module_plus_one_yaml_and_retrains_nothing_else(tmp_path, smoke_run):
    """The README's recipe ("Add a method"), literally, on a checkout that ran the default target: add a
    module and a YAML, list the name in the suite's `methods`, run the default target again: only the new
    method's runs train, the report shows its row, and the next plain run keeps it there and trains
    nothing. (The first run starts from the smoke pipeline's finished runs, so it trains nothing.)"""
    project = tmp_path / "project"
    project.mkdir()
    for part in ("resources", "results", "logs", "reports", ".snakemake"):
        shutil.copytree(smoke_run / part, project / part, symlinks=True)
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
    for suite in config["suites"].values():  # other suites' method lists name modules deleted above
        if isinstance(suite.get("methods"), list):
            suite["methods"] = [m for m in suite["methods"] if m in ("linear", "lora")] or ["linear"]
    (project / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "--cores", "2"]

    first = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900, check=False)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "train_run" not in job_counts(first.stdout + first.stderr)
    assert_all_runs_shown_ok(project / "reports/index.html", "vtab-mini", ("linear", "lora"),
                             ("digits", "dsprites_loc"))
    with pytest.raises(AssertionError, match="0 rows"):
        read_report(project / "reports/index.html")["vtab-mini"].cell("toy-scale", "digits")

    (methods_dir / "toy_scale.py").write_text(TOY_METHOD)
    (project / "config/methods/toy-scale.yaml").write_text("# toy\nhparams: {}\ntraining: {}\n")
    config["suites"]["vtab-mini"]["methods"] = [*config["suites"]["vtab-mini"]["methods"], "toy-scale"]
    (project / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    second = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900, check=False)
    assert second.returncode == 0, second.stderr[-4000:]
    jobs = job_counts(second.stdout + second.stderr)
    assert jobs == {"train_run": 2, "suite_table": 1, "report": 1, "all": 1}, jobs
    assert_all_runs_shown_ok(project / "reports/index.html", "vtab-mini", ("linear", "lora", "toy-scale"),
                             ("digits", "dsprites_loc"))
    assert json.loads((project / "results/vtab-mini/toy-scale/digits/seed-42/metrics.json").read_text())[
        "status"] == "ok"
    third = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900, check=False)
    assert third.returncode == 0 and "Nothing to be done" in third.stdout + third.stderr, third.stderr[-3000:]
    assert_all_runs_shown_ok(project / "reports/index.html", "vtab-mini", ("linear", "lora", "toy-scale"),
                             ("digits", "dsprites_loc"))


def test_selection_and_search_stages_run_before_their_methods(tmp_path):
    """select_parameters (SCT) and NOAH's noah_supernet -> noah_search run end to end on one tiny task,
    and their results reach the runs that read them."""
    config = yaml.safe_load(smoke_config(tmp_path).read_text())
    mini = config["suites"]["vtab-mini"]
    mini.update(methods=["sct", "noah"], tasks={"digits": mini["tasks"]["digits"]})
    config["default_suites"] = ["vtab-mini"]
    result = run_workflow(tmp_path, write_config(config, tmp_path / "stages.yaml"), "--cores", "2")
    assert job_counts(result.stdout + result.stderr) == {
        "generate_embedded_task": 1, "check_task_data": 1, "select_parameters": 1, "noah_supernet": 1,
        "noah_search": 1, "train_run": 2, "suite_table": 1, "report": 1, "all": 1}
    folder = tmp_path / "results/vtab-mini"
    sct = json.loads((folder / "sct/digits/seed-42/metrics.json").read_text())
    assert sct["status"] == "ok" and sct["config"]["selection_sha256"] == sha256_of(
        folder / "sct/digits/seed-42/selection.safetensors")
    subnet = json.loads((folder / "noah/digits/seed-42/search/subnet.json").read_text())
    noah = json.loads((folder / "noah/digits/seed-42/metrics.json").read_text())
    assert noah["status"] == "ok"
    for key, dims in subnet["hparams"].items():  # the searched subnet is the one the final run trained
        assert noah["config"]["method_hparams"][key] == dims, key
    search = json.loads((folder / "noah/digits/seed-42/search/search.json").read_text())
    assert search["status"] == "ok" and search["protocol"]["eval_split"] == "val200"  # never the test split
    assert search["best"]["subnet"] == {k: v for k, v in subnet["hparams"].items() if k != "mode"}
    assert search["best"]["params"] == subnet["params"] <= search["settings"]["param_budget"]
    assert_all_runs_shown_ok(tmp_path / "reports/index.html", "vtab-mini", ("sct", "noah"), ("digits",))


def test_readme_multi_process_config_on_the_command_line_is_accepted_and_report_inputs_are_relative(tmp_path):
    """README: `--config distributed='{processes: 2, backend: gloo}'` (Snakemake passes the nested values
    as strings: '2'); the report's inputs, the speed record included, are relative paths."""
    for part in ("Snakefile", "workflow", "config", "assets", "src", "bench"):
        (tmp_path / part).symlink_to(ROOT / part)
    # the checkout's own Snakefile (its link), run from the checkout, with Snakemake's per-job blocks shown
    dry = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", "Snakefile", "-n", "--workflow-profile",
                          "none", "--config", "distributed={processes: 2, backend: gloo}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-3000:]
    report = dry.stdout[dry.stdout.index("rule report:"):]
    inputs = next(line for line in report.splitlines() if line.strip().startswith("input:"))
    names = inputs.split(":", 1)[1].split(", ")
    assert "bench/results/latest.json" in [n.strip() for n in names], inputs[-300:]
    assert not [n for n in names if n.strip().startswith("/")], inputs[-300:]


def test_a_protocol_that_trains_on_its_evaluation_split_is_refused_when_the_workflow_loads(tmp_path):
    config = yaml.safe_load(smoke_config(tmp_path).read_text())
    config["protocols"]["vtab1k"]["train_split"] = "test"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = run_workflow(tmp_path, bad, "-n", check=False)
    assert result.returncode != 0
    assert "protocols.vtab1k.train_split: 'test' holds the evaluation split 'test'" in result.stdout + result.stderr
