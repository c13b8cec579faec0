"""The conda envs (`--use-conda`; no conda on CI) agree with pyproject.toml: same packages, and the
dense env adds the OpenMMLab stack and builds mmcv through the project's installer."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def _pip_requirements(env_file: str) -> dict[str, str]:
    env = yaml.safe_load((ROOT / "envs" / env_file).read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {_name(r): r for r in pip}


def test_vpeft_env_installs_every_runtime_dependency_of_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = _pip_requirements("vpeft.yaml")
    wanted = {_name(r) for r in project["dependencies"]} - {"snakemake", "snakemake-executor-plugin-slurm"}
    assert wanted <= set(env), f"missing from envs/vpeft.yaml: {sorted(wanted - set(env))}"
    for name in ("torch", "torchvision", "timm", "decord", "av"):  # exact pins must agree
        pinned = next(r for r in project["dependencies"] if _name(r) == name)
        if "==" in pinned:
            assert env[name].replace(" ", "") == pinned.split(";")[0].replace(" ", ""), name


def test_dense_env_is_the_vpeft_env_plus_the_openmmlab_stack():
    base, dense = _pip_requirements("vpeft.yaml"), _pip_requirements("dense.yaml")
    assert all(dense.get(k) == v for k, v in base.items()), "envs/dense.yaml must repeat envs/vpeft.yaml's pins"
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dense"]
    assert {_name(r) for r in extra} <= set(dense)
    assert dense["mmdet"] == "mmdet==3.3.0" and dense["mmsegmentation"] == "mmsegmentation==1.2.2"
    assert "mmcv" not in dense  # no usable wheel on PyPI: the post-deploy script builds or finds it
    post_deploy = (ROOT / "envs" / "dense.post-deploy.sh").read_text()
    assert "tools/install_dense.sh" in post_deploy and (ROOT / "tools" / "install_dense.sh").exists()


def test_dense_rules_use_the_dense_env():
    rules = (ROOT / "workflow" / "rules" / "dense.smk").read_text()
    for rule in ("train_dense_run", "check_dense_task"):
        body = rules.split(f"rule {rule}:", 1)[1].split("\nrule ", 1)[0]
        assert "DENSE_ENV" in body, rule


def test_each_env_installs_the_package_itself_after_its_dependencies():
    """`--use-conda` envs get vpeft (and its `vpeft` command) from their post-deploy scripts, run by Snakemake
    from the project folder; the envs' own pip lists hold only the dependencies."""
    for env in ("vpeft", "dense"):
        script = (ROOT / "envs" / f"{env}.post-deploy.sh").read_text()
        assert re.search(r"^python -m pip install .*--no-deps -e \.$", script, re.M), env
        assert "vpeft" not in _pip_requirements(f"{env}.yaml")
