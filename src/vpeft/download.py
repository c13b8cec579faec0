"""Downloading archives and checkpoints: resumable, with progress, sha256-checked before use.

A download streams into `<out>.part`. An interrupted download (dropped connection, killed job) is
resumed from the bytes already there with an HTTP Range request; a server that ignores Range gets a
fresh start. The finished file is hashed and checked against the config's sha256 or, when the config
has none, against the lock file (vpeft.data.checksums; the first download records it). A mismatch
moves the file aside to `<out>.rejected` (kept for inspection) and raises; only a verified file is
renamed to `out`. No torch or timm here: download jobs stay light.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from .data.checksums import ChecksumError, source_key, verify_or_record

log = logging.getLogger("vpeft.download")

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be downloaded or is not the file the config names."""


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _total_from_headers(response, offset: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")  # "bytes 100-999/1000"
    if "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _stream(url: str, partial: Path, timeout: float, label: str) -> None:
    """Append the rest of `url` to `partial` (resuming from its size when the server allows it)."""
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "vpeft-bench"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to fetch: the partial file is complete
            log.info("%s: %d bytes already downloaded", label, offset)
            return
        raise
    with response:
        if offset and response.status != 206:
            log.info("%s: server ignored the resume request; starting again from byte 0", label)
            offset = 0
        elif offset:
            log.info("%s: resuming at %.1f MiB", label, offset / 2**20)
        total = _total_from_headers(response, offset)
        done, started, next_report = offset, time.monotonic(), 0.0
        with open(partial, "ab" if offset else "wb") as fh:
            while True:
                try:
                    block = response.read(CHUNK)
                except http.client.IncompleteRead as err:  # connection dropped: keep what arrived
                    fh.write(err.partial)
                    fh.flush()
                    raise
                if not block:
                    break
                fh.write(block)
                done += len(block)
                now = time.monotonic()
                if now >= next_report:
                    rate = (done - offset) / max(now - started, 1e-6) / 2**20
                    of_total = f" / {total / 2**20:.1f} MiB ({100 * done / total:.0f}%)" if total else " MiB"
                    log.info("%s: %.1f%s, %.1f MiB/s", label, done / 2**20, of_total, rate)
                    next_report = now + 10
            fh.flush()
            os.fsync(fh.fileno())
        if total is not None and done < total:
            raise http.client.IncompleteRead(b"", total - done)


def download(url: str | None, out: str | Path, *, sha256: str | None = None, lock: str | Path | None = None,
             what: str = "download", manual_hint: str = "", timeout: float = 60, attempts: int = 4,
             backoff: float = 2.0) -> Path:
    """Fetch `url` to `out` (resumable, verified). Returns `out`; raises DownloadError naming the file."""
    out = Path(out)
    label = out.name
    if not url:
        raise DownloadError(f"{what}: no URL in the config for {out.name}. {manual_hint}".strip())
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    for attempt in range(1, attempts + 1):
        before = partial.stat().st_size if partial.exists() else 0
        try:
            _stream(url, partial, timeout, label)
            break
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as err:
            have = partial.stat().st_size if partial.exists() else 0
            # A connection that dropped after sending data is retried (resuming); an unreachable host or
            # an HTTP error is reported at once.
            if have > before and attempt < attempts:
                log.warning("%s: attempt %d/%d stopped after %.1f MiB (%s); resuming", label, attempt, attempts,
                            have / 2**20, err)
                time.sleep(backoff * attempt)
                continue
            kept = f" The {have} bytes received are kept in {partial}; the next run resumes from there." if have else ""
            raise DownloadError(f"{what}: could not download {url} to {out} ({err}).{kept} {manual_hint}".strip()) \
                from None
    digest = sha256_file(partial)
    try:
        verify_or_record(partial, digest, config_sha256=sha256, lock_path=lock, key=source_key(url, out.name),
                         url=url, what=what, shown_as=out)
    except ChecksumError as err:
        rejected = out.with_name(out.name + ".rejected")
        os.replace(partial, rejected)
        raise DownloadError(f"{err}. The file was kept as {rejected} for inspection; {out} was not written.") from None
    os.replace(partial, out)
    log.info("%s: done, sha256 %s", out, digest)
    return out


def verify_file(path: str | Path, *, url: str | None, sha256: str | None, lock: str | Path | None,
                what: str, use: str = "extract") -> str:
    """Hash a file that is already here (downloaded earlier or placed by hand) and check it against the
    config or the lock file (recording it when neither knows it). Returns the sha256.

    The result is cached beside the file (`<file>.sha256`, keyed by size and mtime), so the many jobs
    that extract from one large archive hash it once.
    """
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"{what}: {path} does not exist")
    stat = path.stat()
    stamp = path.with_name(path.name + ".sha256")
    cached = None
    if stamp.is_file():
        parts = stamp.read_text().split()
        if len(parts) == 3 and parts[1:] == [str(stat.st_size), str(stat.st_mtime_ns)]:
            cached = parts[0]
    digest = cached or sha256_file(path)
    try:
        verify_or_record(path, digest, config_sha256=sha256, lock_path=lock, key=source_key(url, path.name),
                         url=url, what=what)
    except ChecksumError as err:
        raise DownloadError(f"{err}; refusing to {use} it (delete it to download it again)") from None
    if not cached:
        from .io import atomic_write_bytes

        atomic_write_bytes(stamp, f"{digest} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest


def fetch_checkpoint(name: str, url: str | None, out: str | Path, sha256: str | None, *,
                     lock: str | Path | None = None, timeout: float = 60) -> Path:
    """A backbone checkpoint: like `download`, with a message saying where to put the file by hand."""
    out = Path(out)
    hint = (f"Without network, download it elsewhere and place it at {out} (it is checked against the config "
            f"or the lock file when used).")
    if not url:
        hint = f"Backbone '{name}' has no url in the config: place its checkpoint at {out} by hand."
    return download(url, out, sha256=sha256, lock=lock, what=f"checkpoint of backbone '{name}'",
                    manual_hint=hint, timeout=timeout)
