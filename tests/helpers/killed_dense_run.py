"""One dense run (vpeft.dense.train.run_dense_training) in its own process group that SIGKILLs the whole
group at a chosen checkpoint: right after it is complete ("after-save"), or half-way through writing it
("during-save": half the file under its temporary name), for tests/test_dense_resume.py.

    python -m helpers.killed_dense_run JOB.json MODE STEP
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from vpeft.dense import checkpoints
from vpeft.dense.train import run_dense_training


def main(job: str, mode: str, step: int) -> None:
    spec = json.loads(Path(job).read_text())
    save = checkpoints.AtomicCheckpointHook._save

    def killing_save(self, runner, name):
        if mode == "during-save" and name.endswith(f"_{step}.pth"):
            real = runner.save_checkpoint

            def torn(out_dir, filename, **kwargs):
                real(out_dir, filename, **kwargs)
                path = Path(out_dir, filename)
                with open(path, "r+b") as fh:
                    fh.truncate(path.stat().st_size // 2)
                os.killpg(0, signal.SIGKILL)

            runner.save_checkpoint = torn
        save(self, runner, name)
        if mode == "after-save" and name.endswith(f"_{step}.pth"):
            os.killpg(0, signal.SIGKILL)

    checkpoints.AtomicCheckpointHook._save = killing_save
    run_dense_training(spec["run"], spec["metrics"], index_path=spec["index"], threads=1, device="cpu")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
