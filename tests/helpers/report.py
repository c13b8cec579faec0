"""The report's tables read back as data, so that a test checks the cell or the list entry that shows a
result, not a word that the page always contains (the stylesheet names `missing`, `failed`, `PPT`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


@dataclass
class Cell:
    text: str
    classes: frozenset[str] = frozenset()
    title: str = ""


@dataclass
class Table:
    heading: str  # the <h3> above it
    header: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)  # <th scope="row"> included, as the first cell
    row_classes: list[frozenset[str]] = field(default_factory=list)


@dataclass
class Suite:
    name: str
    meta: str = ""  # the line under the title: backbone, metric, "n of m runs succeeded"
    tables: list[Table] = field(default_factory=list)

    def table(self, heading_prefix: str) -> Table:
        found = [t for t in self.tables if t.heading.startswith(heading_prefix)]
        assert len(found) == 1, f"suite {self.name}: {len(found)} tables under a heading '{heading_prefix}...'"
        return found[0]

    def cell(self, method: str, column: str) -> Cell:
        """The results-table cell of `method` (the row of our run, not the published row) in `column`
        (a task for the image and video tracks, a metric label such as 'AP box' for the dense track)."""
        results = self.table("Results")
        col = results.header.index(column)
        rows = [r for r, cls in zip(results.rows, results.row_classes)
                if "ours" in cls and r[0].text.split()[0] == method]
        assert len(rows) == 1, f"suite {self.name}: {len(rows)} rows of our runs for method {method}"
        return rows[0][col]

    def failures(self) -> list[dict[str, str]]:
        """The entries of 'Missing / failed runs' as dicts (method, task, seed, status, reason), the status
        taken from the cell's class, the one that colours it."""
        if not any(t.heading.startswith("Missing / failed runs") for t in self.tables):
            return []
        out = []
        for row in self.table("Missing / failed runs").rows:
            method, task, seed, status, reason = row
            out.append({"method": method.text, "task": task.text, "seed": seed.text, "status": status.text,
                        "status_class": " ".join(sorted(status.classes - {"left"})), "reason": reason.text})
        return out


class _Reader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.suites: dict[str, Suite] = {}
        self.suite: Suite | None = None
        self.heading = ""
        self.text: list[str] | None = None  # collecting text of the current h3, p.meta or cell
        self.target = ""
        self.table: Table | None = None
        self.row: list[Cell] | None = None
        self.cell_attrs: dict = {}
        self.in_head = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and (a.get("id") or "").startswith("suite-"):
            self.suite = Suite(a["id"][len("suite-"):])
            self.suites[self.suite.name] = self.suite
        elif self.suite is None:
            return
        elif tag == "h3" or (tag == "p" and "meta" in (a.get("class") or "").split() and not self.suite.meta):
            self.text, self.target = [], tag
        elif tag == "table":
            self.table, self.in_head = Table(self.heading), False
            self.suite.tables.append(self.table)
        elif tag == "thead":
            self.in_head = True
        elif tag == "tbody":
            self.in_head = False
        elif tag == "tr" and self.table is not None:
            self.row = []
            if not self.in_head:
                self.table.row_classes.append(frozenset((a.get("class") or "").split()))
        elif tag in ("td", "th") and self.row is not None:
            self.text, self.target, self.cell_attrs = [], tag, a
        elif tag == "br" and self.text is not None:
            self.text.append(" ")

    def handle_data(self, data):
        if self.text is not None:
            self.text.append(data)

    def handle_endtag(self, tag):
        if self.suite is None:
            return
        text = " ".join("".join(self.text or []).split())
        if tag == "section":
            self.suite = None
        elif tag == self.target == "h3":
            self.heading, self.text = text, None
        elif tag == self.target == "p":
            self.suite.meta, self.text = text, None
        elif tag in ("td", "th") and tag == self.target and self.row is not None:
            self.row.append(Cell(text, frozenset((self.cell_attrs.get("class") or "").split()),
                                 self.cell_attrs.get("title") or ""))
            self.text = None
        elif tag == "tr" and self.row is not None and self.table is not None:
            if self.in_head:
                self.table.header = [c.text for c in self.row]
            else:
                self.table.rows.append(self.row)
            self.row = None
        elif tag == "table":
            self.table = None


def read_report(path: Path) -> dict[str, Suite]:
    """{suite name: Suite} of a rendered reports/index.html."""
    reader = _Reader()
    reader.feed(Path(path).read_text())
    return reader.suites
