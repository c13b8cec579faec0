"""Checking a `video-csv` task folder before training (torch-free: decord and hashlib only).

With a `manifest.json` (written by the generator or the preparation rule, which opened every video
with decord), every listed video must still have the manifest's size and sha256; `decode: true` opens
every one again with decord. Without a manifest (a folder you prepared yourself), every listed video
is opened with decord. Either way: labels in range, files present, no video listed twice or in two
split files (by path or content), errors naming the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..data.splits import DataError
from .annotations import read_annotations
from .prepare.manifest import MANIFEST, check_against_manifest, sha256_file
from .reader import probe

log = logging.getLogger(__name__)


def _missing_message(task_dir: Path, suite: str, task: str, source: str) -> str:
    if source == "embedded":
        return f"embedded task folder {task_dir} is missing; re-run the rule generate_embedded_video_task"
    return (f"video data for task '{task}' of suite '{suite}' not found at {task_dir}: configure "
            f"suites.{suite}.data.prepare (the download's folder and format) so the rule prepare_video_task "
            f"builds it, or put a prepared folder there (<split>.csv files 'path,label' + the videos)")


#: Split files that hold others' videos by design (VTAB's names: train800val200 = train800 + val200).
_UNIONS = {"train800val200": {"train800", "val200"}}


def _check_no_shared_videos(task_dir: Path, split_files: list[str], num_classes: int, manifest: dict | None) -> None:
    """No video is listed twice in a split file, nor in two split files (by path or by content), except
    a union split and its parts: the protocol trains on one file and scores another."""
    from .prepare.manifest import key_of

    known = (manifest or {}).get("videos", {})
    listed: dict[str, list[Path]] = {}
    for file in split_files:
        seen: dict[Path, int] = {}
        for lineno, (path, _) in enumerate(read_annotations(task_dir / file, num_classes), start=1):
            if path in seen:
                raise DataError(f"{task_dir / file}: video {path} is listed again (entry {lineno}, first at entry "
                                f"{seen[path]}); remove the duplicated line")
            seen[path] = lineno
        listed[file] = list(seen)
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            entry = known.get(key_of(path, task_dir))
            digests[path] = entry["sha256"] if entry and entry.get("sha256") else sha256_file(path)
        return digests[path]

    files = sorted(listed, key=lambda f: (not Path(f).stem.startswith("train"), f))  # training files first
    for i, a in enumerate(files):
        for b in files[i + 1:]:
            stems = {Path(a).stem, Path(b).stem}
            if any(u in stems and stems - {u} <= parts for u, parts in _UNIONS.items()):
                continue
            shared = set(listed[a]) & set(listed[b])
            if shared:
                raise DataError(f"{task_dir / a} and {task_dir / b} both list {sorted(shared)[0]}: a video must "
                                f"not be in the training and the evaluation split")
            by_content = {digest(p): p for p in listed[a]}
            for path in listed[b]:
                if digest(path) in by_content:
                    raise DataError(f"{task_dir / b}: video {path} has the same content (sha256) as "
                                    f"{by_content[digest(path)]} of {task_dir / a}: a video must not be in the "
                                    f"training and the evaluation split")


def check_video_task(task_dir: str | Path, num_classes: int, split_files: list[str], *, suite: str = "",
                     task: str = "", source: str = "external", decode: bool = False) -> dict:
    """Validate the task folder; return its index (per-split counts and class histograms)."""
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise DataError(_missing_message(task_dir, suite, task or task_dir.name, source))
    manifest_file = task_dir / MANIFEST
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else None
    if manifest is not None:
        splits = check_against_manifest(task_dir, manifest, split_files, num_classes)
    else:
        decode = True
        splits = {}
        for file in split_files:
            items = read_annotations(task_dir / file, num_classes)
            histogram: dict[str, int] = {}
            for _, label in items:
                histogram[str(label)] = histogram.get(str(label), 0) + 1
            splits[file] = {"count": len(items), "classes": dict(sorted(histogram.items(), key=lambda kv: int(kv[0])))}
    if decode:
        for file in split_files:
            items = read_annotations(task_dir / file, num_classes)
            for i, (path, _) in enumerate(items, start=1):
                probe(path)  # raises VideoReadError naming the file
                if i % 2000 == 0:
                    log.info("%s: %d/%d videos open in decord", file, i, len(items))
    _check_no_shared_videos(task_dir, split_files, num_classes, manifest)
    for file, entry in splits.items():
        log.info("%s: %d videos, %d classes", file, entry["count"], len(entry["classes"]))
    return {"suite": suite, "task": task, "task_dir": str(task_dir), "num_classes": num_classes,
            "layout": "video-csv", "source": source, "splits": splits, "decoded": decode,
            "manifest_sha256": sha256_file(manifest_file) if manifest is not None else None,
            "skipped": len(manifest.get("skipped", [])) if manifest else 0}
