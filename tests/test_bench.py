"""bench/run.py's bookkeeping (not its timings): the summary rows and `--update`, which re-measures one
section and keeps the others with the commit each was measured at."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench_run(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import run

    return run


def test_update_replaces_only_the_measured_section(bench_run, tmp_path, monkeypatch):
    out = tmp_path / "latest.json"
    previous = {"schema": "vpeft.bench/1", "results": {"vitb": {"images_per_second": 0.8, "achieved_tflops": 0.08,
                                                                "mfu": None}},
                "section_seconds": {"vitb": 27.0}, "section_cpu_seconds": {"vitb": 27.0},
                "provenance": {"git_commit": "oldcommit", "git_dirty": False, "created": "2026-11-01T00:00:00+00:00"}}
    out.write_text(json.dumps(previous))
    fake = types.ModuleType("default_run")
    fake.run = lambda **_: {"commit": "x", "cores": "all", "wall_seconds": 848.0, "cpu_seconds": 1500.0, "jobs": 93,
                        "training_jobs": 68, "budget_seconds": 900}
    monkeypatch.setitem(sys.modules, "default_run", fake)
    assert bench_run.main(["--only", "demo", "--update", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert list(record["results"]) == ["vitb", "demo"]  # the benchmark's section order
    assert record["section_provenance"]["vitb"]["git_commit"] == "oldcommit"
    assert record["section_provenance"]["demo"]["git_commit"] == record["provenance"]["git_commit"]
    rows = {r["measure"]: r for r in record["summary"]}
    demo = rows["default `snakemake --cores all` from nothing (93 jobs)"]
    assert demo["value"] == "14.1 min (25.0 CPU-min)" and demo["met"] == "yes"
    assert "ViT-B/16 full-FT step" in rows

    # without --update the file holds only what this run measured
    assert bench_run.main(["--only", "demo", "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["results"]) == ["demo"]


def test_over_budget_default_run_is_not_met(bench_run):
    rows = bench_run.summary({"demo": {"cores": "all", "wall_seconds": 901.0, "cpu_seconds": 1700.0, "jobs": 93,
                                       "budget_seconds": 900}})
    assert rows[-2][-1] == "no" and rows[-1][-1] == "no"


def test_unknown_section_is_refused(bench_run):
    with pytest.raises(SystemExit, match="unknown section"):
        bench_run.main(["--only", "lora,bogus"])


def test_lora_overhead_is_measured_above_the_floor(bench_run):
    rounds = {"ours": [1.10, 1.05, 1.20], "peft": [1.20, 1.30, 1.25], "floor": [1.0, 1.0, 1.0]}
    lora = {"device": "cpu", "seconds_per_step": {k: {"rounds": {"cpu": v, "wall": [9.0] * 3}} for k, v in rounds.items()}}
    over = bench_run.lora_overhead(lora)
    assert over["ours"] == pytest.approx(0.10) and over["peft"] == pytest.approx(0.25)
    assert over["ratio"] == pytest.approx(0.4)


def test_import_time_is_the_sum_of_self_times(bench_run):
    import import_cost

    log = ("import time: self [us] | cumulative | imported package\n"
           "import time:       100 |        100 |     b\n"
           "import time:      2000 |       2100 |   a\n")
    assert import_cost.import_ms(log) == 2.1


@pytest.mark.slow
def test_vtab1k_section_runs_at_cpu_size_and_extrapolates(bench_run, tmp_path):
    """The GPU section's code path at its CPU fallback size: whole engine runs, summary rows, the
    image benchmark's device-hours from the measured family."""
    out = tmp_path / "latest.json"
    assert bench_run.main(["--only", "vtab1k-gpu", "--device", "cpu", "--vtab-methods", "lora", "--out", str(out)]) == 0
    section = json.loads(out.read_text())["results"]["vtab1k-gpu"]
    run = section["runs"]["lora"]
    assert section["size"] == "cpu" and run["family"] == "reparameterization" and run["precision"] == "fp32"
    assert run["train_images_per_second"] > 0 and run["train_gflops_per_image"] > 0 and run["mfu"] is None
    assert run["wall_seconds"] >= run["train_seconds"] + run["eval_seconds"] > 0
    bench = section["full_image_benchmark"]
    assert bench["tasks"] == 19 and bench["methods"] >= 26 and bench["runs"] == bench["tasks"] * bench["methods"]
    assert bench["gpu_hours"] > 0
    rows = {r["measure"]: r for r in json.loads(out.read_text())["summary"]}
    assert rows["VTAB-1k run (cpu size, cpu): lora"]["met"] == "n/a (CPU size)"


@pytest.mark.slow
def test_concurrency_section_runs_k_jobs_at_once(bench_run):
    import concurrency

    result = concurrency.run("cpu", ks=(1, 2), runs=2)
    assert set(result["k"]) == {"1", "2"} and result["k"]["1"]["speedup_over_k1"] == 1.0
    assert all(e["runs_per_hour"] > 0 and e["wall_seconds"] > 0 for e in result["k"].values())


def test_input_section_sizes_workers_from_the_step_rate(bench_run):
    """Workers to feed the step = the step's rate / one worker's (at the most workers measured); clips
    count as the clip / image FLOPs ratio of images."""
    import input_pipeline

    def rate(per_second, workers):
        return {"per_second": per_second, "per_second_per_worker": per_second / workers}

    rates = {"images": {"1": rate(150.0, 1), "2": rate(280.0, 2)}, "clips": {"1": rate(12.0, 1), "2": rate(24.0, 2)}}
    out = input_pipeline.ratios(rates, 1000.0, 10.0)
    assert out["images"]["per_second_per_worker"] == 140.0 and out["images"]["workers_to_feed_step"] == 8
    assert out["images"]["scaling"] == pytest.approx(280 / 300)
    assert out["clips"]["step_per_second"] == 100.0 and out["clips"]["workers_to_feed_step"] == 9
    rows = {r[0]: r[1] for r in bench_run.summary({"input": {**out, "step": {"device": "cuda"}}})}
    assert rows["input: images/s per DataLoader worker (by workers)"] == "1: 150.0, 2: 140.0 (scaling 0.93)"
    assert rows["  ViT-B/16 step img/s / one worker's"] == "1000.0 / 140.0 = 7.14: 8 worker(s) per cuda process"


@pytest.mark.slow
def test_input_section_runs_on_cpu(bench_run, tmp_path):
    """The section's whole path at its smallest: generated JPEGs and mp4s through real DataLoader workers
    (decord for the clips) and the ViT-B/16 step measured on this machine."""
    out = tmp_path / "latest.json"
    assert bench_run.main(["--only", "input", "--device", "cpu", "--input-seconds", "0.5", "--input-images", "6",
                           "--input-videos", "2", "--input-batch", "4", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    section = record["results"]["input"]
    assert section["step"]["device"] == "cpu" and section["step"]["images_per_second"] > 0
    for kind in ("images", "clips"):
        assert set(section[kind]["by_workers"]) == {"1", "2"}
        assert all(r["samples"] > 0 and r["per_second"] > 0 for r in section[kind]["by_workers"].values())
        assert section[kind]["workers_to_feed_step"] >= 1
    assert section["clip_over_image_flops"] > 1  # 8 frames of tubelet 2: ~4x an image's tokens
    measures = [r["measure"] for r in record["summary"]]
    assert "input: clips/s per DataLoader worker (by workers)" in measures
