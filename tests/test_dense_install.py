"""tools/install_dense.sh: the mmcv C++20 patch and the install plan (dry run; the real source build
takes ~14 minutes and is not run by the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "install_dense.sh"


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_patch_turns_cxx17_into_cxx20_and_is_idempotent(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text("args = ['-std=c++14']\nargs = ['-std=c++17']\nwin = ['/std:c++17']\nx = ['-Wall', '-std=c++17']\n")
    first = script("--patch-only", str(tmp_path))
    assert first.returncode == 0, first.stderr
    text = setup.read_text()
    assert "-std=c++17" not in text and text.count("-std=c++20") == 2
    assert "/std:c++17" in text and "-std=c++14" in text  # MSVC flags and older ones untouched
    again = script("--patch-only", str(tmp_path))
    assert again.returncode == 0 and "already asks for -std=c++20" in again.stderr
    assert setup.read_text() == text


def test_patch_refuses_what_it_does_not_know(tmp_path):
    assert script("--patch-only", str(tmp_path)).returncode != 0  # no setup.py
    (tmp_path / "setup.py").write_text("args = ['-std=c++14']\n")
    result = script("--patch-only", str(tmp_path))
    assert result.returncode != 0 and "no -std=c++17 flag" in result.stderr


@pytest.fixture(scope="module")
def cpu_source_plan() -> subprocess.CompletedProcess:
    """The source-build plan on this machine (no GPU, FORCE_CUDA unset): one dry run read by two tests
    (each run probes torch three times)."""
    env = {k: v for k, v in os.environ.items() if k != "FORCE_CUDA"}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--force", "--from-source", "--python", sys.executable],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def test_source_build_plan(cpu_source_plan):
    result = cpu_source_plan
    assert result.returncode == 0, result.stderr
    steps = [line.split("+ ", 1)[1] for line in result.stderr.splitlines() if "] + " in line]
    # mmcv's setup.py needs setuptools<81; `import mmcv` (the ops probe) needs mmengine: both before mmcv
    assert "setuptools<81" in steps[0] and "mmengine==0.10.7" in steps[0]
    assert "pip download" in steps[1] and "--no-binary=:all:" in steps[1] and "--no-build-isolation" in steps[1]
    assert "mmcv==2.1.0" in steps[1]
    assert steps[2].startswith("tar -xzf") and steps[3].startswith("patch_cxx_std")
    assert steps[4].startswith("env MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2") and "--no-build-isolation" in steps[4]
    assert all(p in steps[5] for p in ("mmdet==3.3.0", "mmsegmentation==1.2.2", "ftfy", "regex",
                                        "pycocotools"))


def test_wheel_plan_uses_the_wheel_folder(tmp_path):
    result = script("--dry-run", "--force", "--wheels", str(tmp_path), "--python", sys.executable)
    assert result.returncode == 0, result.stderr
    assert f"--find-links {tmp_path} --only-binary=:all: --no-deps --force-reinstall mmcv==2.1.0" in result.stderr
    assert "MMCV_WITH_OPS" not in result.stderr


@pytest.mark.parametrize("args, message", [(["--bogus"], "unknown argument"),
                                           (["--python", "/nonexistent/python"], "cannot import torch")])
def test_bad_invocations_say_why(args, message):
    result = script(*args)
    assert result.returncode != 0 and message in result.stderr


def test_source_build_without_a_gpu_says_loudly_it_is_cpu_only(cpu_source_plan):
    result = cpu_source_plan
    assert result.returncode == 0, result.stderr
    import torch
    assert not torch.cuda.is_available()  # this test describes a machine without a GPU (CI's)
    warning = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert "CPU ONLY" in warning[0] and "RoIAlign / NMS" in warning[1] and "MMCV_WHEELS" in warning[-1]
    assert "FORCE_CUDA=0" in result.stderr


def test_force_cuda_builds_the_cuda_ops():
    env = dict(os.environ, FORCE_CUDA="1")
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--force", "--from-source", "--python", sys.executable],
                            capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert "building mmcv's ops with CUDA (FORCE_CUDA=1 is set)" in result.stderr
    assert "env MMCV_WITH_OPS=1 FORCE_CUDA=1" in result.stderr and "WARNING" not in result.stderr
