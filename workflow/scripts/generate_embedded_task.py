"""Snakemake script: generate one task of an embedded suite in the VTAB-1k layout."""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over("vpeft.data.synthetic.vtab_mini")  # in the warm worker when there is one

from vpeft.data.synthetic.vtab_mini import generate_task  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
spec = snakemake.params.spec
info = generate_task(spec["task"], snakemake.output[0], seed=spec["seed"], sizes=spec["sizes"],
                     image_size=spec["image_size"])
logging.getLogger("vpeft.data").info("generated %s", json.dumps(info))
