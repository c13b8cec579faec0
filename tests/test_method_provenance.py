"""Every method says how it was verified (official code, paper, or the project's variant), the CLI
prints it, and the report marks every row that is not an official-code port."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from vpeft.cli import main
from vpeft.methods import MethodConfig, MethodError, PeftMethod, Provenance, available_methods, get_method_class
from vpeft.methods.base import PROVENANCE_KINDS, official_code
from vpeft.methods.registry import method_report_info, register_method
from vpeft.report.html import build_context, render_report
from vpeft.report.tables import load_runs

METHODS = available_methods()


@pytest.mark.parametrize("name", METHODS)
def test_every_method_declares_a_complete_provenance(name):
    prov = get_method_class(name).provenance
    assert isinstance(prov, Provenance) and prov.kind in PROVENANCE_KINDS
    if prov.kind == "official-code":
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", prov.repo), prov.repo
        # a port names the commit it was compared with; code run from an installed package (the peft-*
        # methods) names the version that runs instead
        assert re.fullmatch(r"[0-9a-f]{40}", prov.commit) or (prov.version and not prov.commit), prov.commit
        assert prov.files and all(f.strip() and not f.startswith("/") for f in prov.files)
    elif prov.kind == "paper":
        assert prov.sections and all(s.strip() for s in prov.sections)
    else:
        assert prov.why.strip()
    assert prov.problems() == []


def test_the_table_has_every_kind_and_hst_is_not_silently_official():
    kinds = {get_method_class(n).provenance.kind for n in METHODS}
    assert kinds == set(PROVENANCE_KINDS)
    for name in ("last", "u-tuning", "e3va"):  # no official code was found for these
        assert get_method_class(name).provenance.kind == "paper", name


@pytest.mark.parametrize("bad, message", [
    (None, "set `provenance`"),
    (Provenance("official-code", repo="KMnP/vpt", commit="abc", files=("x.py",)), "40-hex commit"),
    (Provenance("official-code", repo="o/r", commit="abc", files=("x.py",), version="1.0"), "40-hex commit"),
    (Provenance("official-code", repo="vpt", commit="0" * 40, files=("x.py",)), "repo 'owner/name'"),
    (Provenance("official-code", repo="KMnP/vpt", commit="0" * 40), "file"),
    (Provenance("paper"), "sections"),
    (Provenance("variant"), "why"),
    (Provenance("guess", why="x"), "kind must be one of"),
])
def test_registering_without_a_complete_provenance_is_refused(bad, message):
    attrs = {"name": "probe-method", "category": "addition", "config_cls": MethodConfig, "paper": "Probe, 2026"}
    if bad is not None:
        attrs["provenance"] = bad
    with pytest.raises(MethodError, match=re.escape(message)):
        register_method(type("Probe", (PeftMethod,), attrs))
    assert "probe-method" not in available_methods()


def test_cli_prints_the_provenance_of_every_method(capsys):
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(METHODS)
    for name, row in rows.items():
        prov = get_method_class(name).provenance
        assert row["verified"] == prov.kind and row["provenance"]["commit"] == prov.commit
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    lora = get_method_class("lora").provenance
    assert f"{lora.repo}@{lora.commit[:7]}" in text


def test_summary_names_repo_commit_and_files():
    prov = official_code("o/r", "a" * 40, "m.py", "n.py", notes="one gap")
    assert prov.summary() == "official-code: o/r@aaaaaaa (m.py, n.py). one gap"


class _RowMarks(HTMLParser):
    """Method row header -> the classes of the spans inside it, and whether the legend is present."""

    def __init__(self):
        super().__init__()
        self.rows, self.legend, self._row, self._in_th = {}, False, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "p" and "verified-legend" in (a.get("class") or ""):
            self.legend = True
        if tag == "th" and a.get("scope") == "row":
            self._in_th, self._row = True, None
        elif tag == "span" and self._in_th and self._row:
            self.rows[self._row].append((a.get("class"), a.get("title") or ""))

    def handle_data(self, data):
        if self._in_th and self._row is None and data.strip():
            self._row = data.strip()
            self.rows.setdefault(self._row, [])

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False


def _write_run(root, method, task):
    path = root / "results" / "vtab-mini" / method / task / "seed-1" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "schema": "vpeft.run/1", "status": "ok", "suite": "vtab-mini", "task": task, "method": method, "seed": 1,
        "protocol": {"name": "vtab1k", "train_split": "train800val200", "eval_split": "test"},
        "metric": {"name": "top1", "value": 0.5},
        "params": {"trainable": 10, "trainable_with_head": 20, "head": 10, "backbone_total": 100},
        "train": {"epochs": 1, "images_per_second": 1.0, "wall_seconds": 1.0, "peak_memory_mb": 1.0,
                  "final_loss": 0.1, "history": []},
        "eval": {"split": "test", "num_images": 10, "wall_seconds": 1.0, "merged": False},
        "config": {"backbone": {"name": "vit-demo", "arch": "a"}, "method": {"name": method, "hparams": {}},
                   "training": {"epochs": 1}},
        "provenance": {"vpeft_version": "0", "git_commit": "x", "git_dirty": False, "packages": {},
                       "hardware": {}, "threads": 1, "python": "3", "created": "2026-01-01T00:00:00Z"},
    }))
    return path


def test_report_marks_every_row_that_is_not_an_official_code_port(tmp_path):
    methods = ["lora", "last", "lst", "dtl"]  # official, paper, variant, official
    kinds = {m: get_method_class(m).provenance.kind for m in methods}
    assert sorted(set(kinds.values())) == ["official-code", "paper", "variant"]
    paths = [_write_run(tmp_path, m, t) for m in methods for t in ("a", "b")]
    suites = {"vtab-mini": {"title": "Mini", "methods": methods, "tasks": ["a", "b"], "published": None,
                            "families": {m: method_report_info(m) for m in methods}}}
    out = tmp_path / "r.html"
    render_report(build_context(load_runs(paths), suites), out)
    parser = _RowMarks()
    parser.feed(out.read_text())
    assert parser.legend
    for method, kind in kinds.items():
        marks = [title for cls, title in parser.rows[method] if cls == "unported"]
        if kind == "official-code":
            assert marks == [], method
        else:
            assert len(marks) == 1 and get_method_class(method).provenance.summary() in marks[0], method
