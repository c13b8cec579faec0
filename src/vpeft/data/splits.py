"""Parsing VTAB-1k split files (`images/<split>/<file> <label>` per line), with errors naming file and line."""

from __future__ import annotations

from pathlib import Path


SPLITS = ("train800", "val200", "train800val200", "test")


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file (and line)."""


def read_split_file(path: str | Path, num_classes: int | None = None) -> list[tuple[str, int]]:
    """Return [(relative image path, label)], checking format and label range.

    Lines are `<relative path> <integer label>`; blank lines are ignored. Paths must stay inside the
    task folder (no absolute paths, no `..`); no image is listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    items: list[tuple[str, int]] = []
    first_line: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '<image path> <label>', got {line!r}")
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise DataError(f"{path}:{lineno}: label {label_text!r} is not an integer") from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise DataError(f"{path}:{lineno}: label {label} outside [0, {num_classes}) for this task")
        rel = rel.strip()
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise DataError(f"{path}:{lineno}: image path {rel!r} must be relative to the task folder")
        if rel in first_line:  # one image twice weighs it double in training or in the score
            raise DataError(f"{path}:{lineno}: image {rel} is listed again (first at line {first_line[rel]}); "
                            f"remove the duplicated line")
        first_line[rel] = lineno
        items.append((rel, label))
    if not items:
        raise DataError(f"{path}: split file is empty")
    return items
