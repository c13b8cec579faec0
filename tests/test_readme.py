"""Every command of the README's shell blocks works literally on the README's own install (the pip venv this
test runs in): each command is classified below, the runnable ones are run (dry runs where a full run takes
too long, real ones where they are cheap or matter), and the ones that cannot run here say why. A README
command missing from the table, or a table entry no longer in the README, fails the test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.snake import job_counts

ROOT = Path(__file__).resolve().parents[1]

DRY = "dry"      # a snakemake command: run with -n in a copy of the project (shipped config)
REAL = "real"    # run as written in a copy of the project
SMOKE = "smoke"  # run as written in a copy of the session's finished smoke pipeline (needs finished runs)

#: What each README command is run as, or why it cannot run here.
COMMANDS = {
    "make benchmark": "installs into .venv and runs the whole default benchmark (~15 min); its parts are the "
                      "pip install this test runs in and `snakemake --cores all` (dry run below; the default run's "
                      "console: tests/test_console.py)",
    "make test": "runs this test suite itself",
    "snakemake --cores all": DRY,
    "snakemake --cores all results/vtab-mini/adapter/": DRY,
    "vpeft methods": REAL,
    "vpeft count lora --backbone vit_base_patch16_224": REAL,
    "python -m vpeft --help": REAL,
    "snakemake --cores all results/vtab-mini/lora/": SMOKE,
    "snakemake -n results/vtab/lora/": REAL,
    "snakemake --cores all results/vtab/lora/": "needs VTAB-1k (4.7 GB) and ViT-B/16's checkpoint; without them it "
                                                "fails saying where to put them, checked by tests/test_console.py::"
                                                "test_a_run_without_its_data_says_on_the_console_what_to_do",
    "vpeft plan": REAL,
    "snakemake --profile slurm -n": REAL,
    "snakemake --profile slurm": "submits to a SLURM cluster; tests/test_slurm.py runs the profile on a local one",
    "R=results/vtab-mini/lora/digits/seed-42": SMOKE,
    "vpeft evaluate $R": SMOKE,
    "vpeft export $R --to peft": SMOKE,
    "vpeft export $R --to timm": SMOKE,
    "snakemake --cores all tune_demo": DRY,
    "snakemake -n --configfile my.yaml": "plans the user's folder /data/my-images; run with the README's my.yaml "
                                         "pointed at a generated folder by tests/test_owndata.py::"
                                         "test_readme_minimal_form_is_planned_with_the_real_backbone",
    "snakemake --cores all --configfile my.yaml": "needs the user's folder and ViT-B/16's checkpoint; the same suite "
                                                  "form on the demo backbone runs end to end in tests/test_owndata.py"
                                                  "::test_own_folder_and_csv_run_end_to_end_through_snakemake",
    "vpeft plan --configfile config/config.yaml my.yaml --suite mydata": "reads the user's folder; run with the "
                                                                        "README's my.yaml by tests/test_owndata.py::"
                                                                        "test_readme_minimal_form_is_planned_with_the_real_backbone",
    "snakemake --cores all protocols_demo": DRY,
    "snakemake --cores all reports/protocols/fgvc-fewshot.html": DRY,
    "snakemake --cores all reports/protocols/imagenet-16shot.html": DRY,
    "vpeft plan --suite fgvc-fewshot --suite imagenet-16shot": REAL,
    "snakemake --cores all results/vtab/lora/ --config 'suites={vtab: {tuning: optuna}}'": DRY,
}

#: What a dry run must plan (rule -> at least this many jobs), where the README says what the command does.
PLANS = {
    "snakemake --cores all": {"train_run": 1, "train_dense_run": 1, "report": 1},
    "snakemake --cores all results/vtab-mini/adapter/": {"train_run": 6, "method_summary": 1},
    "snakemake --cores all tune_demo": {"tune_method": 18, "tuning_report": 1},
    "snakemake --cores all results/vtab/lora/ --config 'suites={vtab: {tuning: optuna}}'": {"tune_method": 19},
}


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)


def commands(block: str) -> list[str]:
    """The commands of a shell block: comments stripped, continuation lines joined."""
    out, pending = [], ""
    for raw in block.splitlines():
        line = re.sub(r"(^|\s+)#\s.*$", "", raw).rstrip()  # a `#` after whitespace starts a comment
        if not line.strip():
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        out.append(pending)
        pending = ""
    return out


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [c for lang, body in readme_blocks(text) if lang == "bash" for c in commands(body)]


def test_every_readme_command_is_classified():
    found = readme_commands()
    assert found, "no shell blocks found in README.md"
    assert set(found) == set(COMMANDS), (f"not classified: {sorted(set(found) - set(COMMANDS))}; "
                                         f"no longer in the README: {sorted(set(COMMANDS) - set(found))}")
    for command, how in COMMANDS.items():
        assert how in (DRY, REAL, SMOKE) or len(how) > 20, f"{command}: say why it cannot run here"


def project_copy(folder: Path) -> Path:
    """The checkout as a user has it (without results), in `folder`."""
    folder.mkdir()
    for part in ("Snakefile", "workflow", "config", "src", "profiles", "assets", "envs", "pyproject.toml", "tools"):
        (folder / part).symlink_to(ROOT / part)
    (folder / "slurm").symlink_to("profiles/slurm")
    return folder


def shell(script: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`script` in bash with the venv's commands first on PATH (the README's `source .venv/bin/activate`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def as_dry_run(command: str) -> str:
    assert command.startswith("snakemake "), command
    return command.replace("snakemake ", "snakemake -n ", 1)


@pytest.mark.slow
def test_readme_commands_run_in_a_fresh_checkout(tmp_path):
    project = project_copy(tmp_path / "project")
    for command, how in COMMANDS.items():
        if how not in (DRY, REAL):
            continue
        result = shell(as_dry_run(command) if how == DRY else command, project)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"README command failed: {command}\n{output[-4000:]}"
        for rule, at_least in PLANS.get(command, {}).items():
            assert job_counts(output).get(rule, 0) >= at_least, f"{command}: {rule} not planned\n{output[-3000:]}"


@pytest.mark.slow
def test_readme_commands_that_need_finished_runs(tmp_path, smoke_run):
    """The one-method target, the export block and the peft snippet, on a checkout that ran its runs."""
    project = tmp_path / "smoke"
    shutil.copytree(smoke_run, project, symlinks=True)
    for part in ("Snakefile", "workflow", "config", "src", "profiles", "assets", "envs"):
        if not (project / part).exists():
            (project / part).symlink_to(ROOT / part)
    config = next(project.glob("smoke*.yaml"))  # the smoke pipeline's config stands in for config/config.yaml
    block = [c for c, how in COMMANDS.items() if how == SMOKE]
    script = "\n".join(c.replace("snakemake ", f"snakemake --configfile {config} ", 1) for c in block)
    result = shell(script, project)
    assert result.returncode == 0, f"{script}\n{(result.stdout + result.stderr)[-4000:]}"
    run = project / "results/vtab-mini/lora/digits/seed-42"
    assert (project / "results/vtab-mini/lora/summary.json").is_file()
    assert (run / "peft/adapter_model.safetensors").is_file() and (run / "timm/model.safetensors").is_file()

    python = [body for lang, body in readme_blocks((ROOT / "README.md").read_text()) if lang == "python"]
    assert len(python) == 1
    result = subprocess.run([sys.executable, "-c", python[0] + "\nprint(type(model).__name__)"], cwd=project,
                            capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0 and "PeftModel" in result.stdout, result.stderr[-3000:]
