"""Section `demo`: the default `snakemake --cores all` from nothing, at HEAD and at a baseline commit,
side by side on this machine, and the ratios baseline / HEAD of wall and CPU time.

Both commits are cloned into a temporary folder (so nothing already built in this checkout is reused:
data generation, every training run, tables, report) and run with this Python's snakemake, each with
PYTHONPATH at its own src/. `together` (default) runs both at once, so both see the same load from
whatever else runs on the machine; `sequential` runs the baseline first, then HEAD. The CPU time is
that of each run's whole process tree (bench/process_tree.py), which other load moves far less than the
wall time. Uncommitted changes are not measured; the record says which commits were. The suite tables
of both runs must be identical (bench/compare_tables.py), and to `reference` when given.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO

#: The commit before the speed work of issue #25 (its default run: 93 jobs, 68 training processes).
BASELINE = "7ad9f45"


def _commit(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", ref], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def _clone(commit: str, into: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(into)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=into, check=True)
    return into


def _start(clone: Path, cores: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(clone / "src")}
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("process_tree.py")),
                             str(clone / "bench-tree.json"), str(clone / "bench-console.txt"), "--",
                             sys.executable, "-m", "snakemake", "--cores", cores], cwd=clone, env=env)


def _finish(clone: Path, commit: str, cores: str) -> dict:
    tree = json.loads((clone / "bench-tree.json").read_text())
    output = (clone / "bench-console.txt").read_text()
    if tree["returncode"] != 0:
        raise RuntimeError(f"snakemake --cores {cores} failed in {clone} (commit {commit[:7]}):\n{output[-3000:]}")
    if not (clone / "reports" / "index.html").is_file():
        raise RuntimeError(f"the default run of {commit[:7]} finished without reports/index.html")
    jobs = re.search(r"^total\s+(\d+)\s*$", output, re.MULTILINE)
    training = sum(int(n) for n in re.findall(r"^train_(?:dense_)?run\s+(\d+)\s*$", output, re.MULTILINE))
    return {"commit": commit, "wall_seconds": round(tree["wall_seconds"], 1),
            "cpu_seconds": round(tree["cpu_seconds"], 1), "jobs": int(jobs.group(1)) if jobs else None,
            "training_jobs": training or None, "load_average_before": tree["load_average_before"],
            "load_average_after": tree["load_average_after"]}


def run(cores: str = "all", baseline: str = BASELINE, mode: str = "together", reference: str | None = None) -> dict:
    from compare_tables import compare

    if mode not in ("together", "sequential"):
        raise ValueError(f"mode must be together or sequential, not {mode!r}")
    head, base = _commit("HEAD"), _commit(baseline)
    with tempfile.TemporaryDirectory(prefix="vpeft-demo-") as tmp:
        clones = {"baseline": _clone(base, Path(tmp) / "baseline"), "head": _clone(head, Path(tmp) / "head")}
        commits = {"baseline": base, "head": head}
        start, load = time.time(), os.getloadavg()
        if mode == "together":
            procs = {name: _start(clone, cores) for name, clone in clones.items()}
            for proc in procs.values():
                proc.wait()
        else:
            for clone in clones.values():
                _start(clone, cores).wait()
        runs = {name: _finish(clone, commits[name], cores) for name, clone in clones.items()}
        tables = compare(clones["head"] / "results", clones["baseline"] / "results",
                         suites=[p.parent.name for p in sorted((clones["baseline"] / "results").glob("*/table.csv"))])
        against_reference = compare(clones["head"] / "results", Path(reference)) if reference else None
    now, base_run = runs["head"], runs["baseline"]
    return {"commit": head, "cores": cores, "wall_seconds": now["wall_seconds"], "cpu_seconds": now["cpu_seconds"],
            "jobs": now["jobs"], "training_jobs": now["training_jobs"], "budget_seconds": 900,
            "mode": mode, "baseline": base_run, "head": now,
            "wall_ratio_baseline_over_head": round(base_run["wall_seconds"] / now["wall_seconds"], 3),
            "cpu_ratio_baseline_over_head": round(base_run["cpu_seconds"] / now["cpu_seconds"], 3),
            "tables_identical": bool(tables) and all(d is None for d in tables.values()),
            "table_differences": {s: d for s, d in tables.items() if d is not None},
            "reference": reference,
            "reference_differences": (None if against_reference is None else
                                      sorted(s for s, d in against_reference.items() if d is not None)),
            "identical_to_reference": (None if against_reference is None else
                                       bool(against_reference) and all(d is None for d in against_reference.values())),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)), "load_average_at_start": load,
            "cpu_count": os.cpu_count()}
