"""The report's plots and per-track labels, built from small fabricated run files (no training).

Plots: per suite a trade-off plot (metric against trainable parameters, one mark per method, Pareto
front, published points) and a PPT bar chart, inline SVG with <title>/<desc>, marks findable by id.
Labels: every section names its own protocol and metric in its header elements, and the report shows
no absolute path of the machine that built it.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from vpeft.report.build import build_report
from vpeft.report.families import FAMILY_COLOURS, FAMILY_TITLES
from vpeft.report.html import build_context, render_html
from vpeft.report.plot_data import Mark
from vpeft.report.plots import pareto_front
from vpeft.report.published import VTAB_TASKS, load_published
from vpeft.report.tables import load_runs
from vpeft.runs import RUN_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# --------------------------------------------------------------------------------------------
# a small element tree of the rendered page, to look at the element that shows a thing
# --------------------------------------------------------------------------------------------


class Element:
    def __init__(self, tag: str, attrs: dict, parent: Element | None):
        self.tag, self.attrs, self.parent, self.children, self.parts = tag, attrs, parent, [], []

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def text(self) -> str:
        return " ".join("".join(p if isinstance(p, str) else p.text() for p in self.parts).split())

    def iter(self):
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, id_prefix: str | None = None):
        return [e for e in self.iter() if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
                and (id_prefix is None or (e.attrs.get("id") or "").startswith(id_prefix))]

    def find(self, tag=None, cls=None, id_prefix=None) -> Element:
        found = self.find_all(tag, cls, id_prefix)
        assert len(found) == 1, (tag, cls, id_prefix, len(found))
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Element("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs), self.current)
        self.current.children.append(element)
        self.current.parts.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs):
        element = Element(tag, dict(attrs), self.current)
        self.current.children.append(element)
        self.current.parts.append(element)

    def handle_endtag(self, tag):
        assert self.current.tag == tag, f"</{tag}> closes <{self.current.tag}>"
        self.current = self.current.parent

    def handle_data(self, data):
        self.current.parts.append(data)


def parse(html: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    assert builder.current is builder.root, "unclosed elements"
    return builder.root


# --------------------------------------------------------------------------------------------
# fabricated run files
# --------------------------------------------------------------------------------------------


def write_run(root: Path, suite: str, method: str, task: str, seed: int, value: float, params: int, *,
              metric: str = "top1", metrics: dict | None = None,
              protocol: tuple[str, str, str] = ("vtab1k", "train800val200", "test")) -> Path:
    path = root / "results" / suite / method / task / f"seed-{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": RUN_SCHEMA, "status": "ok", "suite": suite, "task": task, "method": method, "seed": seed,
            "protocol": {"name": protocol[0], "train_split": protocol[1], "eval_split": protocol[2]},
            "metric": {"name": metric, "value": value}, "params": {"trainable": params},
            "train": {"wall_seconds": 2.0, "images_per_second": 100.0, "peak_memory_mb": 300.0},
            "eval": {"wall_seconds": 1.0}, "config": {"backbone": {"name": "demo", "arch": "demo_arch"}},
            "provenance": {"git_commit": "abc"},
            # costs that order the methods otherwise than their parameter counts (see COSTS)
            "efficiency": {"device": "cpu: test-cpu, 1 threads", "train_memory_kind": "cpu_tensor_bytes",
                           "train_memory_mb": COSTS.get(method, (50.0, 5.0))[0], "eval_batch": 64,
                           "latency_ms": {"merged": {"batch_1": 1.0, "batch_eval": COSTS.get(method, (50.0, 5.0))[1]}},
                           "train_samples_per_second": 100.0, "trained_tensors_bytes": 4 * params}}
    if metrics is not None:
        data["metrics"] = metrics
    path.write_text(json.dumps(data))
    return path


#: (training memory MiB, eval-batch latency ms) per method: dtl (side-tuning) trains in less memory than lora
COSTS = {"linear": (20.0, 4.0), "full": (90.0, 4.0), "adapter": (60.0, 6.0), "lora": (55.0, 4.0), "dtl": (30.0, 5.0),
         "mona": (70.0, 8.0)}
FAMILIES = {"linear": "baseline", "full": "baseline", "bitfit": "partial", "adapter": "addition",
            "vpt-shallow": "addition", "lora": "reparameterization", "dtl": "side", "mona": "addition"}
PARAMS = {"linear": 0, "full": 800_000, "bitfit": 5_888, "adapter": 8_736, "lora": 8_192, "dtl": 3_000,
          "mona": 9_000, "vpt-shallow": 1_024}
MINI = {("linear", 42): 0.50, ("linear", 43): 0.52, ("lora", 42): 0.60, ("lora", 43): 0.56,
        ("adapter", 42): 0.55, ("adapter", 43): 0.55, ("full", 42): 0.58, ("full", 43): 0.60,
        ("dtl", 42): 0.40}  # dtl: one task only, so no mean and no mark


def families(methods):
    return {m: {"family": FAMILIES[m], "mergeable": False, "paper": ""} for m in methods}


def suite_cfg(title, kind, protocol, methods, tasks, published=None):
    return {"title": title, "kind": kind, "protocol": protocol, "backbone": "demo", "methods": methods,
            "tasks": tasks, "groups": None, "published": published, "notes": [], "data_suite": title,
            "families": families(methods)}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Four tracks in one report: image (two seeds, one incomplete method), video, COCO-style, ADE-style."""
    tmp_path = tmp_path_factory.mktemp("report")
    paths = []
    for (method, seed), value in MINI.items():
        for task, offset in (("digits", 0.0), ("textures", 0.1)):
            if method == "dtl" and task == "textures":
                paths.append(tmp_path / "results/mini" / method / task / f"seed-{seed}" / "metrics.json")
                continue
            paths.append(write_run(tmp_path, "mini", method, task, seed, value + offset, PARAMS[method]))
    for method, value in (("linear", 0.40), ("adapter", 0.55)):
        paths.append(write_run(tmp_path, "clips", method, "moves", 42, value, PARAMS[method]))
    dense = ("dense-mini", "train800val200", "test")
    for method, box in (("linear", 0.30), ("lora", 0.36), ("mona", 0.34)):
        paths.append(write_run(tmp_path, "boxes", method, "shapes", 42, box, PARAMS[method], metric="box_ap",
                               metrics={"box_ap": box, "mask_ap": box - 0.05, "box_ap50": box + 0.2},
                               protocol=dense))
        paths.append(write_run(tmp_path, "regions", method, "scenes", 42, box + 0.2, PARAMS[method], metric="miou",
                               metrics={"miou": box + 0.2, "aacc": 0.9}, protocol=dense))
    suites = {
        "mini": suite_cfg("Mini", "image", "vtab1k", ["linear", "full", "adapter", "lora", "dtl"],
                          ["digits", "textures"]),
        "clips": suite_cfg("Clips", "video", "vtab1k", ["linear", "adapter"], ["moves"]),
        "boxes": suite_cfg("Boxes", "dense", "dense-mini", ["linear", "lora", "mona"], ["shapes"]),
        "regions": suite_cfg("Regions", "dense", "dense-mini", ["linear", "lora", "mona"], ["scenes"]),
    }
    out = tmp_path / "reports" / "index.html"
    build_report(paths, suites, out)
    return out.read_text(encoding="utf-8")


