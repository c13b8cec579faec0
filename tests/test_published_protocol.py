"""Like-for-like with the published tables: the real image suites train with V-PETL's recipe, the report
lists every remaining protocol difference beside the published table, NOAH trains its released subnets,
VPT-Deep its per-task prompt lengths, the FGVC prefix-tuning row is shown and FGVC splits are pinned."""

from __future__ import annotations

import copy
import json
import re

import pytest
from PIL import Image

from helpers.configs import shipped_config, write_config
from helpers.report import read_report
from helpers.runs import write_ok_run
from helpers.snake import ROOT, job_blocks, run_workflow
from vpeft.config import load_method_configs, resolve_run, resolve_suites, runs_search, suite_methods
from vpeft.report.html import build_context, render_report
from vpeft.report.protocol_diff import OUR_SELECTION, load_recipes, protocol_differences
from vpeft.report.published import (
    DENSE_TABLES,
    PUBLISHED_TASKS,
    load_published,
    load_published_dense,
)
from vpeft.report.tables import load_runs

METHOD_SCHEMA = ROOT / "workflow/schemas/method.schema.yaml"
REAL_IMAGE_SUITES = ("vtab", "fgvc")
MINI_IMAGE_SUITES = ("vtab-mini", "vtab-mini-scratch")


@pytest.fixture(scope="module")
def config():
    return shipped_config()


@pytest.fixture(scope="module")
def methods():
    return load_method_configs(ROOT / "config/methods", METHOD_SCHEMA)


def _runs(config, methods, suite, method_names=None, seed=42):
    suites = resolve_suites(config)
    names = method_names or suite_methods(suite, suites[suite], methods)
    tasks = suites[suite]["tasks"]
    return [resolve_run(config, suites, methods, suite, m, t, seed) for m in names for t in tasks]


# -- the recipe ------------------------------------------------------------------------------------
def test_real_image_suites_default_to_vpetl_recipe_and_mini_suites_stay_deterministic(config, methods):
    recipes = load_recipes()
    for suite in REAL_IMAGE_SUITES:
        key = config["suites"][suite]["published"]
        for run in _runs(config, methods, suite, ["lora"]):
            # the recipe of the published table is the one the suite resolves to, task by task
            published = {**recipes[key]["training"], **(recipes[key].get("tasks") or {}).get(run["task"], {})}
            assert run["protocol"]["augmentation"] == recipes[key]["protocol"]["augmentation"] == "vpetl"
            assert run["protocol"]["train_split"] == recipes[key]["protocol"]["train_split"], run["task"]
            assert run["training"]["train_aug"] is bool(published.get("train_aug")), run["task"]
    # V-PETL augments 12 of the 19 VTAB tasks; FGVC trains on train.json alone
    vtab = _runs(config, methods, "vtab", ["lora"])
    assert sum(r["training"]["train_aug"] for r in vtab) == 12
    assert {r["protocol"]["train_split"] for r in _runs(config, methods, "fgvc", ["lora"])} == {"train800"}
    # the embedded suites of the default run keep a deterministic input (so the feature cache applies)
    for suite in MINI_IMAGE_SUITES:
        assert {r["protocol"]["augmentation"] for r in _runs(config, methods, suite)} == {"none"}


def test_vtab1k_protocol_stays_available(config, methods):
    plain = copy.deepcopy(config)
    plain["suites"]["vtab"]["protocol"] = "vtab1k"
    assert not any(r["training"]["train_aug"] for r in _runs(plain, methods, "vtab", ["lora"]))


# -- protocol differences in the report ----------------------------------------------------------
def test_differences_follow_the_resolved_config(config, methods):
    rows = protocol_differences("fgvc", _runs(config, methods, "fgvc", ["lora", "ssf"]))
    settings = {r["setting"] for r in rows}
    # same splits and augmentation as V-PETL; the selection on the test split is the one difference left
    assert "Model selection" in settings and not settings & {"Training split", "Training input"}
    plain = copy.deepcopy(config)
    plain["suites"]["fgvc"]["protocol"] = "vtab1k"
    plain["suites"]["fgvc"]["training"]["epochs"] = 30
    rows = protocol_differences("fgvc", _runs(plain, methods, "fgvc", ["lora", "ssf"]))
    rows = {r["setting"]: r for r in rows}
    assert rows["Training split"]["ours"] == "train800val200 (train.json + val.json)"
    assert rows["Training split"]["published"] == "train800 (train.json)"
    assert rows["Training input"]["ours"] == "direct resize, no augmentation"
    assert (rows["training.epochs"]["ours"], rows["training.epochs"]["published"]) == ("30", "100")
    assert rows["training.epochs"]["where"] == "all methods; all tasks"


