"""Errors of the video track; every one names the file it is about."""

from __future__ import annotations

from ..data.splits import DataError


class VideoReadError(DataError):
    """A listed video cannot be opened or decoded (missing, corrupt, empty); the message names it."""
