"""Annotation csv files, as the V-PETL / VideoMAE code reads them (catalog §6.3).

One video per line, `path,label` — comma separated, no header, integer 0-based labels. Paths may be
absolute (as in V-PETL's shipped `ssv2/val.csv`) or relative to the csv's folder. A line with no
comma is read as `path label` (the V-PETL README's space-separated form). Errors name file and line.
"""

from __future__ import annotations

from pathlib import Path

from ..data.splits import DataError
from ..io import atomic_write_bytes


def read_annotations(path: str | Path, num_classes: int | None = None) -> list[tuple[Path, int]]:
    """[(video path, label)] with every path resolved against the csv's folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err})") from None
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        video, sep, label_text = line.rpartition(",")
        if not sep:
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DataError(f"{path}:{lineno}: expected '<video path>,<label>', got {line!r}")
            video, label_text = parts
        video = video.strip()
        try:
            label = int(label_text)
        except ValueError:
            raise DataError(f"{path}:{lineno}: label {label_text.strip()!r} is not an integer") from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise DataError(f"{path}:{lineno}: label {label} outside [0, {num_classes})")
        if not video:
            raise DataError(f"{path}:{lineno}: empty video path")
        items.append((path.parent / video, label))
    if not items:
        raise DataError(f"{path}: no videos listed")
    return items


def write_annotations(path: str | Path, rows, *, relative_to: str | Path | None = None) -> int:
    """Write `(video path, label)` rows atomically; paths relative to `relative_to` when given."""
    lines = []
    for video, label in rows:
        video = Path(video)
        if relative_to is not None:
            video = video.relative_to(relative_to)
        if "," in str(video) or "\n" in str(video):
            raise DataError(f"{path}: video path {video} contains a comma or newline; rename it")
        lines.append(f"{video.as_posix()},{int(label)}")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return len(lines)