def test_report_shows_protocol_differences_beside_the_published_table(config, methods, tmp_path):
    plain = copy.deepcopy(config)
    plain["suites"]["vtab"]["protocol"] = "vtab1k"  # the old default: augmentation off on every task
    suites = {}
    paths = []
    for name, cfg, method_names in (("fgvc", config, ["lora", "prefix-tuning"]), ("vtab", plain, ["lora"])):
        suite = cfg["suites"][name]
        tasks = list(suite["tasks"])
        suites[name] = {"title": name, "kind": "image", "protocol": suite["protocol"],
                        "methods": method_names, "tasks": tasks, "groups": None,
                        "published": suite["published"], "notes": [],
                        "protocol_differences": protocol_differences(suite["published"],
                                                                     _runs(cfg, methods, name, method_names))}
        paths += [write_ok_run(tmp_path, name, m, t, 1, 0.8, 1000) for m in method_names for t in tasks]
    # a published table whose recipe is not recorded says so; a suite without one shows no list
    for name, published in (("ssv2", "ssv2"), ("mini", None)):
        suites[name] = {"title": name, "kind": "video", "protocol": "vtab1k", "methods": ["lora"],
                        "tasks": ["ssv2"], "groups": None, "published": published, "notes": [],
                        "protocol_differences": protocol_differences(published, []) if published else []}
        paths.append(write_ok_run(tmp_path, name, "lora", "ssv2", 1, 0.5, 1000))
    out = tmp_path / "index.html"
    render_report(build_context(load_runs(paths), suites), out)
    shown = read_report(out)

    def table(suite):
        found = shown[suite].table("Protocol differences")
        return {row[0].text: row for row in found.rows}, found.header

    fgvc, header = table("fgvc")
    assert header == ["Setting", "Ours", "Published", "Runs"]
    assert fgvc["Model selection"][1].text == OUR_SELECTION
    assert fgvc["Model selection"][2].text == load_recipes()["fgvc"]["selection"]
    assert "Training input" not in fgvc  # FGVC trains with V-PETL's resize-crop-flip by default
    vtab, _ = table("vtab")
    augmented = [t for t, flags in load_recipes()["vtab"]["tasks"].items() if flags["train_aug"]]
    assert vtab["Training input"][1].text == "direct resize, no augmentation"
    assert vtab["Training input"][3].text == "all methods; " + ", ".join(augmented)
    unrecorded, _ = table("ssv2")
    assert unrecorded["Recipe"][2].text.startswith("not recorded for the published table 'ssv2'")
    assert not [t for t in shown["mini"].tables if t.heading.startswith("Protocol")]
    # the published FGVC prefix-tuning row is shown under ours
    results = shown["fgvc"].table("Results")
    labels = [row[0].text for row, cls in zip(results.rows, results.row_classes) if "published" in cls]
    assert "V-PETL: Prefix Tuning" in labels


def test_every_published_row_is_keyed_by_one_of_our_methods(methods):
    for key in PUBLISHED_TASKS:
        assert set(load_published(key).index) <= set(methods), key
    for key in DENSE_TABLES:
        assert set(load_published_dense(key).index) <= set(methods), key


# -- NOAH's released subnets -----------------------------------------------------------------------
def test_noah_trains_released_subnets_without_search(config, methods):
    suites = resolve_suites(config)
    released = methods["noah"]["suites"]["vtab"]["tasks"]
    for task in suites["vtab"]["tasks"]:
        assert not runs_search(suites, methods, "vtab", "noah", task)
        run = resolve_run(config, suites, methods, "vtab", "noah", task, 42)
        assert run["method_hparams"]["prompt_dims"] == released[task]["hparams"]["prompt_dims"]
    # tasks without a released subnet search (the mini suite with its small search space, FGVC)
    assert runs_search(suites, methods, "vtab-mini", "noah", "digits")
    assert runs_search(suites, methods, "fgvc", "noah", "cub")
    assert not runs_search(suites, methods, "vtab", "lora", "cifar")
    always = copy.deepcopy(methods)
    always["noah"]["search"] = "always"
    assert runs_search(suites, always, "vtab", "noah", "cifar")


