"""The measured statements of the report (vpeft.report.findings): each method against linear probing in
its suite, and the same method on two backbones over the same data (pretrained vs random init)."""

from __future__ import annotations

import copy

from helpers.runs import write_ok_run

from vpeft.report.findings import add_findings
from vpeft.report.tables import load_runs

TASKS = ["a", "b"]
# top-1 per task; the means (in %) are what the notes compare
PRETRAINED = {"linear": (0.50, 0.60), "lora": (0.70, 0.80), "ssf": (0.40, None)}  # ssf: task b never ran
SCRATCH = {"linear": (0.30, 0.40)}


def _suites():
    def suite(**kw):
        return {"tasks": TASKS, "notes": [], "data_suite": "mini", "groups": None, **kw}

    return {"mini": suite(methods=["linear", "lora", "ssf"], backbone="vit-demo"),
            "mini-scratch": suite(methods=["linear"], backbone="vit-demo-random"),
            "other-data": suite(methods=["linear"], backbone="vit-demo-random", data_suite="other", tasks=["a"])}


def _runs(tmp_path):
    paths = []
    for suite, values in (("mini", PRETRAINED), ("mini-scratch", SCRATCH), ("other-data", {"linear": (0.9,)})):
        for method, per_task in values.items():
            for task, value in zip(TASKS, per_task):
                path = tmp_path / "results" / suite / method / task / "seed-42" / "metrics.json"
                if value is not None:
                    write_ok_run(tmp_path, suite, method, task, 42, value, 1000)
                paths.append(path)
    return load_runs(paths)


def test_each_method_is_compared_with_linear_probing_and_backbones_over_the_same_data(tmp_path):
    suites = _suites()
    before = copy.deepcopy(suites)
    notes = {name: info["notes"] for name, info in add_findings(_runs(tmp_path), suites).items()}
    assert suites == before, "the suites passed in are not changed"
    # lora: (70 + 80) / 2 = 75.0 against linear's (50 + 60) / 2 = 55.0; ssf has no mean (a task never ran)
    assert notes["mini"] == [
        "Mean top-1 accuracy relative to linear probing (55.0%): lora +20.0 points.",
        "linear, mean top-1 accuracy with vit-demo: 55.0% vs 35.0% with vit-demo-random (suite mini-scratch): "
        "+20.0 points.",
    ]
    # the scratch suite has linear only (nothing to compare within it) and shares mini's data;
    # other-data has the scratch backbone but other data, so it is compared with nothing
    assert notes["mini-scratch"] == [
        "linear, mean top-1 accuracy with vit-demo-random: 35.0% vs 55.0% with vit-demo (suite mini): "
        "-20.0 points."]
    assert notes["other-data"] == []


def test_suites_with_the_same_backbone_are_not_compared(tmp_path):
    suites = _suites()
    suites["mini-scratch"]["backbone"] = "vit-demo"
    notes = add_findings(_runs(tmp_path), suites)
    assert not any("vs" in n for info in notes.values() for n in info["notes"])
