"""Snakemake script: generate one task of an embedded dense suite (COCO json / ADE20K format)."""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over()  # in the warm worker when there is one

from vpeft.dense.synthetic import generate_dense_task  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
spec = snakemake.params.spec
info = generate_dense_task(spec["layout"], snakemake.output[0], seed=spec["seed"], sizes=spec["sizes"],
                           image_size=spec["image_size"])
logging.getLogger("vpeft.dense").info("generated %s", json.dumps(info))
