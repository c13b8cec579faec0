"""Data-parallel runs (vpeft.engine.ddp) on CPU: gloo, 2 processes under torchrun, the toy ViT.

The equivalence tolerance (trained tensors within 1e-6 + 1e-5 relative, losses within 1e-6 relative; the
metric exactly): 2 ranks each back-propagate their share of a batch and DDP all-reduces the two
gradients, so each batch's gradient is summed in another order than one process sums it, and float32
rounds differently (measured here: at most 2e-8 apart in the trained tensors, 4e-8 relative in the loss).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers.runs import run_values
from safetensors.torch import load_file

from vpeft.engine.ddp import DistributedRunError, ShardedBatchSampler, World, launch, process_count
from vpeft.engine.train import run_training
from vpeft.runs import CHECKPOINT_DIR, FAILURE_RECORD, TRAINED_TENSORS

TESTS = Path(__file__).resolve().parent


def _values(task, **training):
    # 16 training images in batches of 7: 7, 7, 2, so the two ranks' shares (4 + 3, 1 + 1) are uneven
    return run_values(task, "lora", batch_size=7, drop_path=0.0, **training)


@pytest.mark.parametrize("n, batch, world", [(16, 7, 2), (17, 8, 3), (10, 4, 4)])
def test_the_ranks_shares_of_each_step_make_up_one_process_batch(n, batch, world):
    from torch.utils.data import DataLoader

    # what one process's shuffling DataLoader draws
    one = [b.tolist() for b in DataLoader(range(n), batch_size=batch, shuffle=True,
                                          generator=torch.Generator().manual_seed(3))]
    shares = [list(ShardedBatchSampler(n, batch, torch.Generator().manual_seed(3), World(r, world, r)))
              for r in range(world)]
    for step, together in enumerate(zip(*shares)):
        assert sorted(sum(together, [])) == sorted(one[step])
        assert ShardedBatchSampler(n, batch, torch.Generator(), World(0, world)).global_size(step) == len(one[step])
    # a last batch smaller than the world (10 = 4 + 4 + 2 < 4 ranks) is skipped: every rank needs a share
    assert len(shares[0]) == len(one) - (0 < n % batch < world)


def test_processes_follow_the_gpus_unless_set():
    assert [process_count("auto", g) for g in (0, 1, 4)] == [1, 1, 4]
    assert process_count(2, 0) == 2
    with pytest.raises(ValueError, match="distributed.processes"):
        process_count(0, 1)


@pytest.mark.slow
def test_two_processes_of_half_the_batch_end_where_one_process_does(vtab_task, tmp_path):
    """The 2 ranks take the device-resident path (`data_on_device`, sharded the same way; the failure test
    below covers the DataLoader path), the one process the DataLoader: the batches are the same."""
    one = run_training(_values(vtab_task), tmp_path / "one" / "metrics.json")
    two = run_training(_values(vtab_task, data_on_device=True), tmp_path / "two" / "metrics.json", processes=2,
                       backend="gloo", threads=2)
    assert two["train"]["processes"] == 2 and one["train"]["processes"] == 1
    assert (two["train"]["data_path"], one["train"]["data_path"]) == ("device", "loader")
    assert two["metric"] == one["metric"] and two["eval"]["num_images"] == one["eval"]["num_images"] == 10
    assert two["train"]["images"] == one["train"]["images"] == 2 * 16
    assert [h["loss"] for h in two["train"]["history"]] == pytest.approx([h["loss"] for h in one["train"]["history"]],
                                                                          rel=1e-6)
    a, b = load_file(tmp_path / "one" / TRAINED_TENSORS), load_file(tmp_path / "two" / TRAINED_TENSORS)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text()) == two  # written once, by rank 0
    assert not (tmp_path / "two" / CHECKPOINT_DIR).exists() and not (tmp_path / "two" / FAILURE_RECORD).exists()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_a_failing_rank_fails_the_run_and_the_rerun_resumes(vtab_task, tmp_path, monkeypatch, capfd, caplog, fault):
    """Rank 1 fails in epoch 2 of 3 (after epoch 1's checkpoint): the run fails naming rank 1 and its
    error, leaves failed.json and no metrics.json. Run again with healthy ranks, it resumes from epoch 1
    and ends where one uninterrupted process does (within the tolerance of the module docstring)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("VPEFT_TEST_FAULT", fault)
    monkeypatch.setenv("VPEFT_TEST_FAULT_RANK", "1")
    monkeypatch.setenv("VPEFT_TEST_FAULT_EPOCH", "2")
    out = tmp_path / "run" / "metrics.json"
    values = _values(vtab_task, epochs=3)
    expected = "RuntimeError: injected fault in epoch 2" if fault == "raise" else "killed by SIGKILL"
    with pytest.raises(DistributedRunError, match=f"rank 1 of 2 failed: {expected}"):
        launch(values, out, processes=2, backend="gloo", threads=2, worker_module="helpers.ddp_faulty_worker")
    assert not out.exists()
    assert f"rank 1 of 2 failed: {expected}" in json.loads(out.with_name(FAILURE_RECORD).read_text())["error"]
    assert f"rank 1 of 2 failed: {expected}" in caplog.text  # the launcher's line in the job's log
    ranks = capfd.readouterr().err  # what the ranks wrote to the job's stderr (the log)
    if fault == "raise":  # the rank's own traceback, under its prefix
        assert "[rank 1] ERROR vpeft.ddp: failed\nTraceback" in ranks and "injected fault in epoch 2" in ranks
    assert (out.parent / CHECKPOINT_DIR / "state.pt").is_file()
    if fault == "kill":
        return  # resuming is the same after either fault

    resumed = run_training(values, out, processes=2, backend="gloo", threads=2)
    assert resumed["train"]["resumed_from_epoch"] == 1 and not out.with_name(FAILURE_RECORD).exists()
    whole = run_training(values, tmp_path / "one" / "metrics.json")
    assert resumed["metric"] == whole["metric"]
    assert [h["loss"] for h in resumed["train"]["history"]] == pytest.approx(
        [h["loss"] for h in whole["train"]["history"]], rel=1e-6)
    a, b = load_file(tmp_path / "one" / TRAINED_TENSORS), load_file(out.parent / TRAINED_TENSORS)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_loader_workers_default_from_the_jobs_cpus_on_a_gpu_only():
    from vpeft.engine.build import TrainingConfig

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = TrainingConfig()
    assert [auto.loader_workers_on(cuda, t) for t in (1, 2, 8, 64)] == [0, 1, 7, 16]
    assert auto.loader_workers_on(cpu, 8) == 0 and auto.eval_workers_on(cuda, 8) == 7
    assert TrainingConfig(num_workers=3).loader_workers_on(cpu, 1) == 3
    with pytest.raises(ValueError, match="training.num_workers"):
        TrainingConfig(num_workers="many")
