"""Fault injection: SIGKILL mid-run and mid-checkpoint-write, then resume; failure records."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.runs import run_values

from vpeft.engine.train import TrainingError, run_training
from vpeft.runs import CHECKPOINT_DIR, FAILURE_RECORD

# Runs a training in a child process that SIGKILLs itself at a chosen point: after the checkpoint of
# epoch KILL_AFTER is complete ("after-save"), or half-way through writing it ("during-save").
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    import vpeft.engine.train as train

    values, out, mode, kill_after = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    original_save, original_torch_save = train._save_checkpoint, torch.save

    def save(folder, state):
        if mode == "during-save" and state["epoch"] == kill_after:
            def torn_write(obj, path):  # half a file under the temporary name, then die
                original_torch_save(obj, path)
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            train.torch.save = torn_write
        original_save(folder, state)
        if mode == "after-save" and state["epoch"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    train._save_checkpoint = save
    train.run_training(values, out)
""")


def killed_run(values: dict, out: Path, mode: str, kill_after: int) -> None:
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(values), str(out), mode, str(kill_after)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, f"child was not killed: {result.returncode}\n{result.stderr[-2000:]}"
    assert not out.exists()


@pytest.mark.parametrize("mode, resumes_from", [("after-save", 3), ("during-save", 2)])
def test_killed_run_resumes_and_matches_an_uninterrupted_run(vtab_task, tmp_path, mode, resumes_from):
    values = run_values(vtab_task, "adapter", epochs=5, drop_path=0.1)
    reference = run_training(values, tmp_path / "reference" / "metrics.json")

    out = tmp_path / "killed" / "metrics.json"
    killed_run(values, out, mode, kill_after=3)
    assert (out.parent / CHECKPOINT_DIR / "state.pt").is_file()

    resumed = run_training(values, out)
    assert resumed["train"]["resumed_from_epoch"] == resumes_from
    assert resumed["metric"] == reference["metric"]
    assert [h["loss"] for h in resumed["train"]["history"]] == [h["loss"] for h in reference["train"]["history"]]
    assert not (out.parent / CHECKPOINT_DIR).exists(), "a finished run leaves no checkpoint behind"


def test_checkpoint_of_other_settings_is_not_resumed(vtab_task, tmp_path):
    out = tmp_path / "run" / "metrics.json"
    killed_run(run_values(vtab_task, "adapter", epochs=4), out, "after-save", kill_after=2)
    changed = run_training(run_values(vtab_task, "adapter", epochs=4, lr=2e-3), out)
    assert changed["train"]["resumed_from_epoch"] is None


def test_failed_run_leaves_a_failure_record_and_success_removes_it(vtab_task, tmp_path):
    out = tmp_path / "run" / "metrics.json"
    with pytest.raises(TrainingError):
        run_training(run_values(vtab_task, "full", lr=1e30, warmup_epochs=0, epochs=3), out)
    record = json.loads((out.parent / FAILURE_RECORD).read_text())
    assert record["status"] == "failed" and "TrainingError: loss is" in record["error"]
    assert record["method"] == "full" and record["seed"] == 7
    run_training(run_values(vtab_task, "full", epochs=1), out)
    assert out.is_file() and not (out.parent / FAILURE_RECORD).exists()
