"""Shared fixtures: small task folders in the VTAB-1k layout, written by hand (independent of the
generator, so loader tests do not depend on it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SPLIT_SIZES = {"train800": 12, "val200": 4, "test": 10}
ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]


def run_workflow(workdir: Path, configfile: Path, *args: str, check: bool = True,
                 timeout: int = 900) -> subprocess.CompletedProcess:
    """The project's Snakefile in `workdir` with `configfile`; with `check`, a failure shows its output."""
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(configfile), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


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
