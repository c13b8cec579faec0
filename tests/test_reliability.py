"""Fault injection: SIGKILL mid-run and mid-checkpoint-write, then resume; failure records."""

from __future__ import annotations

import json
import os
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


# -- a full disk: a 1 MiB tmpfs in a private mount namespace (unshare), the run's folder on it ---------------
FULL_DISK_CHILD = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    import vpeft.engine.train as train

    values, disk, mode = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    out = disk / "run" / "metrics.json"
    save = train._save_checkpoint

    def fill_then_save(folder, state):  # something else filled the disk: not even a record fits
        with open(disk / "filler", "wb") as fh:
            try:
                while True:
                    fh.write(bytes(4096))
                    fh.flush()
            except OSError:
                pass
        save(folder, state)

    if mode == "filled":
        train._save_checkpoint = fill_then_save
    try:
        train.run_training(values, out)
        error = None
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    stat = os.statvfs(disk)
    files = sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file())
    record = out.with_name("failed.json")
    print(json.dumps({"error": error, "files": files, "free": stat.f_bavail * stat.f_frsize,
                      "record": json.loads(record.read_text()) if record.is_file() else None}))
""")


def _in_private_tmpfs(values: dict, disk: Path, mode: str) -> dict:
    disk.mkdir()
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    probe = subprocess.run([*unshare, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}")
    result = subprocess.run([*unshare, sys.executable, "-c", FULL_DISK_CHILD, json.dumps(values), str(disk), mode],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_checkpoint_too_big_for_the_disk_leaves_no_tmp_file_and_a_failure_record(vtab_task, tmp_path):
    """The 'full' checkpoint of the demo ViT (several MB) does not fit 1 MiB: the partial file is removed,
    so the space is free again and failed.json holds the error."""
    seen = _in_private_tmpfs(run_values(vtab_task, "full", epochs=2), tmp_path / "disk", "big")
    assert seen["error"] and seen["files"] == ["run/failed.json"], seen["files"]
    assert seen["record"]["status"] == "failed" and seen["record"]["error"] == seen["error"]
    assert seen["free"] > 900 * 1024, "the partial checkpoint's space was given back"


def test_a_run_failing_on_a_full_disk_still_writes_its_failure_record(vtab_task, tmp_path):
    """The disk is full (a filler file) when the checkpoint write fails: the record goes into the room the
    run reserved for it at the start."""
    seen = _in_private_tmpfs(run_values(vtab_task, "lora", epochs=2), tmp_path / "disk", "filled")
    assert seen["free"] < 64 * 1024 and "filler" in seen["files"], "the disk stayed full"
    assert seen["record"] is not None, f"no failed.json: {seen['files']}"
    assert seen["record"]["error"] == seen["error"] and seen["error"]
    assert not [f for f in seen["files"] if f.endswith(".tmp") or "reserve" in f], seen["files"]
