"""Assembling a task folder from downloaded archives (rule prepare_task_folder).

A task folder is built from *pieces*: a folder of an archive (found among candidate names, with its
prefix stripped), extracted to a sub-folder of the task folder, optionally restricted to some files.
VTAB-1k: one piece per task, the task's folder of the NOAH-layout zip. FGVC: the dataset's images
from its official archive plus its three split jsons from the VPT-format json.zip.

Every archive's sha256 is checked (config or lock file) before anything is extracted. The pieces go
into a temporary sibling folder that is renamed to the task folder only when all of them are in, so
a failure never leaves a half-extracted folder that looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..archives import extract_members, find_folder, member_names
from ..download import verify_file
from ..io import atomic_write_json

log = logging.getLogger(__name__)

PREPARED_RECORD = ".vpeft-prepared.json"


def folder_candidates(templates: str | list[str], names: list[str]) -> list[str]:
    """Expand `{name}` in each template over the task's folder names, templates first."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    out: list[str] = []
    for template in templates:
        for name in names if "{name}" in template else [None]:
            candidate = template.replace("{name}", name) if name else template
            if candidate not in out:
                out.append(candidate)
    return out


def prepare_task_folder(target: str | Path, pieces: list[dict], names: list[str], *, lock: str | Path | None,
                        what: str) -> dict:
    """Build `target` from `pieces` (each: archive path, url, sha256, from, to, files). Returns a record
    of what went where (also written into the folder as .vpeft-prepared.json)."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists; remove it to prepare {what} again")
    digests = {}
    for piece in pieces:
        archive = piece["archive"]
        if archive not in digests:
            log.info("%s: checking sha256 of %s", what, archive)
            digests[archive] = verify_file(archive, url=piece.get("url"), sha256=piece.get("sha256"), lock=lock,
                                           what=f"archive for {what}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    record = {"what": what, "pieces": []}
    try:
        listing: dict[str, list[str]] = {}
        for piece in pieces:
            archive = piece["archive"]
            if archive not in listing:
                listing[archive] = member_names(archive)
            prefix = find_folder(archive, folder_candidates(piece.get("from", ""), names), listing[archive])
            dest = staging / piece.get("to", ".")
            dest.mkdir(parents=True, exist_ok=True)
            count = extract_members(archive, dest, prefix=prefix, only=piece.get("files"))
            log.info("%s: %d files from %s:%s into %s/", what, count, Path(archive).name, prefix or "/",
                     piece.get("to", "."))
            record["pieces"].append({"archive": Path(archive).name, "sha256": digests[archive], "from": prefix,
                                     "to": piece.get("to", "."), "files": count})
        atomic_write_json(staging / PREPARED_RECORD, record)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record
