"""The speed benchmark's results (bench/run.py -> bench/results/latest.json) as a report table.

The report shows the benchmark's own summary rows (measure, value, goal, met) with where and when it
was measured; it never re-times anything, so the table is only as fresh as the JSON it names. Each row
belongs to a bench section, and each section records its own commit and date (`section_provenance`,
`--update` re-measures one section): a row measured at another commit than the report's is marked with
that commit and date. Rows for developers only (import time against an old baseline commit) and GPU-hour
extrapolations (the one source of GPU-hours is `vpeft plan`) stay out of the user's report.
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


#: The bench section each top-level summary row comes from, by the start of its measure (bench/run.py's
#: `summary` writes them in this order; indented rows belong to the row above).
SECTION_OF = (("LoRA train step", "lora"), ("linear:", "cache"), ("partial:", "cache"),
              ("merged / plain", "merge"), ("side-tuning", "methods"), ("ViT-B/16", "vitb"), ("input:", "input"),
              ("training job imports", "imports"), ("VTAB-1k", "vtab1k-gpu"), ("concurrent runs", "concurrency"),
              ("default `snakemake", "demo"))
#: Sections that measure the project's own history (against a baseline commit), not what a user gets.
DEVELOPER_SECTIONS = frozenset({"imports"})
#: Rows left out: GPU-hour extrapolations (`vpeft plan` is the one source of GPU-hours).
LEFT_OUT = ("device-hours",)


def _sections(rows: list[dict]) -> list[str | None]:
    out, current = [], None
    for row in rows:
        measure = str(row["measure"])
        if not measure.startswith(" "):
            current = next((s for prefix, s in SECTION_OF if measure.startswith(prefix)), None)
        out.append(row.get("section") or current)
    return out


def load_speed_benchmark(path: str | Path, current_commit: str | None = None) -> dict:
    """The speed table; `current_commit`: the report's own commit (rows measured at another are marked)."""
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
    summary = list(data.get("summary", []))
    section_prov = data.get("section_provenance") or {}
    rows = []
    for row, section in zip(summary, _sections(summary)):
        if section in DEVELOPER_SECTIONS or any(s in str(row["measure"]) for s in LEFT_OUT):
            continue
        where = section_prov.get(section) or prov
        commit = str(where.get("git_commit") or "")
        same = bool(current_commit) and commit == current_commit and not where.get("git_dirty")
        rows.append({"measure": str(row["measure"]).strip(), "sub": str(row["measure"]).startswith(" "),
                     "value": str(row["value"]), "goal": str(row["goal"]), "met": str(row["met"]),
                     "measured": "" if same else f"{str(where.get('created') or 'date not recorded')[:10]}, "
                                                 f"{commit[:7] or 'commit not recorded'}"
                                                 f"{' (uncommitted changes)' if where.get('git_dirty') else ''}"})
    return {
        "path": repo_relative(path),
        "machine": machine or "not recorded",
        "commit": str(prov.get("git_commit") or prov.get("git") or "not recorded")[:12],
        "created": str(prov.get("created") or prov.get("time") or "not recorded"),
        "setup": ", ".join(f"{k} {args[k]}" for k in ("device", "threads", "arch", "img_size", "batch",
                                                        "precision") if k in args),
        "current_commit": (current_commit or "not recorded")[:12],
        "all_current": bool(rows) and not any(r["measured"] for r in rows),
        "rows": rows,
    }


def speed_markdown(path: str | Path) -> str:
    """docs/speed.md: the benchmark's table with each row's commit and date, written from its record (by
    bench/run.py after every run, or `python -m vpeft.report.speed`), never retyped."""
    speed = load_speed_benchmark(path)
    lines = ["# Speed benchmark", "",
             f"Written by `bench/run.py` from `{speed['path']}` (do not edit by hand; re-run the benchmark, or "
             f"`python -m vpeft.report.speed` to rewrite this page from the record). Machine: {speed['machine']}; "
             f"{speed['setup'] or 'default settings'}. Each row gives the date and commit its section was measured "
             "at; how each number is taken: `bench/README.md`. GPU-hours: `vpeft plan`.", "",
             "| measure | value | goal | met | measured (date, commit) |", "|---|---|---|---|---|"]
    for r in speed["rows"]:
        measure = ("&nbsp;&nbsp;" if r["sub"] else "") + r["measure"]
        lines.append(f"| {measure} | {r['value']} | {r['goal']} | {r['met']} | {r['measured']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="write docs/speed.md from the speed benchmark's record")
    parser.add_argument("record", nargs="?", default="bench/results/latest.json")
    parser.add_argument("-o", "--out", default="docs/speed.md")
    args = parser.parse_args(argv)
    Path(args.out).write_text(speed_markdown(args.record))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
