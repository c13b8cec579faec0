"""Embedded proof of the peft family (issue 22): three huggingface peft tuners and our LoRA train on two
vtab-mini tasks for one epoch through Snakemake, and the report shows their rows, counts and provenance."""

from __future__ import annotations

import importlib.metadata
import json
import re
from html.parser import HTMLParser

import pytest
import yaml
from helpers.configs import smoke_config, write_config
from helpers.report import read_report
from helpers.snake import job_counts, run_workflow

pytestmark = pytest.mark.slow

METHODS = ["lora", "peft-dora", "peft-vera", "peft-oft"]
TASKS = ("digits", "dsprites_loc")


class _RowMarks(HTMLParser):
    """Results-row header text -> the (class, title) of the spans in it."""

    def __init__(self):
        super().__init__()
        self.rows, self._row, self._in_th = {}, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
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


def _demo_counts(method: str, hparams: dict) -> int:
    """Our counter on the demo architecture, built here independently of the run."""
    import timm
    import torch

    from vpeft.backbones import register_architecture
    from vpeft.methods import apply_method, build_method

    register_architecture("vit_demo_patch4_32")
    with torch.device("meta"):
        model = timm.create_model("vit_demo_patch4_32", pretrained=False, num_classes=10)
        return apply_method(model, build_method(method, hparams)).parameter_counts()["trainable"]


def test_peft_tuners_and_our_lora_train_through_snakemake_into_the_report(tmp_path):
    config = yaml.safe_load(smoke_config(tmp_path).read_text())
    config["default_suites"] = ["vtab-mini"]
    config["suites"]["vtab-mini"]["methods"] = METHODS
    result = run_workflow(tmp_path, write_config(config, tmp_path / "peft.yaml"), "--cores", "2", timeout=1500)
    assert job_counts(result.stdout + result.stderr)["train_run"] == len(METHODS) * len(TASKS)

    version = importlib.metadata.version("peft")
    html = (tmp_path / "reports/index.html").read_text()
    suite = read_report(tmp_path / "reports/index.html")["vtab-mini"]
    marks = _RowMarks()
    marks.feed(html)
    for method in METHODS:
        params = set()
        for task in TASKS:
            run = json.loads((tmp_path / f"results/vtab-mini/{method}/{task}/seed-42/metrics.json").read_text())
            assert run["status"] == "ok" and run["eval"]["merged"] is True  # every shipped row here merges
            assert run["provenance"]["packages"]["peft"] == version
            value = float(suite.cell(method, task).text)
            assert value == pytest.approx(100 * run["metric"]["value"], abs=0.05)
            params.add(run["params"]["trainable"])
        (count,) = params
        assert count == _demo_counts(method, run["config"]["method_hparams"]) > 0
        cell = suite.cell(method, "Params")
        assert cell.title.startswith(f"{count:,} trainable parameters")
        spans = marks.rows[next(r for r in marks.rows if r.split()[0] == method)]
        peft_marks = [title for cls, title in spans if cls == "peftcode"]
        if method.startswith("peft-"):
            assert len(peft_marks) == 1 and f"official-code: huggingface/peft@{version}" in peft_marks[0]
            assert re.search(r"\(src/peft/tuners/(lora|vera|oft)/layer\.py", peft_marks[0])
        else:
            assert peft_marks == []  # our LoRA: a port, unmarked
    assert "peft-legend" in html
    # peft's LoRA beside ours at the same rank on the same qkv: the same count (q, v vs one A, B on q, k, v)
    assert _demo_counts("peft-lora", {}) == _demo_counts("lora", {}) == 4 * 8 * (128 + 3 * 128)
