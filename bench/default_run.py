"""Section `demo`: the wall time of the default `snakemake --cores all` from nothing.

The committed HEAD is cloned into a temporary folder (so nothing already built in this checkout is
reused: data generation, every training run, tables, report) and the workflow runs there with this
Python's snakemake. Uncommitted changes are not measured; the record says which commit was.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cores: str = "all") -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="vpeft-demo-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        start, cpu_start = time.perf_counter(), _children_cpu()
        result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", cores], cwd=clone,
                                capture_output=True, text=True)
        wall, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise RuntimeError(f"snakemake --cores {cores} failed in {clone}:\n{output[-3000:]}")
        jobs = re.search(r"^total\s+(\d+)\s*$", output, re.MULTILINE)
        training = sum(int(n) for n in re.findall(r"^train_(?:dense_)?run\s+(\d+)\s*$", output, re.MULTILINE))
        report = (clone / "reports" / "index.html").is_file()
    if not report:
        raise RuntimeError("the default run finished without reports/index.html")
    return {"commit": commit, "cores": cores, "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "jobs": int(jobs.group(1)) if jobs else None, "training_jobs": training, "budget_seconds": 900}