def section(page: Element, suite: str) -> Element:
    return page.find("section", id_prefix=f"suite-{suite}")


def figure(page: Element, suite: str, kind: str) -> Element:
    return page.find("figure", id_prefix=f"plot-{suite}-{kind}")


def marks(fig: Element, kind: str = "mark") -> dict[str, Element]:
    prefix = f"{fig.attrs['id']}-{kind}-"
    return {e.attrs["id"][len(prefix):]: e for e in fig.find_all("g", id_prefix=prefix)}


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------


def _m(method, params, value):
    return Mark(method, None, params, value, math.nan, 0.0, math.nan, 1)


def test_pareto_front_keeps_the_methods_nothing_beats():
    points = [_m("a", 0, 50), _m("b", 1_000, 55), _m("c", 2_000, 54), _m("d", 2_000, 58), _m("e", 10_000, 58),
              _m("f", 500, 50)]
    assert [m.method for m in pareto_front(points)] == ["a", "b", "d"]  # e ties d with more params; f ties a


def test_every_family_has_a_heading_and_a_colour():
    from vpeft.methods.base import CATEGORIES

    assert set(FAMILY_TITLES) == set(CATEGORIES) == set(FAMILY_COLOURS)
    assert len(set(FAMILY_COLOURS.values())) == len(FAMILY_COLOURS)


