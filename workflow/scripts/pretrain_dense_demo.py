"""Snakemake script: pretrain the dense track's demo Swin on rendered fractals (vpeft.engine.pretrain)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.dense.demo_swin import PRETRAIN_RECIPE  # noqa: E402  (also registers the architecture)
from vpeft.engine.pretrain import PretrainConfig, pretrain_demo_backbone  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
pretrain_demo_backbone(snakemake.output[0], PretrainConfig(**PRETRAIN_RECIPE), threads=snakemake.threads)
