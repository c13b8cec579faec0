"""Snakemake script: one embedded task re-rendered as a shift target (see vpeft.data.synthetic.shift_mini)."""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.data.synthetic.shift_mini import render_task  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
spec = snakemake.params.spec
info = render_task(snakemake.input[0], snakemake.output[0], style=spec["style"], seed=spec["seed"],
                   num_classes=spec["num_classes"], classes=spec["classes"])
logging.getLogger("vpeft.data").info("rendered %s", json.dumps(info))