def test_tradeoff_plot_has_one_mark_per_method_with_a_result(report):
    page = parse(report)
    fig = figure(page, "mini", "tradeoff")
    found = marks(fig)
    assert set(found) == {"linear", "full", "adapter", "lora"}  # dtl has no result on every task
    for method, group in found.items():
        assert group.find_all("path") or group.find_all("use"), method  # the mark is drawn, not an empty group
    assert "No mark (no result on every task): dtl." in fig.find("figcaption").text()
    # colour by family: lora's mark is drawn in the reparameterization colour, linear's in the baseline one
    lora_svg = re.search(r'<g id="plot-mini-tradeoff-mark-lora">(.*?)</g>', report, re.S).group(1)
    assert FAMILY_COLOURS["reparameterization"].lower() in lora_svg.lower()
    assert FAMILY_COLOURS["addition"].lower() not in lora_svg.lower()
    # two complete seeds: error bars for every marked method
    assert set(marks(fig, "error")) == {"linear", "full", "adapter", "lora"}
    # the Pareto front is drawn and named in the caption: linear 56.0 at 0, lora 63.0 at 8,192, full 64.0 at
    # 800,000; adapter (60.0 at 8,736) is beaten by lora
    assert fig.find_all("g", id_prefix="plot-mini-tradeoff-pareto")
    assert "On the front here: linear, lora, full." in fig.find("figcaption").text()


