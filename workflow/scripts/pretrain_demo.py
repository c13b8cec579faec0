"""Snakemake script: pretrain the demo backbone on rendered fractals."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.engine.pretrain import PretrainConfig, pretrain_demo_backbone  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
pretrain_demo_backbone(snakemake.output[0], PretrainConfig(**snakemake.params.recipe), threads=snakemake.threads)
