"""Reading each dataset's official files into `(split, source video, label, output name)` rows.

Nothing here decodes video; `core` converts and validates. Every missing file is an error that says
what to download and where to put it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...data.splits import DataError
from ..annotations import read_annotations

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv")


@dataclass(frozen=True)
class Item:
    split: str               # "train" or "val"
    source: Path             # the video as downloaded
    label: int
    name: str                # output file name (without folder) when the video is converted


def _find_one(root: Path, name: str, what: str) -> Path:
    hits = sorted(root.rglob(name))
    if not hits:
        raise DataError(f"{what} not found: no file named {name} under {root}")
    return hits[0]


def _video_index(root: Path) -> dict[str, Path]:
    """Every video file under `root` by file stem (first one wins, sorted)."""
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            index.setdefault(path.stem, path)
    return index


# -- Something-Something v2 ---------------------------------------------------------------------
def ssv2_items(source: Path) -> tuple[list[Item], list[str]]:
    """Labels from `something-something-v2-labels.json` (template -> id), videos `<id>.webm` anywhere
    under `source`; train = `...-train.json`, val = `...-validation.json` (the test split has no labels)."""
    labels_file = _find_one(source, "something-something-v2-labels.json", "SSv2 label file")
    try:
        label_ids = {name: int(i) for name, i in json.loads(labels_file.read_text()).items()}
    except (ValueError, AttributeError) as err:
        raise DataError(f"{labels_file}: expected a JSON object 'template -> id' ({err})") from None
    classes = [name for name, _ in sorted(label_ids.items(), key=lambda kv: kv[1])]
    videos = _video_index(source)
    items = []
    for split, file in (("train", "something-something-v2-train.json"), ("val", "something-something-v2-validation.json")):
        path = _find_one(source, file, f"SSv2 {split} list")
        for n, entry in enumerate(json.loads(path.read_text())):
            try:
                template = entry["template"].replace("[", "").replace("]", "")
                vid = str(entry["id"])
            except (KeyError, TypeError, AttributeError):
                raise DataError(f"{path}: entry {n} has no 'id' / 'template'") from None
            if template not in label_ids:
                raise DataError(f"{path}: entry {n} (id {vid}): template {template!r} is not in {labels_file}")
            video = videos.get(vid)
            items.append(Item(split, video if video else source / f"{vid}.webm", label_ids[template], f"{vid}.mp4"))
    return items, classes


# -- HMDB51 -----------------------------------------------------------------------------------------
def _extract_rar(archive: Path, target: Path) -> None:
    """RAR is HMDB51's format; Python cannot read it, so an installed extractor is used."""
    target.mkdir(parents=True, exist_ok=True)
    for tool, args in (("unrar", ["x", "-o+", "-inul"]), ("bsdtar", ["-xf"]), ("7z", ["x", "-y"])):
        exe = shutil.which(tool)
        if exe is None:
            continue
        if tool == "7z":
            cmd = [exe, *args, f"-o{target}", str(archive)]
        elif tool == "bsdtar":
            cmd = [exe, *args, str(archive), "-C", str(target)]
        else:
            cmd = [exe, *args, str(archive), str(target) + os.sep]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DataError(f"cannot extract {archive} with {tool}: {result.stderr.strip()[:300]}")
        return
    raise DataError(f"{archive} is a RAR archive and no extractor (unrar, bsdtar, 7z) is installed; install one "
                    f"(e.g. `apt-get install libarchive-tools`) or extract it yourself into {target}")


def hmdb51_items(source: Path, split: int = 1, work: Path | None = None) -> tuple[list[Item], list[str]]:
    """Split files `<class>_test_split<k>.txt` (lines `<video>.avi <0|1|2>`: 1 train, 2 test, 0 unused)
    and videos `<class>/<video>.avi`, extracted from the official `hmdb51_org.rar` /
    `test_train_splits.rar` if only the archives are there. Labels: classes in sorted order."""
    if split not in (1, 2, 3):
        raise DataError(f"HMDB51 has splits 1, 2, 3; got {split}")
    if not sorted(source.rglob(f"*_test_split{split}.txt")):
        work = work or source / "extracted"
        for name in ("test_train_splits.rar", "hmdb51_org.rar"):
            archive = next(iter(sorted(source.rglob(name))), None)
            if archive is None:
                raise DataError(f"HMDB51 not found under {source}: put the official hmdb51_org.rar and "
                                f"test_train_splits.rar there, or their extracted folders")
            _extract_rar(archive, work)
        for inner in sorted(work.rglob("*.rar")):  # hmdb51_org.rar holds one rar per class
            _extract_rar(inner, work / "videos")
            inner.unlink()
    split_files = sorted(source.rglob(f"*_test_split{split}.txt"))
    if len(split_files) != 51:
        raise DataError(f"expected 51 HMDB51 split files *_test_split{split}.txt under {source}, found {len(split_files)}")
    classes = sorted(p.name[: -len(f"_test_split{split}.txt")] for p in split_files)
    videos = _video_index(source)
    items = []
    for label, name in enumerate(classes):
        path = next(p for p in split_files if p.name == f"{name}_test_split{split}.txt")
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{path}:{lineno}: expected '<video>.avi <0|1|2>', got {line!r}")
            if parts[1] == "0":
                continue
            stem = Path(parts[0]).stem
            video = videos.get(stem, source / name / parts[0])
            items.append(Item("train" if parts[1] == "1" else "val", video, label, f"{stem}.mp4"))
    return items, classes


# -- Kinetics-400 -------------------------------------------------------------------------------
def k400_items(source: Path) -> tuple[list[Item], list[str]]:
    """Official lists `train.csv` / `validate.csv` (`label,youtube_id,time_start,time_end,split[,is_cc]`),
    videos named `<youtube_id>_<start:06d>_<end:06d>.<ext>` anywhere under `source`."""
    lists = {}
    for split, name in (("train", "train.csv"), ("val", "validate.csv")):
        path = _find_one(source, name, f"Kinetics-400 {split} list")
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            need = {"label", "youtube_id", "time_start", "time_end"}
            if not need <= set(reader.fieldnames or ()):
                raise DataError(f"{path}: expected columns {sorted(need)}, got {reader.fieldnames}")
            lists[split] = [(row["label"], row["youtube_id"], int(float(row["time_start"])),
                             int(float(row["time_end"]))) for row in reader]
    classes = sorted({label for label, *_ in lists["train"]})
    index = {name: i for i, name in enumerate(classes)}
    videos = _video_index(source)
    items = []
    for split, rows in lists.items():
        for label, yid, start, end in rows:
            if label not in index:
                raise DataError(f"Kinetics-400 {split} list: label {label!r} does not occur in the train list")
            stem = f"{yid}_{start:06d}_{end:06d}"
            items.append(Item(split, videos.get(stem, source / f"{stem}.mp4"), index[label], f"{stem}.mp4"))
    return items, classes


# -- your own csv files ------------------------------------------------------------------------------
def csv_items(source: Path, files: dict) -> tuple[list[Item], list[str]]:
    """Annotation csvs you already have (`files: {train: ..., val: ...}`, relative to `source`)."""
    missing = [s for s in ("train", "val") if s not in (files or {})]
    if missing:
        raise DataError(f"format 'csv' needs data.prepare.files with {missing} (annotation csv per split)")
    items = []
    for split in ("train", "val"):
        for path, label in read_annotations(source / files[split]):
            items.append(Item(split, path, label, path.name))
    return items, []
