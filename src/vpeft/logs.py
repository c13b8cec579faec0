"""Logging for workflow scripts: everything (log records, warnings, tracebacks) goes to the rule's log."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def log_to_file(path: str | Path | None, level: int = logging.INFO) -> None:
    """Send logging and stderr to `path` (line-buffered, so progress is visible while a job runs)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "w", buffering=1)  # noqa: SIM115 - lives as long as the process
        sys.stderr = stream
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.captureWarnings(True)
