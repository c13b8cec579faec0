"""Snakemake logger plugin `vpeft` (`--logger vpeft`, set by profiles/default): the project's short console.
Thin: the formatting lives in `.console`."""

from __future__ import annotations

import sys

from snakemake.logging import DefaultFormatter
from snakemake_interface_logger_plugins.base import LogHandlerBase

from .console import Console


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        settings = self.common_settings
        formatter = DefaultFormatter(settings.quiet, settings.show_failed_logs)
        self.console = Console(stream=sys.stdout if settings.stdout else sys.stderr,
                               quiet=[q.name.lower() if hasattr(q, "name") else q for q in settings.quiet or ()],
                               printshellcmds=settings.printshellcmds, dryrun=settings.dryrun, verbose=settings.verbose,
                               default_format=formatter.format)

    def emit(self, record) -> None:
        try:
            self.console.handle(record)
        except Exception:  # a console bug must not stop the workflow
            self.handleError(record)

    def close(self) -> None:
        try:
            self.console.close()
        finally:
            super().close()

    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False
