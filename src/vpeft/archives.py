"""Extracting downloaded archives safely: every member must land inside the target folder, links
and device files are refused, and nothing half-extracted is left looking complete."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath


class ArchiveError(RuntimeError):
    """An archive is unreadable or holds a member that would escape the target folder."""


def _check_member_name(archive: Path, name: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise ArchiveError(f"{archive}: member {name!r} would be written outside the target folder; refusing")


def extract_archive(archive: str | Path, target: str | Path) -> Path:
    """Extract a .tar(.gz/.bz2/.xz) or .zip into `target`, atomically.

    The archive is unpacked into a temporary sibling folder, every member checked first; the folder is
    renamed to `target` only when everything was extracted, so a failure leaves no partial `target`.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise ArchiveError(f"{target} already exists; remove it to extract {archive} again")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member_name(archive, info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise ArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; refusing")
                zf.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:
                    _check_member_name(archive, member.name)
                    if not (member.isfile() or member.isdir()):
                        raise ArchiveError(f"{archive}: member {member.name!r} is a link or special file; "
                                           f"refusing")
                tf.extractall(staging, members=members, filter="data")
        else:
            raise ArchiveError(f"{archive}: not a tar or zip archive")
        os.replace(staging, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArchiveError(f"{archive}: cannot extract ({err})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
