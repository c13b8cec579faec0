"""What produced a result: package versions, git commit, hardware, threads."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import os
import platform
import subprocess
from pathlib import Path

_PACKAGES = ("vpeft", "torch", "torchvision", "timm", "numpy", "pillow", "snakemake", "pandas", "safetensors",
             "decord", "av", "peft", "transformers", "mmcv", "mmengine", "mmdet", "mmsegmentation", "pycocotools")


def package_versions(names=_PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_state(start: str | Path | None = None) -> dict[str, object]:
    """Commit of the checkout the code runs from (None outside git), and whether it has local changes."""
    cwd = Path(start or Path(__file__).resolve().parent)
    def _git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    try:
        head = _git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return {"git_commit": head.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def hardware() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(), "cuda": None}
    try:
        import torch

        if torch.cuda.is_available():
            info["cuda"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def provenance(threads: int | None = None) -> dict[str, object]:
    from . import __version__

    return {
        "vpeft_version": __version__,
        **git_state(),
        "packages": package_versions(),
        "hardware": hardware(),
        "threads": threads,
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
