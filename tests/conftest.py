"""Shared fixtures: small task folders in the VTAB-1k layout, written by hand (independent of the
generator, so loader tests do not depend on it). The rest of the shared code is in tests/helpers;
`run_workflow` is re-exported here for modules that import it from conftest."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

# Under pytest-xdist (`-n logical` in the pytest configuration) every worker shares the machine's cores: one
# torch thread pool per core, not one per worker per core (oversubscribed OpenMP pools spin). Set before
# numpy and torch load; Snakemake's jobs set their own thread counts from `threads`.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import numpy as np  # noqa: E402
import pytest
from helpers.snake import ROOT, SNAKEMAKE, job_counts, run_workflow  # noqa: E402, F401  (re-exported)
from PIL import Image  # noqa: E402

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
    copy (`copy_smoke_run`) so this folder stays as the run left it.

    Built once per pytest run, also under pytest-xdist: the folder sits in the run's shared temporary
    root, and the first worker to need it builds it under a file lock while the others wait; a failed
    build is recorded, so the other workers fail with its message instead of building it again."""
    from helpers.configs import smoke_config

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/, shared by the workers' pytest-N/popen-gwK/
    folder, done, failed = base / "smoke-run", base / "smoke-run.done", base / "smoke-run.failed"
    with open(base / "smoke-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if failed.exists():
            pytest.fail(f"the session's smoke pipeline failed to build in another worker:\n{failed.read_text()}")
        if not done.exists():
            folder.mkdir(exist_ok=True)
            try:
                run_workflow(folder, smoke_config(folder), "--cores", "2")
            except AssertionError as err:
                failed.write_text(str(err))
                raise
            done.touch()
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
