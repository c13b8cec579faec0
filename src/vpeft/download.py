"""Fetching checkpoints: stream to a partial file with progress, check sha256, then rename."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from .backbones import BackboneError, sha256_of

log = logging.getLogger("vpeft.download")


def fetch_checkpoint(name: str, url: str | None, out: str | Path, sha256: str | None, *, timeout: float = 60) -> Path:
    out = Path(out)
    if not url:
        raise BackboneError(f"backbone '{name}' has no url in the config: place its checkpoint at {out} by hand")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as fh:
            total = int(response.headers.get("Content-Length") or 0)
            done = next_report = 0
            while block := response.read(1 << 20):
                fh.write(block)
                done += len(block)
                if done >= next_report:
                    log.info("%s: %.1f / %s MiB", out.name, done / 2**20, f"{total / 2**20:.1f}" if total else "?")
                    next_report = done + 50 * 2**20
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise BackboneError(
            f"could not download the checkpoint of backbone '{name}' from {url} ({err}). Without network, "
            f"download it elsewhere and place it at {out}.") from None
    digest = sha256_of(partial)
    if sha256 and digest != sha256.lower():
        rejected = partial.with_name(out.name + ".rejected")
        os.replace(partial, rejected)
        raise BackboneError(f"{url}: sha256 {digest} does not match the config's {sha256}; kept as {rejected}")
    log.info("%s: sha256 %s", out, digest)
    os.replace(partial, out)
    return out
