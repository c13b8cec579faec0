"""One table across backbones (vpeft.report.backbones): the same methods on the same data with several
backbones, as a methods x backbones table of mean metrics and a grouped bar plot, in the report."""

from __future__ import annotations

import re

from helpers.runs import write_ok_run

from vpeft.report.backbones import backbone_comparison, comparison_groups
from vpeft.report.build import build_report
from vpeft.report.tables import load_runs

TASKS = ["a", "b"]
# top-1 per task of each (suite, method); None: that task never ran
RUNS = {
    "vtab-vitb": {"linear": (0.50, 0.60), "lora": (0.70, 0.80), "ssf": (0.60, 0.70)},
    "vtab-dinov2": {"linear": (0.65, 0.75), "lora": (0.80, 0.90), "ssf": (0.75, None)},
    "vtab-clip": {"lora": (0.60, 0.70)},
    "other": {"lora": (0.90, 0.90)},
}
BACKBONES = {"vtab-vitb": "vit-b16-in21k", "vtab-dinov2": "dinov2-vitb14", "vtab-clip": "clip-vitb16-openai",
             "other": "dinov2-vitb14"}


def _suites():
    return {name: {"title": name, "kind": "image", "tasks": TASKS, "notes": [], "groups": None,
                   "data_suite": "other" if name == "other" else "vtab", "backbone": BACKBONES[name],
                   "methods": list(RUNS[name]), "protocol": "vtab1k", "families": {}, "published": None}
            for name in RUNS}


def _paths(tmp_path):
    paths = []
    for suite, methods in RUNS.items():
        for method, values in methods.items():
            for task, value in zip(TASKS, values):
                path = tmp_path / "results" / suite / method / task / "seed-42" / "metrics.json"
                if value is not None:
                    write_ok_run(tmp_path, suite, method, task, 42, value, 1000)
                paths.append(path)
    return paths


def test_suites_of_the_same_data_on_several_backbones_form_one_table(tmp_path):
    suites = _suites()
    assert comparison_groups(suites) == {"vtab": ["vtab-vitb", "vtab-dinov2", "vtab-clip"]}  # `other`: one backbone
    [section] = backbone_comparison(load_runs(_paths(tmp_path)), suites)
    assert [c["backbone"] for c in section["columns"]] == ["vit-b16-in21k", "dinov2-vitb14", "clip-vitb16-openai"]
    cells = {r["method"]: [c["text"] for c in r["cells"]] for r in section["rows"]}
    # means over the two tasks; ssf on dinov2 misses task b (no mean), linear was not run with CLIP
    assert cells == {"linear": ["55.0", "70.0", "\u2013"], "lora": ["75.0", "85.0", "65.0"],
                     "ssf": ["65.0", "\u2013", "\u2013"]}
    best = {r["method"]: [c["best"] for c in r["cells"]] for r in section["rows"]}
    assert best["lora"] == [False, True, False] and best["ssf"] == [False, False, False]
    plot = section["plot"]
    assert plot["n_marks"] == 2 + 3 + 1
    assert re.findall(r'id="(plot-vtab-backbones-mark-[^"]+)"', str(plot["svg"])) == [
        "plot-vtab-backbones-mark-linear-vtab-vitb", "plot-vtab-backbones-mark-lora-vtab-vitb",
        "plot-vtab-backbones-mark-ssf-vtab-vitb", "plot-vtab-backbones-mark-linear-vtab-dinov2",
        "plot-vtab-backbones-mark-lora-vtab-dinov2", "plot-vtab-backbones-mark-lora-vtab-clip"]
    assert "lora with dinov2-vitb14: 85.0" in plot["desc"]


def test_the_report_shows_the_table_and_plot_and_names_each_suites_backbone(tmp_path):
    out = tmp_path / "index.html"
    build_report(_paths(tmp_path), _suites(), out)
    page = out.read_text()
    section = page[page.index('<section id="backbones-vtab"'):]
    section = section[:section.index("</section>")]
    assert "Across backbones" in section and '<figure id="plot-vtab-backbones"' in section
    assert section.count("<tr>") == 1 + 3  # header + linear, lora, ssf
    assert "<strong>85.0</strong>" in section
    for suite, backbone in BACKBONES.items():
        assert re.search(rf'<section id="suite-{suite}">.*?backbone {backbone}', page, re.S), suite


def test_no_section_without_a_second_backbone(tmp_path):
    suites = {k: v for k, v in _suites().items() if k in ("vtab-vitb", "other")}
    assert backbone_comparison(load_runs(_paths(tmp_path)), suites) == []
    out = tmp_path / "index.html"
    build_report(_paths(tmp_path), suites, out)
    assert "Across backbones" not in out.read_text()
