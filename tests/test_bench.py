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
    fake.run = lambda: {"commit": "x", "cores": "all", "wall_seconds": 848.0, "cpu_seconds": 1500.0, "jobs": 93,
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
    assert rows[-1][-1] == "no"


def test_unknown_section_is_refused(bench_run):
    with pytest.raises(SystemExit, match="unknown section"):
        bench_run.main(["--only", "lora,bogus"])