def test_plots_are_accessible_inline_svg_with_unique_ids(report):
    page = parse(report)
    figures = page.find_all("figure", cls="plot")
    assert len(figures) == 16  # four per suite: parameters, training memory, latency, PPT
    for fig in figures:
        svg = fig.find("svg")
        assert svg.attrs["role"] == "img"
        title, desc = svg.find("title"), svg.find("desc")
        assert svg.attrs["aria-labelledby"] == f"{title.attrs['id']} {desc.attrs['id']}"
        assert title.text() and desc.text() and fig.find("figcaption").text()
        assert int(fig.attrs["data-marks"]) == len(marks(fig)) > 0
    assert "<?xml" not in report and "<!DOCTYPE svg" not in report and "http://" not in report.replace(
        'xmlns="http://www.w3.org/2000/svg"', "").replace('xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    ids = Counter(e.attrs["id"] for e in page.iter() if "id" in e.attrs)
    assert not [i for i, n in ids.items() if n > 1]
    for ref in re.findall(r'(?:href="#|url\(#)([^")]+)', report):  # every internal reference resolves
        assert ref in ids, ref


def test_desc_lists_the_numbers_the_plot_shows(report):
    desc = figure(parse(report), "mini", "tradeoff").find("desc").text()
    # lora: seeds 42 / 43 -> task means 65.0 / 61.0 -> 63.0 +- 2.8
    assert "lora (Reparameterization): 63.0 \u00b1 2.8 at 8,192 parameters" in desc
    ppt_desc = figure(parse(report), "mini", "ppt").find("desc").text()
    assert "linear: PPT 0.56" in ppt_desc


def test_ppt_bars_one_per_method_in_table_order(report):
    fig = figure(parse(report), "boxes", "ppt")
    assert list(marks(fig)) == ["linear", "mona", "lora"]  # table order: baseline, addition, reparameterization
    assert "Highest here: lora (0.36)" in fig.find("figcaption").text()


def test_single_seed_has_no_error_bars(report):
    fig = figure(parse(report), "clips", "tradeoff")
    assert set(marks(fig)) == {"linear", "adapter"} and not marks(fig, "error")


def test_published_points_beside_ours_on_a_suite_with_a_published_table(tmp_path):
    pub = load_published("vtab")
    paths = [write_run(tmp_path, "vtab", m, t, 42, 0.5, p) for m, p in (("linear", 0), ("lora", 294_912))
             for t in VTAB_TASKS]
    suites = {"vtab": suite_cfg("VTAB-1k", "image", "vtab1k", ["linear", "lora"], list(VTAB_TASKS), "vtab")}
    page = parse(render_html(build_context(load_runs(paths), suites)))
    fig = figure(page, "vtab", "tradeoff")
    assert set(marks(fig)) == {"linear", "lora"} and set(marks(fig, "published")) == {"linear", "lora"}
    desc = fig.find("desc").text()
    assert f"LoRA: {pub.loc['lora', 'mean']:.1f} at {pub.loc['lora', 'params']:,}" in desc
    assert "Hollow diamonds: published numbers" in fig.find("figcaption").text()


def test_dense_published_points_use_the_plotted_metric(tmp_path):
    paths = [write_run(tmp_path, "ade", m, "ade20k", 42, 0.4, p, metric="miou", metrics={"miou": 0.4},
                       protocol=("ade20k", "training", "validation")) for m, p in (("linear", 0), ("mona", 9_000))]
    suites = {"ade": suite_cfg("ADE20K", "dense", "ade20k", ["linear", "mona"], ["ade20k"], "ade20k")}
    fig = figure(parse(render_html(build_context(load_runs(paths), suites))), "ade", "tradeoff")
    assert set(marks(fig, "published")) == {"linear", "mona"}
    assert "Mona: 51.4 at" in fig.find("desc").text()  # the published mIoU 51.36


def test_a_suite_without_results_says_so_instead_of_an_empty_plot(tmp_path):
    paths = [tmp_path / "results/none/linear/digits/seed-42/metrics.json"]
    suites = {"none": suite_cfg("None yet", "image", "vtab1k", ["linear"], ["digits"])}
    sec = section(parse(render_html(build_context(load_runs(paths), suites))), "none")
    assert not sec.find_all("figure")
    assert any("No plot: no method has a result on every task yet." == p.text() for p in sec.find_all("p"))


# --------------------------------------------------------------------------------------------
# labels true for every track
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite, protocol, splits, metric", [
    ("mini", "vtab1k", "trained on train800val200, final model evaluated on test", "metric: top-1 accuracy (%)"),
    ("clips", "vtab1k", "trained on train800val200, final model evaluated on test", "metric: top-1 accuracy (%)"),
    ("boxes", "dense-mini", "trained on train800val200, final model evaluated on test",
     "metric: AP box (COCO AP@[.5:.95], pycocotools COCOeval, %), AP mask (COCO AP@[.5:.95], %)"),
    ("regions", "dense-mini", "trained on train800val200, final model evaluated on test",
     "metric: mIoU (mean IoU, %)"),
])
def test_each_section_header_names_its_own_protocol_and_metric(report, suite, protocol, splits, metric):
    sec = section(parse(report), suite)
    assert sec.find("span", cls="protocol").text() == f"protocol {protocol} ({splits})"
    assert sec.find("span", cls="metric").text() == metric
    assert sec.find("h3", cls="results-heading").text() == f"Results \u00b7 protocol {protocol}"
    tradeoff = figure(sec, suite, "tradeoff")
    axis_metric = {"mini": "mean top-1 accuracy (%)", "clips": "mean top-1 accuracy (%)", "boxes": "AP box (%)",
                   "regions": "mIoU (%)"}[suite]
    assert tradeoff.find("title").text().startswith(f"{suite.capitalize()}: {axis_metric} against")


