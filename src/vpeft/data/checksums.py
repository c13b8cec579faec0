"""The download lock file: the sha256 of every downloaded file whose hash the config does not pin.

The first download of such a file records its hash (with URL, size and date); every later download,
and every extraction, is checked against that record. The lock file is JSON, keyed by the file's
source (its URL, or `local:<name>` for a file that has none and was placed by hand). Commit it to pin
what your benchmark ran on. Writers take an exclusive `fcntl` lock, so parallel jobs never lose an
entry, and write atomically.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
from pathlib import Path

from ..io import atomic_write_json

log = logging.getLogger(__name__)

HEADER = ("sha256 of downloaded files whose hash config/config.yaml does not pin, recorded by their first "
          "download and checked on every later download and extraction (vpeft.data.checksums)")


class ChecksumError(RuntimeError):
    """A file's sha256 differs from the config or the lock file."""


def source_key(url: str | None, name: str) -> str:
    return url or f"local:{name}"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".flock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ChecksumError(f"{path}: the download lock file is not valid JSON ({err}); fix or delete it") from None
    entries = data.get("files", {}) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ChecksumError(f"{path}: expected {{\"files\": {{source: {{sha256, ...}}}}}}")
    return entries


def recorded(lock_path: str | Path | None, key: str) -> dict | None:
    """The lock file's entry for `key`, or None."""
    if not lock_path:
        return None
    return _read(Path(lock_path)).get(key)


def expected_sha256(config_sha256: str | None, lock_path: str | Path | None, key: str) -> tuple[str | None, str]:
    """(expected hash or None, where it comes from) for a file: the config wins over the lock file."""
    if config_sha256:
        return config_sha256.lower(), "the config"
    entry = recorded(lock_path, key)
    if entry:
        return entry["sha256"], f"{lock_path} (recorded {entry.get('recorded', '?')})"
    return None, ""


def verify_or_record(path: str | Path, digest: str, *, config_sha256: str | None, lock_path: str | Path | None,
                     key: str, url: str | None, what: str, shown_as: str | Path | None = None) -> None:
    """Check `digest` (the file's sha256) against the config or the lock file; record it when neither
    has one. Raises ChecksumError naming the file (`shown_as`, e.g. the final name of a download still
    in its .part file), both hashes and where the expected one comes from."""
    path = Path(path)
    name = shown_as or path
    if config_sha256:
        if digest != config_sha256.lower():
            raise ChecksumError(f"{what}: {name}: sha256 {digest} does not match the config's {config_sha256}")
        return
    if not lock_path:
        log.warning("%s: %s: no sha256 in the config and no lock file; sha256 is %s", what, name, digest)
        return
    lock_path = Path(lock_path)
    with _locked(lock_path):
        entries = _read(lock_path)
        entry = entries.get(key)
        if entry:
            if entry["sha256"] != digest:
                raise ChecksumError(
                    f"{what}: {name}: sha256 {digest} does not match {entry['sha256']}, recorded in {lock_path} "
                    f"by its first download on {entry.get('recorded', '?')}. If the source legitimately changed, "
                    f"delete the entry '{key}' from {lock_path} and run again.")
            return
        entries[key] = {"sha256": digest, "size": path.stat().st_size, "file": Path(name).name, "url": url,
                        "recorded": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        atomic_write_json(lock_path, {"about": HEADER, "files": dict(sorted(entries.items()))})
    log.info("%s: %s: sha256 %s recorded in %s (first download; later ones are checked against it)",
             what, name, digest, lock_path)
