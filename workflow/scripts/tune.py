"""Snakemake script: hyper-parameter search of one (suite, method, task) (see vpeft.engine.tune).

params.run: the resolved run under the `val` protocol (trials train on train800, score on val200);
params.settings: {"space", "sampler", "trials", "pruning", "report_every", "seed"}; params.study_dir:
where the Optuna journal and the trials' folders live; output.tuned: the best setting + every trial.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over("vpeft.engine.tune")  # in the warm worker when there is one

from vpeft.engine.tune import run_search  # noqa: E402
from vpeft.logs import console, log_to_file, tuned_line  # noqa: E402

log_to_file(snakemake.log[0])
settings = dict(snakemake.params.settings)
space = settings.pop("space")
result = run_search(snakemake.params.run, space, settings, snakemake.output.tuned, snakemake.params.study_dir,
                    threads=snakemake.threads)
console(tuned_line(result))
