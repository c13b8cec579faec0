"""The checked task index and its manifest: what training reads instead of re-parsing a task folder.

The rule check_task_data writes two files per task:

* `<index>.json` (the rule's declared output, e.g. resources/index/vtab/dtd.json): the task folder that
  was checked (after resolving alternative folder names such as cifar/cifar100), class count,
  per-split counts and class histograms, the layout, and the manifest's file name and sha256;
* `<index>.manifest.csv`: one row per image and split, `split,path,label,sha256`, with `path`
  relative to the task folder and `sha256` the hash of the image file's bytes when it was checked.

Training reads the rows of its splits from the manifest (after checking the manifest's own sha256)
and checks each image's sha256 when it loads it, so an image that changed after the check is an
error naming the file, not a silently different benchmark.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write_bytes, atomic_write_json
from .splits import DataError

FIELDS = ("split", "path", "label", "sha256")


@dataclass(frozen=True)
class Row:
    split: str
    path: str
    label: int
    sha256: str


def manifest_path(index_path: str | Path) -> Path:
    index_path = Path(index_path)
    return index_path.with_name(index_path.name.removesuffix(".json") + ".manifest.csv")


def write_task_index(index_path: str | Path, index: dict, rows: list[Row]) -> dict:
    """Write the manifest, then the index that names it (so an index never points at a missing manifest)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    for row in rows:
        writer.writerow((row.split, row.path, row.label, row.sha256))
    data = buffer.getvalue().encode()
    target = manifest_path(index_path)
    atomic_write_bytes(target, data)
    index = dict(index, manifest={"file": target.name, "sha256": hashlib.sha256(data).hexdigest(), "rows": len(rows),
                                  "fields": list(FIELDS)})
    atomic_write_json(index_path, index)
    return index


def read_index(index_path: str | Path) -> dict:
    index_path = Path(index_path)
    try:
        return json.loads(index_path.read_text())
    except FileNotFoundError:
        raise DataError(f"task index {index_path} not found; the rule check_task_data writes it") from None
    except json.JSONDecodeError as err:
        raise DataError(f"task index {index_path} is not valid JSON ({err})") from None


def read_rows(index_path: str | Path, splits: list[str]) -> tuple[Path, list[Row]]:
    """(task folder, rows of `splits` in order) from a checked index; the manifest's sha256 is verified."""
    index_path = Path(index_path)
    index = read_index(index_path)
    info = index.get("manifest")
    if not info:
        raise DataError(f"task index {index_path} names no manifest; re-run the rule check_task_data")
    path = index_path.with_name(info["file"])
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"manifest {path} (named by {index_path}) not found; re-run check_task_data") from None
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise DataError(f"manifest {path} changed after {index_path} was written (sha256 differs); "
                        f"re-run check_task_data")
    by_split: dict[str, list[Row]] = {s: [] for s in splits}
    for record in csv.DictReader(io.StringIO(data.decode())):
        if record["split"] in by_split:
            by_split[record["split"]].append(Row(record["split"], record["path"], int(record["label"]),
                                                 record["sha256"]))
    empty = [s for s, rows in by_split.items() if not rows]
    if empty:
        raise DataError(f"manifest {path} has no rows for split(s) {', '.join(empty)}; "
                        f"it has {', '.join(sorted(index.get('splits', {})))}")
    return Path(index["task_dir"]), [row for s in splits for row in by_split[s]]


def rows_by_class(index_path: str | Path, splits: list[str]) -> tuple[Path, dict[int, list[Row]]]:
    """(task folder, label -> rows of `splits` in manifest order): e.g. for drawing k training images
    per class (own data and VTAB: ["train800"]; FGVC: ["train"])."""
    task_dir, rows = read_rows(index_path, splits)
    by_class: dict[int, list[Row]] = {}
    for row in rows:
        by_class.setdefault(row.label, []).append(row)
    return task_dir, dict(sorted(by_class.items()))


def read_checked_bytes(path: Path, sha256: str) -> bytes:
    """An image file's bytes, refused when they differ from the manifest's hash."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image not found: {path} (listed in the task manifest)") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"image {path} changed since the data check (sha256 differs from the manifest); "
                        f"re-run check_task_data (your own images: snakemake --forcerun check_own_data)")
    return data


def decode_image(data: bytes, path: Path):
    """Decode image bytes to RGB; errors name the file (truncated and unreadable images alike)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot decode image {path}: {err}") from None


def load_checked_image(path: Path, sha256: str):
    return decode_image(read_checked_bytes(path, sha256), path)
