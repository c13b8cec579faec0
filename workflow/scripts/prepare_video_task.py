"""Snakemake script: prepare a real video dataset into a checked, checksummed video-csv task folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.logs import log_to_file  # noqa: E402
from vpeft.video.prepare import prepare_task  # noqa: E402

log_to_file(snakemake.log[0])
spec = dict(snakemake.params.spec)
prepare_task(spec.pop("format"), spec.pop("source"), snakemake.output[0], workers=snakemake.threads, **spec)
