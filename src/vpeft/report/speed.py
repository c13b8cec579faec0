"""The speed benchmark's results (bench/run.py -> bench/results/latest.json) as a report table.

The report shows the benchmark's own summary rows (measure, value, goal, met) with where and when it
was measured; it never re-times anything, so the table is only as fresh as the JSON it names.
"""

from __future__ import annotations

from pathlib import Path

from ..io import read_json

BENCH_SCHEMA = "vpeft.bench/1"


def repo_relative(path: Path) -> str:
    """`path` relative to the repository that holds it (the nearest folder above with a Snakefile or
    .git), so the report never shows where the machine that built it keeps its checkout."""
    path = path.resolve()
    for parent in path.parents:
        if (parent / "Snakefile").is_file() or (parent / ".git").exists():
            return path.relative_to(parent).as_posix()
    return path.name


def load_speed_benchmark(path: str | Path) -> dict:
    path = Path(path)
    data = read_json(path)
    if data.get("schema") != BENCH_SCHEMA:
        raise ValueError(f"{path}: not a speed benchmark record (schema {data.get('schema')!r}, "
                         f"expected {BENCH_SCHEMA!r})")
    prov = data.get("provenance") or {}
    hardware = prov.get("hardware") or {}
    machine = ", ".join(str(v) for v in (hardware.get("cpu"), f"{hardware.get('cpu_count')} CPUs"
                                         if hardware.get("cpu_count") else None,
                                         hardware.get("cuda") or "no GPU") if v)
    args = data.get("args") or {}
    return {
        "path": repo_relative(path),
        "machine": machine or "not recorded",
        "commit": str(prov.get("git_commit") or prov.get("git") or "not recorded")[:12],
        "created": str(prov.get("created") or prov.get("time") or "not recorded"),
        "setup": ", ".join(f"{k} {args[k]}" for k in ("device", "threads", "arch", "img_size", "batch",
                                                        "precision") if k in args),
        "rows": [{"measure": str(r["measure"]).strip(), "sub": str(r["measure"]).startswith(" "),
                  "value": str(r["value"]), "goal": str(r["goal"]), "met": str(r["met"])}
                 for r in data.get("summary", [])],
    }