@pytest.mark.parametrize("suite, note", [
    ("mini", "Mean top-1 accuracy relative to linear probing (56.0%): full +8.0 points, adapter +4.0 points, "
             "lora +7.0 points."),
    ("boxes", "Mean AP box relative to the frozen backbone (linear) (30.0%): lora +6.0 points, mona +4.0 points."),
    ("regions", "Mean mIoU relative to the frozen backbone (linear) (50.0%): lora +6.0 points, mona +4.0 points."),
])
def test_findings_name_the_suites_metric(report, suite, note):
    notes = [p.text() for div in section(parse(report), suite).find_all("div", cls="notes") for p in div.find_all("p")]
    assert note in notes
    assert not any("top-1" in n for n in notes) or suite == "mini"


def test_the_speed_section_shows_a_path_relative_to_the_repository(tmp_path):
    repo = tmp_path / "checkout"
    (repo / "bench" / "results").mkdir(parents=True)
    (repo / "Snakefile").write_text("")
    bench = repo / "bench" / "results" / "latest.json"
    bench.write_text(json.dumps({"schema": "vpeft.bench/1", "provenance": {}, "summary": []}))
    paths = [write_run(tmp_path, "mini", "linear", "digits", 42, 0.5, 0)]
    out = tmp_path / "index.html"
    build_report(paths, {"mini": suite_cfg("Mini", "image", "vtab1k", ["linear"], ["digits"])}, out,
                 bench_path=bench)
    html = out.read_text(encoding="utf-8")
    speed = parse(html).find("section", id_prefix="speed")
    assert speed.find("p", cls="meta").find_all("code")[0].text() == "bench/results/latest.json"
    assert str(tmp_path) not in html


def test_embedded_dense_suites_use_a_dense_protocol():
    from vpeft.dense.settings import DENSE_PROTOCOLS

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    dense = [name for name, suite in config["suites"].items() if suite.get("kind") == "dense"]
    assert {"coco-mini", "ade-mini"} <= set(dense)
    for name in dense:
        assert config["suites"][name]["protocol"] in DENSE_PROTOCOLS, name
        assert config["suites"][name]["protocol"] not in config["protocols"], name  # not an image protocol


def test_memory_and_latency_pareto_plots_beside_the_parameter_plot(report):
    """Each suite with efficiency records gets the metric against the method's training memory and
    against latency next to the parameter plot, each naming the device that measured it."""
    page = parse(report)
    figures = [f.attrs["id"] for f in section(page, "mini").find_all("figure", id_prefix="plot-mini-")]
    assert figures == ["plot-mini-tradeoff", "plot-mini-memory", "plot-mini-latency", "plot-mini-ppt"]
    memory, latency = figure(page, "mini", "memory"), figure(page, "mini", "latency")
    assert set(marks(memory)) == set(marks(latency)) == {"linear", "full", "adapter", "lora"}  # dtl: no mean
    for fig in (memory, latency):
        caption = fig.find("figcaption").text()
        assert "Measured on cpu: test-cpu, 1 threads" in caption
    # memory front: linear (20 MiB, 51 %), lora (55, 58), full (90, 59): adapter (60, 55) is beaten by lora
    assert "On the front here: linear, lora, full." in memory.find("figcaption").text()
    assert "On the front here: full." in latency.find("figcaption").text()  # linear, lora, full tie at 4 ms
    assert "batch 64" in latency.find("figcaption").text()
    assert figure(page, "boxes", "memory") is not None  # dense suites too
