"""Snakemake script: fetch a backbone checkpoint from its URL (resumable) and check its sha256 against
the config or the download lock file."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.download import fetch_checkpoint  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
b = snakemake.params.backbone
fetch_checkpoint(b["name"], b["url"], snakemake.output[0], b["sha256"], lock=snakemake.params.lock)
