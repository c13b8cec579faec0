"""Shared fixtures: small task folders in the VTAB-1k layout, written by hand (independent of the
generator, so loader tests do not depend on it). The rest of the shared code is in tests/helpers;
`run_workflow` is re-exported here for modules that import it from conftest."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers.snake import ROOT, SNAKEMAKE, job_counts, run_workflow  # noqa: F401  (re-exported)
from PIL import Image

pytest_plugins = ["pytester"]  # tests/test_test_suite.py runs pytest on small test files

SPLIT_SIZES = {"train800": 12, "val200": 4, "test": 10}


def write_vtab_task(root: Path, num_classes: int = 3, sizes=SPLIT_SIZES, image_size: int = 32, seed: int = 0) -> Path:
    """Images whose mean brightness encodes the label, so a model can learn them quickly."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {}
    for split, n in sizes.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i in range(n):
            label = i % num_classes
            level = 40 + 80 * label
            pixels = np.clip(rng.normal(level, 20, (image_size, image_size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"{i:06d}.png")
            lines[split].append(f"images/{split}/{i:06d}.png {label}")
    combined_dir = root / "images" / "train800val200"
    combined_dir.mkdir(parents=True, exist_ok=True)
    combined = []
    for split in ("train800", "val200"):
        for line in lines[split]:
            rel, label = line.split()
            new = f"images/train800val200/{len(combined):06d}.png"
            (root / new).write_bytes((root / rel).read_bytes())
            combined.append(f"{new} {label}")
    lines["train800val200"] = combined
    for split, split_lines in lines.items():
        (root / f"{split}.txt").write_text("\n".join(split_lines) + "\n")
    return root


@pytest.fixture
def vtab_task(tmp_path) -> Path:
    return write_vtab_task(tmp_path / "toy")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """ONE finished smoke pipeline (tests/helpers/configs.smoke_config: the image track's default target
    shrunk to seconds) for every test that only inspects its results. Tests that change files work on a
    copy (`copy_smoke_run`) so this folder stays as the run left it."""
    from helpers.configs import smoke_config

    folder = tmp_path_factory.mktemp("smoke-run")
    run_workflow(folder, smoke_config(folder), "--cores", "2")
    return folder


@pytest.fixture
def copy_smoke_run(smoke_run, tmp_path) -> Path:
    """A private copy of the finished smoke pipeline (mtimes and Snakemake's records kept, so only what a
    test changes is re-run)."""
    import shutil

    folder = tmp_path / "smoke-copy"
    shutil.copytree(smoke_run, folder, symlinks=True)
    return folder


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure: a missing dependency or a service that could not be set up
    (SLURM, transformers for the VideoMAE reference, ...) must not let CI pass without the feature."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _under_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which makes every skip a failure: {reason}"
