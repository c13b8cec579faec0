"""Snakemake script: check a backbone checkpoint (downloaded or placed by hand) against the config's
sha256 or the download lock file, recording it there on first sight, and write the record."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.download import verify_file  # noqa: E402
from vpeft.io import atomic_write_json  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
b = snakemake.params.backbone
digest = verify_file(snakemake.input[0], url=b["url"], sha256=b["sha256"], lock=b["lock"],
                     what=f"checkpoint of backbone '{b['name']}'", use="load")
atomic_write_json(snakemake.output[0], {"backbone": b["name"], "path": snakemake.input[0], "sha256": digest})
