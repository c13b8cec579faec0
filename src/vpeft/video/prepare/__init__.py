"""Preparing real video datasets into `video-csv` task folders, validated and checksummed.

`prepare_task(format, source, task_dir, **options)` turns a download (or your own copy) into

    <task_dir>/train.csv  val.csv          `path,label` (V-PETL's format; paths relative or absolute)
    <task_dir>/videos/...                   converted videos (SSv2 webm -> mp4, K400 short side 320)
    <task_dir>/manifest.json                every listed video's sha256, size, frame count; skipped ones

Formats: `ssv2` (label json files + webm videos), `hmdb51` (official archive or its extracted folders
+ split files, split 1 by default), `k400` (official list csvs + downloaded clips), `csv` (annotation
csvs you already have, V-PETL style). Every video is opened with decord before it is listed
(frame count > 0, first and last frame decode); a bad one stops the preparation naming the file, or,
with `on_error: skip`, is left out with a warning and recorded under `skipped` in the manifest.
"""

from .core import FORMATS, prepare_task

__all__ = ["FORMATS", "prepare_task"]
