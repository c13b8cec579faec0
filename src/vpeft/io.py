"""Small file helpers: atomic writes so a crash never leaves a half-written result."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results should be readable like any file
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


class DamagedFileError(ValueError):
    """A result file exists but cannot be read (empty, truncated, not what it should be); the message is
    one line naming the file."""


def read_json(path: str | Path):
    """The JSON in `path`; a damaged or truncated file raises DamagedFileError naming it (a missing one
    raises FileNotFoundError, as before)."""
    path = Path(path)
    data = path.read_bytes()
    if not data.strip():
        raise DamagedFileError(f"{path}: empty file (a write was cut short?); delete it and rerun what writes it")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DamagedFileError(f"{path}: not UTF-8 text at byte {err.start}; delete it and rerun what writes it") from None
    except json.JSONDecodeError as err:
        raise DamagedFileError(f"{path}: damaged or truncated JSON ({err.msg} at line {err.lineno}, column "
                               f"{err.colno}); delete it and rerun what writes it") from None