@pytest.mark.slow
def test_noah_dag_searches_only_where_no_subnet_is_released(tmp_path):
    targets = ["results/vtab/noah/cifar/seed-42/metrics.json", "results/fgvc/noah/cub/seed-42/metrics.json"]
    # without the workflow profile's `quiet: rules`, so that the dry run prints every job's wildcards
    configfile = write_config(shipped_config(), tmp_path / "shipped.yaml")
    dry = run_workflow(tmp_path, configfile, "--workflow-profile", "none", "-n", *targets)
    searched = {(j["wildcards"].get("suite"), j["wildcards"].get("task")) for j in job_blocks(dry.stdout)
                if j["rule"] in ("noah_supernet", "noah_search")}
    trained = {j["wildcards"].get("suite") for j in job_blocks(dry.stdout) if j["rule"] == "train_run"}
    assert trained == {"vtab", "fgvc"}
    assert searched == {("fgvc", "cub")}, dry.stdout[-2000:]


# -- VPT-Deep's prompt lengths ---------------------------------------------------------------------
def test_vpt_deep_runs_per_task_lengths_and_readme_agrees_with_yaml(config, methods):
    from helpers.models import meta_counts

    yaml_cfg = methods["vpt-deep"]
    per_task = {t: e["hparams"]["num_tokens"] for t, e in yaml_cfg["suites"]["vtab"]["tasks"].items()}
    runs = _runs(config, methods, "vtab", ["vpt-deep"])
    assert {r["task"]: r["method_hparams"]["num_tokens"] for r in runs} == per_task
    assert len(set(per_task.values())) > 1  # per task, not one length
    default = yaml_cfg["hparams"]["num_tokens"]
    readme = (ROOT / "docs/methods.md").read_text().splitlines()
    line = next(line for line in readme if "| `vpt-deep` (p = " in line)
    match = re.search(r"\| `vpt-deep` \(p = (\d+); vtab per task, mean ([\d.]+)\) \| ([\d,]+) "
                      r"\(vtab mean ([\d,]+)\)", line)
    assert match, line
    p, mean, count, vtab_count = match.groups()
    assert int(p) == default
    assert int(count.replace(",", "")) == meta_counts("vpt-deep", {"num_tokens": default})["trainable"]
    assert float(mean) == round(sum(per_task.values()) / len(per_task), 1)
    per_task_counts = [meta_counts("vpt-deep", {"num_tokens": n})["trainable"] for n in per_task.values()]
    assert int(vtab_count.replace(",", "")) == round(sum(per_task_counts) / len(per_task_counts))


# -- FGVC splits -----------------------------------------------------------------------------------
def test_fgvc_split_sizes_are_pinned_to_vpt_split(config):
    # VPT's FGVC splits (its paper's Table 8), as train / val / test image counts
    vpt = {"cub": (5394, 600, 5794), "nabirds": (21536, 2393, 24633), "oxford_flowers": (1020, 1020, 6149),
           "stanford_dogs": (10800, 1200, 8580), "stanford_cars": (7329, 815, 8041)}
    tasks = config["suites"]["fgvc"]["tasks"]
    assert {t: tuple(e["sizes"][s] for s in ("train", "val", "test")) for t, e in tasks.items()} == vpt
    planned = config["cost_plan"]["dataset_sizes"]["fgvc"]  # the cost plan counts the same images
    assert {t: (p["train800"], p["val200"], p["test"]) for t, p in planned.items()} == vpt


def test_fgvc_check_stops_on_other_split_sizes(tmp_path):
    from vpeft.data.fgvc import check_task
    from vpeft.data.splits import DataError

    task = tmp_path / "cub"
    (task / "images").mkdir(parents=True)
    splits = {"train": range(0, 6), "val": range(6, 9), "test": range(9, 12)}
    for split, ids in splits.items():
        entries = {}
        for i in ids:
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(task / "images" / f"{i}.png")
            entries[f"{i}.png"] = i % 3
        (task / f"{split}.json").write_text(json.dumps(entries))
    check_task(task, 3, suite="fgvc", task="cub", image_dir="images", sizes={"train": 6, "val": 3, "test": 3})
    with pytest.raises(DataError, match=r"train\.json lists 6 images, expected 5394 \(set by "
                                        r"suites\.fgvc\.tasks\.cub\.sizes\.train\): .*VPT's published split"):
        check_task(task, 3, suite="fgvc", task="cub", image_dir="images", sizes={"train": 5394})
