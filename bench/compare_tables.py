"""Whether two sets of suite tables are identical to the last digit (byte for byte).

    python bench/compare_tables.py RESULTS_DIR REFERENCE_DIR [SUITE ...]

RESULTS_DIR holds <suite>/table.csv (a checkout's results/), REFERENCE_DIR either the same layout or
flat <suite>.csv files (e.g. /work/shared/reference/default-run-7ad9f45/). Without SUITE: every
suite of REFERENCE_DIR. Prints one line per suite and the first differing row; exit status 1 if any differs.
"""

from __future__ import annotations

import sys
from pathlib import Path


def table(folder: Path, suite: str) -> Path:
    nested = folder / suite / "table.csv"
    return nested if nested.is_file() else folder / f"{suite}.csv"


def suites_of(folder: Path) -> list[str]:
    flat = sorted(p.stem for p in folder.glob("*.csv"))
    return flat or sorted(p.parent.name for p in folder.glob("*/table.csv"))


def compare(results: Path, reference: Path, suites: list[str] | None = None) -> dict[str, str | None]:
    """suite -> None when identical, else what differs."""
    found = {}
    for suite in suites or suites_of(reference):
        a, b = table(results, suite), table(reference, suite)
        if not a.is_file() or not b.is_file():
            found[suite] = f"missing: {a if not a.is_file() else b}"
            continue
        rows_a, rows_b = a.read_text().splitlines(), b.read_text().splitlines()
        if rows_a == rows_b:
            found[suite] = None
            continue
        first = next((i for i, (x, y) in enumerate(zip(rows_a, rows_b)) if x != y), min(len(rows_a), len(rows_b)))
        found[suite] = (f"row {first}: {rows_a[first] if first < len(rows_a) else '<none>'!r} vs "
                        f"{rows_b[first] if first < len(rows_b) else '<none>'!r}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    found = compare(Path(argv[0]), Path(argv[1]), argv[2:] or None)
    for suite, diff in found.items():
        print(f"{suite:24s} {'identical' if diff is None else 'DIFFERS ' + diff}")
    return 0 if found and all(d is None for d in found.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
