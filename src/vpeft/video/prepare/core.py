"""Preparing a task folder: list (sources), convert, validate with decord, write csvs and manifest."""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ...data.splits import DataError
from ...io import atomic_write_json
from ..annotations import write_annotations
from ..errors import VideoReadError
from ..reader import probe
from ..writer import transcode
from . import sources
from .manifest import key_of, write_manifest

log = logging.getLogger(__name__)

FORMATS = ("ssv2", "hmdb51", "k400", "csv")
# What V-PETL / VideoMAE feed their loaders: SSv2 webm -> mp4 at the original height (240 px);
# K400 short side 320; HMDB51's avi as they are.
DEFAULT_CONVERSION = {"ssv2": {"transcode": True}, "k400": {"transcode": True, "short_side": 320},
                      "hmdb51": {"transcode": False}, "csv": {"transcode": False}}


def _list(fmt: str, source: Path, options: dict, work: Path):
    if fmt == "ssv2":
        return sources.ssv2_items(source)
    if fmt == "hmdb51":
        return sources.hmdb51_items(source, int(options.get("split", 1)), work=work)
    if fmt == "k400":
        return sources.k400_items(source)
    return sources.csv_items(source, options.get("files") or {})


def _convert_and_check(item, staging: Path, convert: bool, short_side, crf: int):
    """(listed path, probe) or raises VideoReadError naming the source file."""
    if not item.source.is_file():
        raise VideoReadError(f"video not found: {item.source}")
    if convert:
        out = staging / "videos" / item.split / item.name
        if not out.is_file():  # converted files are written atomically: an existing one is complete
            transcode(item.source, out, short_side=short_side, crf=crf)
        path = out
    else:
        path = item.source.resolve()
    try:
        return path, probe(path)
    except VideoReadError as err:
        raise VideoReadError(f"{err} (source {item.source})") from None


def prepare_task(fmt: str, source: str | Path, task_dir: str | Path, *, num_classes: int, on_error: str = "fail",
                 workers: int = 1, **options) -> dict:
    """Prepare `task_dir` from the download at `source`. Returns the manifest (without its video table).

    Options: `transcode` / `short_side` / `crf` (conversion; defaults per format), `split` (HMDB51),
    `files` (format csv). Work in progress lives in `.<task>.partial` beside `task_dir` (converted
    videos there are reused by a rerun); `task_dir` appears only when everything is done.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown video data format {fmt!r}; valid: {', '.join(FORMATS)}")
    if on_error not in ("fail", "skip"):
        raise DataError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    source, task_dir = Path(source), Path(task_dir)
    if not source.is_dir():
        raise DataError(f"{fmt} source folder {source} not found: put the dataset there (see the suite's "
                        f"data.prepare.source in config/config.yaml)")
    settings = {**DEFAULT_CONVERSION[fmt], **{k: v for k, v in options.items() if k in ("transcode", "short_side", "crf")}}
    convert = bool(settings.get("transcode"))
    staging = task_dir.with_name(f".{task_dir.name}.partial")
    staging.mkdir(parents=True, exist_ok=True)
    items, classes = _list(fmt, source, options, staging / "extracted")
    if classes and len(classes) != num_classes:
        raise DataError(f"{fmt}: found {len(classes)} classes in {source}, but the suite says num_classes={num_classes}")
    bad_labels = [i for i in items if not 0 <= i.label < num_classes]
    if bad_labels:
        raise DataError(f"{fmt}: label {bad_labels[0].label} of {bad_labels[0].source} outside [0, {num_classes})")
    log.info("%s: %d videos listed (%s)", fmt, len(items), ", ".join(
        f"{s} {sum(i.split == s for i in items)}" for s in ("train", "val")))

    def work(item):
        try:
            return item, _convert_and_check(item, staging, convert, settings.get("short_side"), int(settings.get("crf", 18)))
        except VideoReadError as err:
            return item, err

    rows = {"train": [], "val": []}
    videos, skipped = {}, []
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for n, (item, result) in enumerate(pool.map(work, items), start=1):
            if isinstance(result, VideoReadError):
                if on_error == "fail":
                    raise DataError(f"{result}; set data.prepare.on_error: skip to leave such videos out") from None
                log.warning("skipping %s video: %s", item.split, result)
                skipped.append({"split": item.split, "source": str(item.source), "label": item.label,
                                "error": str(result)})
                continue
            path, info = result
            rows[item.split].append((path, item.label))
            videos[key_of(path, staging)] = info
            if n % 1000 == 0:
                log.info("%d/%d videos converted and checked", n, len(items))
    for split, split_rows in rows.items():
        if not split_rows:
            raise DataError(f"{fmt}: no readable {split} video under {source}")
        write_annotations(staging / f"{split}.csv", [(p if p.is_absolute() and not _inside(p, staging) else
                                                      p.relative_to(staging), label) for p, label in split_rows])
    if classes:
        atomic_write_json(staging / "classes.json", classes)
    shutil.rmtree(staging / "extracted", ignore_errors=True)
    info = {"format": fmt, "source": str(source.resolve()), "settings": settings, "on_error": on_error,
            "num_classes": num_classes}
    manifest = write_manifest(staging, videos, splits={s: (f"{s}.csv", len(r)) for s, r in rows.items()},
                              skipped=skipped, info=info)
    if task_dir.exists():
        shutil.rmtree(task_dir)
    staging.rename(task_dir)
    log.info("%s prepared: %s; %d skipped", task_dir, {s: len(r) for s, r in rows.items()}, len(skipped))
    return {k: v for k, v in manifest.items() if k != "videos"}


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
