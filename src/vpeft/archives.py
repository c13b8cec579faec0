"""Extracting downloaded archives safely: every member must land inside the target folder, links
and device files are refused, and nothing half-extracted is left looking complete.

`extract_archive` unpacks a whole archive; `extract_members` unpacks one folder of an archive (with
its prefix stripped) into a folder that the caller is assembling (see vpeft.data.prepare, which
builds a task folder from pieces of several archives and renames it into place at the end).
"""

from __future__ import annotations

import copy
import fnmatch
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath


class ArchiveError(RuntimeError):
    """An archive is unreadable or holds a member that would escape the target folder."""


# What a damaged archive raises while being read (gzip/bz2/xz streams, zip directories, tar headers).
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error)


def _check_member_name(archive: Path, name: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise ArchiveError(f"{archive}: member {name!r} would be written outside the target folder; refusing")


def _normal(name: str) -> str:
    """Member name without a leading './' or trailing '/'."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


def _under(name: str, prefix: str) -> str | None:
    """`name` relative to `prefix`, '' for the prefix itself, None when outside it."""
    if not prefix:
        return name
    if name == prefix:
        return ""
    return name[len(prefix) + 1:] if name.startswith(prefix + "/") else None


def archive_kind(archive: Path) -> str:
    if zipfile.is_zipfile(archive):
        return "zip"
    try:
        if tarfile.is_tarfile(archive):
            return "tar"
    except _READ_ERRORS:
        pass
    raise ArchiveError(f"{archive}: not a tar or zip archive (or a damaged one)")


def member_names(archive: str | Path) -> list[str]:
    """Normalised names of every member (files and folders; folders implied by file paths included)."""
    archive = Path(archive)
    try:
        if archive_kind(archive) == "zip":
            with zipfile.ZipFile(archive) as zf:
                names = [_normal(i.filename) for i in zf.infolist()]
        else:
            with tarfile.open(archive) as tf:
                names = [_normal(m.name) for m in tf.getmembers()]
    except _READ_ERRORS as err:
        raise ArchiveError(f"{archive}: cannot read ({err})") from None
    implied = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
    return sorted(set(names) | implied - {""})


def find_folder(archive: str | Path, candidates: list[str], names: list[str] | None = None) -> str:
    """The first candidate that is a folder in the archive. A candidate may use shell wildcards per
    path segment (`*/cifar`); it must then match exactly one folder."""
    names = member_names(archive) if names is None else names
    folders = {n.rsplit("/", 1)[0] for n in names if "/" in n}
    for candidate in candidates:
        candidate = _normal(candidate)
        if candidate in folders or candidate == "":
            return candidate
        if any(ch in candidate for ch in "*?["):
            depth = candidate.count("/")
            matches = sorted(f for f in folders if f.count("/") == depth and fnmatch.fnmatchcase(f, candidate))
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ArchiveError(f"{archive}: '{candidate}' matches several folders: {', '.join(matches)}")
    top = sorted({n.split("/")[0] for n in names})[:20]
    raise ArchiveError(f"{archive}: none of the folders {candidates} is in the archive; its top-level entries: "
                       f"{', '.join(top)}")


def extract_members(archive: str | Path, dest: str | Path, *, prefix: str = "",
                    only: list[str] | None = None) -> int:
    """Extract the members under `prefix` (prefix stripped) into the existing folder `dest`.

    `only` restricts extraction to these paths relative to the prefix (each must exist). Every member
    is checked before anything is written: names that would escape `dest`, links and special files
    raise ArchiveError. Returns the number of files written. The caller owns `dest` and removes it on
    failure (extract into a staging folder, rename when complete).
    """
    archive, dest = Path(archive), Path(dest)
    prefix = _normal(prefix)
    wanted = None if only is None else {_normal(o) for o in only}
    written = 0
    try:
        if archive_kind(archive) == "zip":
            with zipfile.ZipFile(archive) as zf:
                chosen = []
                for info in zf.infolist():
                    _check_member_name(archive, info.filename)
                    rel = _under(_normal(info.filename), prefix)
                    if rel is None or rel == "" or (wanted is not None and rel not in wanted):
                        continue
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise ArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; refusing")
                    chosen.append((info, rel))
                _require_all(archive, prefix, wanted, {rel for _, rel in chosen})
                for info, rel in chosen:
                    path = dest / rel
                    if info.is_dir():
                        path.mkdir(parents=True, exist_ok=True)
                        continue
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(path, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    written += 1
        else:
            with tarfile.open(archive) as tf:
                chosen = []
                for member in tf.getmembers():
                    _check_member_name(archive, member.name)
                    rel = _under(_normal(member.name), prefix)
                    if rel is None or rel == "" or (wanted is not None and rel not in wanted):
                        continue
                    if not (member.isfile() or member.isdir()):
                        raise ArchiveError(f"{archive}: member {member.name!r} is a link or special file; refusing")
                    renamed = copy.copy(member)
                    renamed.name = rel
                    chosen.append(renamed)
                _require_all(archive, prefix, wanted, {m.name for m in chosen})
                tf.extractall(dest, members=chosen, filter="data")
                written = sum(1 for m in chosen if m.isfile())
    except ArchiveError:
        raise
    except (tarfile.FilterError, *_READ_ERRORS) as err:
        raise ArchiveError(f"{archive}: cannot extract ({type(err).__name__}: {err})") from None
    return written


def _require_all(archive: Path, prefix: str, wanted: set[str] | None, found: set[str]) -> None:
    missing = sorted((wanted or set()) - found)
    if missing:
        where = f"{prefix}/" if prefix else ""
        raise ArchiveError(f"{archive}: missing {', '.join(where + m for m in missing)}")


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
        extract_members(archive, staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
