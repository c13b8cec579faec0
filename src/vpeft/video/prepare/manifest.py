"""The checksummed manifest of a prepared (or generated) video task folder, and checking against it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from ...data.splits import DataError
from ...io import atomic_write_json
from ..annotations import read_annotations

log = logging.getLogger(__name__)

SCHEMA = "vpeft-video-manifest/1"
MANIFEST = "manifest.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def key_of(path: Path, task_dir: Path) -> str:
    """Videos inside the task folder by relative path, others by absolute path."""
    try:
        return path.resolve().relative_to(task_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def write_manifest(task_dir: str | Path, videos: dict, *, splits: dict, skipped: list, info: dict) -> dict:
    """`videos`: key -> probe dict (frames, width, height, fps); adds sha256 and bytes of each file."""
    task_dir = Path(task_dir)
    entries = {}
    for i, (key, probe) in enumerate(sorted(videos.items()), start=1):
        path = Path(key) if Path(key).is_absolute() else task_dir / key
        entries[key] = {**probe, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        if i % 2000 == 0:
            log.info("checksummed %d/%d videos", i, len(videos))
    split_entries = {name: {"file": file, "count": count, "sha256": sha256_file(task_dir / file)}
                     for name, (file, count) in splits.items()}
    manifest = {"schema": SCHEMA, **info, "splits": split_entries, "videos": entries, "skipped": skipped}
    atomic_write_json(task_dir / MANIFEST, manifest)
    return manifest


def check_against_manifest(task_dir: str | Path, manifest: dict, split_files: list[str], num_classes: int,
                           *, verify_sha256: bool = True) -> dict:
    """Every listed video of `split_files` exists, has the manifest's size (and sha256), labels are in
    range. Returns per-split counts and class histograms."""
    task_dir = Path(task_dir)
    known = manifest.get("videos", {})
    out = {}
    for file in split_files:
        items = read_annotations(task_dir / file, num_classes)
        histogram: dict[str, int] = {}
        for path, label in items:
            key = key_of(path, task_dir)
            entry = known.get(key)
            if entry is None:
                raise DataError(f"{task_dir / file}: video {path} is not in {task_dir / MANIFEST}; "
                                f"re-run the preparation")
            if not path.is_file():
                raise DataError(f"{task_dir / file}: listed video {path} does not exist")
            if path.stat().st_size != entry["bytes"] or (verify_sha256 and sha256_file(path) != entry["sha256"]):
                raise DataError(f"video {path} changed since it was checked (size or sha256 differs from "
                                f"{task_dir / MANIFEST}); re-run the preparation")
            histogram[str(label)] = histogram.get(str(label), 0) + 1
        out[file] = {"count": len(items), "classes": dict(sorted(histogram.items(), key=lambda kv: int(kv[0])))}
    return out
