"""Snakemake script: a finished run on its shift targets and along the WiSE-FT alphas (vpeft.engine.shift)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.engine.shift import evaluate_run_shift  # noqa: E402
from vpeft.logs import console, log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
shift = snakemake.params.shift
record = evaluate_run_shift(Path(snakemake.input.run).parent, shift["targets"], snakemake.output[0],
                            alphas=shift["alphas"], wise=shift["wise"], threads=snakemake.threads)
targets = ", ".join(f"{name} {100 * t['top1']:.1f}" for name, t in record["targets"].items())
console(f"shift {record['suite']}/{record['method']}/{record['task']} seed {record['seed']}: source "
        f"{100 * record['source']['top1']:.1f}, {targets}; WiSE points: {len(record['wise']['points'])}")
