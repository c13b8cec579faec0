"""Snakemake script: download one archive of a downloaded suite (resumable; sha256 from the config or
the lock file checked before the file is accepted)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.download import download  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
spec = snakemake.params.spec
download(spec["url"], snakemake.output[0], sha256=spec["sha256"], lock=spec["lock"], what=spec["what"],
         manual_hint=f"Place the file at {snakemake.output[0]} by hand. {spec['hint']}")
