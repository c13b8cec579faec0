"""Running the project's Snakefile in a temporary folder, and reading what Snakemake prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]


def run_workflow(workdir: Path, configfile: Path | None, *args: str, check: bool = True,
                 timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """The project's Snakefile in `workdir` with `configfile`; with `check`, a failure shows its output."""
    config = ["--configfile", str(configfile)] if configfile is not None else []
    cmd = [*SNAKEMAKE, "--directory", str(workdir), *config, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's job-stats table ("job  count" lines) as {rule: count}, the `total` line left out.

    With several tables in `output` (a dry run prints one, a real run one more), the last one wins."""
    counts: dict[str, int] = {}
    for line in output.splitlines():
        parts = line.split()
        if parts == ["job", "count"]:
            counts = {}
        elif len(parts) == 2 and parts[1].isdigit() and re.fullmatch(r"[a-z_]+", parts[0]) and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def job_blocks(output: str) -> list[dict]:
    """Each job of a dry run printed without `--quiet rules`: its rule, wildcards and resources, as
    Snakemake resolved them."""
    jobs: list[dict] = []
    for line in output.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            jobs.append({"rule": line.split()[1].rstrip(":"), "wildcards": {}, "resources": {}})
        elif jobs and line.startswith("    wildcards: "):
            jobs[-1]["wildcards"] = dict(item.split("=", 1) for item in line[len("    wildcards: "):].split(", "))
        elif jobs and line.startswith("    resources: "):
            jobs[-1]["resources"] = dict(item.split("=", 1) for item in line[len("    resources: "):].split(", "))
    return jobs
