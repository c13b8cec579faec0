"""The user's own images (layouts imagefolder and csv, vpeft.data.owndata): folder and csv forms, the
derived splits (deterministic, stratified, seeded), the checks that name the file, and the minimal
config form through Snakemake (README "Benchmark PEFT methods on your own data")."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import shipped_config, write_config
from helpers.report import read_report
from helpers.snake import ROOT, job_counts, run_workflow
from PIL import Image

from vpeft.config import ConfigError, resolve_run, resolve_suites, validate_against_schema
from vpeft.data.manifest import read_rows, rows_by_class, write_task_index
from vpeft.data.owndata import (
    SplitSettings,
    allocate,
    check_csv_task,
    check_imagefolder_task,
    class_order,
    expected_sizes,
    list_imagefolder,
)
from vpeft.data.splits import DataError

CLASSES = ("circle", "square", "stripes")
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def draw(kind: str, seed: int, size: int = 32) -> Image.Image:
    """A picture whose shape says its class (a disc, a square, stripes) on a noisy background; the seed
    moves it and changes the noise, so every image is different bytes."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    y, x = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    mask = {"circle": (y - cy) ** 2 + (x - cx) ** 2 < (size // 4) ** 2,
            "square": (abs(y - cy) < size // 5) & (abs(x - cx) < size // 5),
            "stripes": (x // 4) % 2 == 0}.get(kind, (y + x) % 7 == 0)
    img[mask] = (220, 200, 40)
    return Image.fromarray(img)


def write_folder(root: Path, counts: dict[str, dict[str, int]], seed: int = 0) -> Path:
    """root/<split>/<class>/NNN.png ("" as the split: root/<class>/NNN.png), counts[split][class] images."""
    for split, per_class in counts.items():
        for c, (name, n) in enumerate(per_class.items()):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(name, seed * 100_000 + ("", "train", "val", "test").index(split) * 10_000 + c * 1000 + i
                     ).save(folder / f"{i:03d}.png")
    return root


def by_split(rows) -> dict[str, set[tuple[str, int]]]:
    out: dict[str, set] = {}
    for row in rows:
        out.setdefault(row.split, set()).add((row.path, row.label))
    return out


def per_class(items) -> list[int]:
    counts = Counter(label for _, label in items)
    return [counts[k] for k in range(len(CLASSES))]


@pytest.fixture
def split_folder(tmp_path) -> Path:
    return write_folder(tmp_path / "images", {"train": {"circle": 10, "square": 11, "stripes": 12},
                                              "test": {"circle": 4, "square": 4, "stripes": 4}})


# -- the folder forms and the derived splits ---------------------------------------------------------
def test_train_and_test_folders_get_a_stratified_seeded_val_written_as_a_split_file(split_folder, tmp_path):
    index, rows = check_imagefolder_task(split_folder, 3, suite="mydata", task="mydata",
                                         split_file=tmp_path / "a.splits.csv")
    assert index["classes"] == list(CLASSES) and index["num_classes"] == 3
    splits = by_split(rows)
    train = {(p, CLASSES.index(p.split("/")[1])) for p in
             (f.relative_to(split_folder).as_posix() for f in (split_folder / "train").rglob("*.png"))}
    assert splits["train800"] | splits["val200"] == splits["train800val200"] == train
    assert not splits["train800"] & splits["val200"]
    assert per_class(splits["val200"]) == [2, 2, 2]  # 20 % of 10, 11, 12, rounded
    assert {p for p, _ in splits["test"]} == {f"test/{c}/{i:03d}.png" for c in CLASSES for i in range(4)}
    assert index["split_rule"]["derived"] == ["val"] and index["split_rule"]["given"] == ["train", "test"]
    assert index["splits"]["val200"]["count"] == 6 and index["splits"]["train800"]["count"] == 27

    # the split file: the assignment as a csv-layout file, its sha256 in the index
    split_file = (tmp_path / "a.splits.csv").read_bytes()
    assert index["split_rule"]["sha256"] == hashlib.sha256(split_file).hexdigest()
    written = list(csv.DictReader(split_file.decode().splitlines()))
    assert {(r["path"], CLASSES.index(r["label"])) for r in written if r["split"] == "val"} == splits["val200"]
    # ... which a csv suite reads back as the same splits
    _, again = check_csv_task(split_folder, 3, csv_file=tmp_path / "a.splits.csv")
    assert by_split(again) == splits

    # deterministic: the same files give the same bytes; another seed another val
    check_imagefolder_task(split_folder, 3, split_file=tmp_path / "b.splits.csv")
    assert (tmp_path / "b.splits.csv").read_bytes() == split_file
    _, other = check_imagefolder_task(split_folder, 3, split={"seed": 1})
    assert by_split(other)["val200"] != splits["val200"] and per_class(by_split(other)["val200"]) == [2, 2, 2]


def test_renaming_files_moves_no_image_between_splits(split_folder, tmp_path):
    _, before = check_imagefolder_task(split_folder, 3)
    val = {p for p, _ in by_split(before)["val200"]}
    for path in sorted((split_folder / "train").rglob("*.png")):
        path.rename(path.with_name("renamed-" + path.name))
    _, after = check_imagefolder_task(split_folder, 3)
    assert {p.replace("renamed-", "") for p, _ in by_split(after)["val200"]} == val


def test_one_pool_of_class_folders_gets_test_then_val(tmp_path):
    root = write_folder(tmp_path / "pool", {"": {"circle": 10, "square": 10, "stripes": 5}})
    index, rows = check_imagefolder_task(root, 3, split={"test": 0.2, "val": 0.25})
    splits = by_split(rows)
    assert per_class(splits["test"]) == [2, 2, 1]
    assert per_class(splits["val200"]) == [2, 2, 1]  # a quarter of 8, 8, 4
    assert per_class(splits["train800"]) == [6, 6, 3]
    assert index["split_rule"]["derived"] == ["test", "val"] and index["split_rule"]["form"] == "single"
    everything = {p for s in ("train800", "val200", "test") for p, _ in splits[s]}
    assert len(everything) == 25 and not splits["test"] & splits["train800val200"]


def test_vtab_style_counts_are_shared_out_over_the_classes(tmp_path):
    root = write_folder(tmp_path / "pool", {"train": {"circle": 20, "square": 10, "stripes": 10},
                                             "test": {"circle": 2, "square": 2, "stripes": 2}})
    _, rows = check_imagefolder_task(root, 3, split={"val": 8, "train": 16})
    splits = by_split(rows)
    assert per_class(splits["val200"]) == [4, 2, 2] and per_class(splits["train800"]) == [8, 4, 4]
    assert len(splits["train800val200"]) == 24  # 16 images of train left unused
    assert expected_sizes(list_imagefolder(root), SplitSettings(val=8, train=16)) == {
        "train800": 16, "val200": 8, "train800val200": 24, "test": 6}


def test_allocation_rounds_within_bounds_and_names_an_impossible_request():
    assert allocate([10, 11, 12], 0.2, [1, 1, 1], [9, 10, 11], "split.val") == [2, 2, 2]
    assert allocate([5, 5, 1], 0.1, [1, 1, 0], [4, 4, 0], "split.val") == [1, 1, 0]  # a lone image stays in train
    assert allocate([800, 100, 100], 200, [0, 0, 0], [799, 99, 99], "split.val") == [160, 20, 20]
    assert sum(allocate([7, 7, 7], 10, [0, 0, 0], [6, 6, 6], "split.val")) == 10
    with pytest.raises(DataError, match=r"split\.val: 30 images asked for, but between 0 and 18"):
        allocate([7, 7, 7], 30, [0, 0, 0], [6, 6, 6], "split.val")


def test_class_order_is_by_name_and_numeric_for_integer_names():
    assert class_order(["b", "a", "C"]) == ["C", "a", "b"]
    assert class_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert class_order(["10", "2", "x"]) == ["10", "2", "x"]


def test_identical_copies_stay_together_in_derived_splits(tmp_path):
    root = write_folder(tmp_path / "pool", {"": {"circle": 10, "square": 10, "stripes": 10}})
    for i in range(10):  # every circle twice: a copy must land in the split of its original
        shutil.copy(root / "circle" / f"{i:03d}.png", root / "circle" / f"copy-{i:03d}.png")
    index, rows = check_imagefolder_task(root, 3)
    place = {p: s for s, items in by_split(rows).items() if s != "train800val200" for p, _ in items}
    assert all(place[f"circle/{i:03d}.png"] == place[f"circle/copy-{i:03d}.png"] for i in range(10))
    assert any("byte-identical copies" in note for note in index["notes"])


def test_rows_by_class_gives_each_class_its_training_images(split_folder, tmp_path):
    index, rows = check_imagefolder_task(split_folder, 3)
    write_task_index(tmp_path / "idx.json", index, rows)
    task_dir, groups = rows_by_class(tmp_path / "idx.json", ["train800"])
    assert task_dir == split_folder and list(groups) == [0, 1, 2]
    assert [len(g) for g in groups.values()] == [8, 9, 10]
    assert all(r.path.startswith(f"train/{CLASSES[label]}/") for label, g in groups.items() for r in g)
    _, train = read_rows(tmp_path / "idx.json", ["train800"])
    assert {r for g in groups.values() for r in g} == set(train)


# -- the csv layout ------------------------------------------------------------------------------
def test_csv_with_a_split_column_and_header_is_read_as_given(tmp_path):
    root = write_folder(tmp_path / "imgs", {"": {"circle": 6, "square": 6, "stripes": 6}})
    lines = ["label,path,split"]  # the header may order the columns as it likes
    for c, name in enumerate(CLASSES):
        for i in range(6):
            lines.append(f"{name},{name}/{i:03d}.png,{['train', 'train', 'train', 'train', 'val', 'test'][i]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    index, rows = check_csv_task(root, 3, csv_file=root / "labels.csv")
    splits = by_split(rows)
    assert per_class(splits["train800"]) == [4, 4, 4] and per_class(splits["val200"]) == [1, 1, 1]
    assert {p for p, _ in splits["test"]} == {f"{c}/005.png" for c in CLASSES}
    assert index["split_rule"]["derived"] == [] and index["layout"] == "csv"


def test_csv_without_split_column_derives_test_and_val_and_orders_integer_labels(tmp_path):
    root = write_folder(tmp_path / "imgs", {"": {"circle": 10, "square": 10, "stripes": 10}})
    labels = {"circle": "10", "square": "2", "stripes": "1"}
    csv_file = tmp_path / "elsewhere" / "list.csv"
    csv_file.parent.mkdir()
    # no header; one absolute path, the others relative to root
    csv_file.write_text("".join(f"{root / n / f'{i:03d}.png' if i == 0 else f'{n}/{i:03d}.png'},{labels[n]}\n"
                                for n in CLASSES for i in range(10)))
    index, rows = check_csv_task(root, 3, csv_file=csv_file)
    assert index["classes"] == ["1", "2", "10"]  # numeric order: label i is the i-th
    label_of = {p: lab for p, lab in ((r.path, r.label) for r in rows)}
    assert label_of["stripes/001.png"] == 0 and label_of["square/001.png"] == 1 and label_of["circle/001.png"] == 2
    assert index["split_rule"]["derived"] == ["test", "val"]
    assert [index["splits"][s]["count"] for s in ("train800", "val200", "test")] == [18, 6, 6]


@pytest.mark.parametrize("content, message", [
    ("path,label\ncircle/000.png,circle\n./circle/000.png,square\n",
     r"list\.csv:3: image circle/000\.png is listed twice \(also at .*list\.csv:2\)"),
    ("circle/000.png,circle,train\ncircle/001.png,circle,holdout\n",
     r"list\.csv:2: split 'holdout'; valid: train, val, test"),
    ("circle/000.png,circle\ncircle/404.png,circle\n", r"list\.csv:2: image .*circle/404\.png not found"),
    ("circle/000.png,\n", r"list\.csv:1: empty label"),
    ("circle/000.png,circle,test\n", r"list\.csv: no row has split 'train'"),
    ("path,label,kind\ncircle/000.png,circle,x\n", r"list\.csv:1: unknown column\(s\) \['kind'\]"),
    ("circle/000.png,circle,train\nsquare/000.png,square,test\n",
     r"list\.csv:2: class 'square' has test images but no training image"),
])
def test_csv_errors_name_the_file_and_line(tmp_path, content, message):
    root = write_folder(tmp_path / "imgs", {"": {"circle": 2, "square": 2}})
    (root / "list.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        check_csv_task(root, None, csv_file=root / "list.csv")


# -- the checks: what is refused, naming the file ------------------------------------------------------
def test_an_empty_class_folder_is_named(split_folder):
    (split_folder / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/empty holds no images"):
        check_imagefolder_task(split_folder, None)
    (split_folder / "train" / "empty" / "notes.txt").write_text("no pictures here")
    with pytest.raises(DataError, match=r"train/empty holds no images .*1 other file\(s\), "
                                        r"e\.g\. train/empty/notes\.txt"):
        list_imagefolder(split_folder)


def test_an_unreadable_image_is_named(split_folder):
    bad = split_folder / "test" / "square" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=rf"cannot decode image {re.escape(str(bad))}"):
        check_imagefolder_task(split_folder, 3, workers=2)


def test_the_same_image_in_two_splits_is_refused_naming_both_files(split_folder):
    shutil.copy(split_folder / "train/square/003.png", split_folder / "test/square/leaked.png")
    with pytest.raises(DataError, match=r"test/square/leaked\.png \(test\) and .*train/square/003\.png \(train\) "
                                        r"are the same image"):
        check_imagefolder_task(split_folder, 3)


def test_identical_images_with_two_labels_are_refused(split_folder):
    shutil.copy(split_folder / "train/square/003.png", split_folder / "train/circle/odd.png")
    with pytest.raises(DataError, match=r"train/square/003\.png \(class 'square'\) and .*train/circle/odd\.png "
                                        r"\(class 'circle'\) are the same image .* with two labels"):
        check_imagefolder_task(split_folder, 3)


def test_layout_mistakes_are_explained(split_folder, tmp_path):
    (split_folder / "test" / "triangle").mkdir()
    draw("triangle", 1).save(split_folder / "test" / "triangle" / "0.png")
    with pytest.raises(DataError, match=r"class folder\(s\) triangle have no counterpart in .*train"):
        list_imagefolder(split_folder)
    (split_folder / "extra").mkdir()
    with pytest.raises(DataError, match=r"holds train/ and also extra/"):
        list_imagefolder(split_folder)
    with pytest.raises(DataError, match=r"image folder .*nowhere not found"):
        list_imagefolder(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"4 classes .* but the config says num_classes: 3"):
        shutil.rmtree(split_folder / "extra")
        (split_folder / "train" / "triangle").mkdir()
        draw("triangle", 2).save(split_folder / "train" / "triangle" / "0.png")
        check_imagefolder_task(split_folder, 3)


def test_hidden_and_non_image_files_are_skipped_and_noted(split_folder):
    (split_folder / "train" / "circle" / ".DS_Store").write_bytes(b"\0\0")
    (split_folder / "train" / "circle" / "README.txt").write_text("drawn by a script")
    index, rows = check_imagefolder_task(split_folder, 3)
    assert not any("README" in r.path or "DS_Store" in r.path for r in rows)
    assert any("1 file(s) skipped as not images" in note and "README.txt" in note for note in index["notes"])


# -- the config: the minimal form ------------------------------------------------------------------
def minimal(root, **more) -> dict:
    return {"layout": "imagefolder", "root": str(root), "backbone": "vit-b16-in21k",
            "methods": ["linear", "lora", "ssf"], **more}


def test_the_minimal_form_is_completed_from_the_folder(split_folder):
    config = shipped_config()
    config["suites"]["my-data"] = minimal(split_folder)
    config["suites"]["my-data-tuned"] = {"extends": "my-data", "tuning": "optuna", "methods": ["lora"]}
    validate_against_schema(config, SCHEMA)
    suites = resolve_suites(config)
    suite = suites["my-data"]
    assert suite["kind"] == "image" and suite["source"] == "external" and suite["protocol"] == "vtab1k"
    assert suite["tasks"] == {"my_data": {"num_classes": 3, "path": str(split_folder),
                                          "sizes": {"train800": 27, "val200": 6, "train800val200": 33, "test": 12}}}
    assert suites["my-data-tuned"]["tasks"] == suite["tasks"]  # the same data suite, the same one task
    run = resolve_run(config, suites, {m: {} for m in ("linear", "lora", "ssf")}, "my-data", "lora", "my_data", 42)
    assert run["task_dir"] == str(split_folder) and run["num_classes"] == 3 and run["layout"] == "imagefolder"
    assert run["data"]["classes"] == list(CLASSES)
    assert run["data"]["split"] == {"seed": 0, "val": 0.2, "test": 0.2, "train": None}


@pytest.mark.parametrize("change, message", [
    ({"root": None}, r"invalid value at 'suites\.mine'.*'root' is a required property"),
    ({"split": {"val": 1.5}}, r"invalid value at 'suites\.mine\.split\.val'"),
    ({"split": {"holdout": 0.1}}, r"suites\.mine\.split.*'holdout'"),
    ({"tasks": {"x": {"num_classes": 2}}}, r"suites\.mine\.tasks: an imagefolder suite is one dataset"),
    ({"root": "/no/such/folder"}, r"image folder /no/such/folder not found"),
    ({"kind": "video"}, r"suites\.mine\.kind: an imagefolder suite is kind image"),
])
def test_config_mistakes_name_the_key(split_folder, change, message):
    config = shipped_config()
    config["suites"]["mine"] = {k: v for k, v in {**minimal(split_folder), **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        validate_against_schema(config, SCHEMA)
        resolve_suites(config)


def test_csv_suite_needs_its_file_and_defaults_root_to_its_folder(tmp_path):
    root = write_folder(tmp_path / "imgs", {"": {"circle": 5, "square": 5}})
    (root / "labels.csv").write_text("".join(f"{n}/{i:03d}.png,{n}\n" for n in ("circle", "square") for i in range(5)))
    config = shipped_config()
    config["suites"]["mine"] = {"layout": "csv", "backbone": "vit-demo", "methods": ["linear"]}
    with pytest.raises(ConfigError, match=r"'csv' is a required property"):
        validate_against_schema(config, SCHEMA)
    config["suites"]["mine"]["csv"] = str(root / "labels.csv")
    validate_against_schema(config, SCHEMA)
    suite = resolve_suites(config)["mine"]
    assert suite["root"] == str(root) and suite["tasks"]["mine"]["num_classes"] == 2


# -- through Snakemake -------------------------------------------------------------------------------
def checkout(folder: Path) -> Path:
    """The project's files linked into an empty folder: a fresh checkout to run the README's commands in."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("Snakefile", "workflow", "config", "assets", "src"):
        (folder / part).symlink_to(ROOT / part)
    return folder


def readme_my_yaml(root: Path) -> str:
    """The my.yaml of README "Benchmark PEFT methods on your own data", its folder replaced by `root`."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Benchmark PEFT methods on your own data", 1)[1].split("\n## ", 1)[0]
    text = re.search(r"^```yaml\n(.*?)^```", section, re.S | re.M).group(1)
    assert "/data/my-images" in text and "snakemake --cores all --configfile my.yaml" in section
    return text.replace("/data/my-images", str(root))


@pytest.mark.slow
def test_readme_minimal_form_is_planned_with_the_real_backbone(split_folder, tmp_path):
    work = checkout(tmp_path / "checkout")
    (work / "my.yaml").write_text(readme_my_yaml(split_folder))
    dry = run_workflow(work, work / "my.yaml", "-n")
    assert job_counts(dry.stdout) == {"check_own_data": 1, "download_backbone": 1, "check_backbone": 1,
                                      "train_run": 3, "suite_table": 1, "report": 1, "all": 1}, dry.stdout[-3000:]
    targets = run_workflow(work, work / "my.yaml", "-n", "--list-target-rules").stdout
    assert "results/mydata/ssf/" in targets and "results/mydata/lora/" in targets
    # the README's cost line: one job per method, all of train/ (+ its derived val) x the default 100 epochs
    plan = subprocess.run([sys.executable, "-m", "vpeft.cli", "plan", "--configfile", "config/config.yaml", "my.yaml",
                           "--suite", "mydata", "--json"], cwd=work, capture_output=True, text=True, check=True)
    rows = json.loads(plan.stdout)
    assert [(r["method"], r["jobs"], r["train_samples"], r["eval_samples"]) for r in rows] == [
        (m, 1, 33 * 100, 12) for m in ("linear", "lora", "ssf")]


@pytest.mark.slow
def test_own_folder_and_csv_run_end_to_end_through_snakemake(tmp_path):
    folder = write_folder(tmp_path / "shapes", {"train": {"circle": 12, "square": 12, "stripes": 12},
                                                 "test": {"circle": 5, "square": 5, "stripes": 5}})
    pool = write_folder(tmp_path / "pool", {"": {"circle": 10, "square": 10, "stripes": 10}}, seed=1)
    (pool / "labels.csv").write_text("path,label\n" + "".join(
        f"{n}/{i:03d}.png,{n}\n" for n in CLASSES for i in range(10)))
    config = shipped_config()
    demo = config["backbones"]["vit-demo"]
    demo["checkpoint"] = str(ROOT / demo["checkpoint"])
    small = {"backbone": "vit-demo", "job_resources": {"gpus": 0, "cpus": 1, "mem_mb": 4000, "runtime": 60},
             "training": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 0.01, "drop_path": 0.0}}
    config["suites"]["shapes"] = {"layout": "imagefolder", "root": str(folder), "methods": ["linear", "lora"],
                                  "tuning": {"sampler": "grid", "trials": 2, "methods": ["linear"],
                                             "space": {"training": {"lr": [0.01, 0.1], "weight_decay": None}}},
                                  **small}
    config["suites"]["shapes-csv"] = {"layout": "csv", "csv": str(pool / "labels.csv"), "methods": ["linear"], **small}
    config["default_suites"] = ["shapes", "shapes-csv"]
    work = tmp_path / "work"
    work.mkdir()
    run_workflow(work, write_config(config, work / "own.yaml"), "--cores", "2")

    report = read_report(work / "reports/index.html")
    for suite, task, methods in (("shapes", "shapes", ("linear", "lora")), ("shapes-csv", "shapes_csv", ("linear",))):
        for method in methods:
            cell = report[suite].cell(method, task)
            assert not cell.classes & {"missing", "failed"} and 0 <= float(cell.text) <= 100, (suite, method, cell)
        table = (work / f"results/{suite}/table.csv").read_text().splitlines()
        assert table[0].startswith("method,") and {r.split(",")[0] for r in table[1:]} == set(methods)
    assert report["shapes"].failures() == [] and report["shapes-csv"].failures() == []

    index = json.loads((work / "resources/index/shapes/shapes.json").read_text())
    assert index["split_rule"]["derived"] == ["val"] and (work / "resources/index/shapes/shapes.splits.csv").is_file()
    assert json.loads((work / "resources/index/shapes-csv/shapes_csv.json").read_text())["split_rule"]["derived"] == [
        "test", "val"]
    metrics = json.loads((work / "results/shapes/lora/shapes/seed-42/metrics.json").read_text())
    assert metrics["eval"]["split"] == "test" and metrics["eval"]["num_images"] == 15
    assert metrics["config"]["data"]["split"]["val"] == 0.2 and metrics["config"]["data"]["classes"] == list(CLASSES)
    assert metrics["train"]["images"] == 36  # train800val200: all of train/, one epoch
    # tuning searched on val200 (the derived split) and the final run retrained the chosen setting
    tuned = json.loads((work / "results/shapes/linear/shapes/tuned.json").read_text())
    assert len(tuned["trials"]) == 2
    linear = json.loads((work / "results/shapes/linear/shapes/seed-42/metrics.json").read_text())
    assert linear["config"]["training"]["lr"] == tuned["training"]["lr"] in (0.01, 0.1)

    from vpeft.export import export_run

    export_run(work / "results/shapes/lora/shapes/seed-42", "timm", tmp_path / "export", base_dir=work)
    assert json.loads((tmp_path / "export/vpeft_export.json").read_text())["classes"] == list(CLASSES)


@pytest.mark.slow
def test_a_check_failure_reaches_the_user_naming_the_file(split_folder, tmp_path):
    (split_folder / "train" / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    config = shipped_config()
    config["suites"]["mydata"] = minimal(split_folder)
    work = tmp_path / "work"
    work.mkdir()
    result = run_workflow(work, write_config(config, work / "c.yaml"), "--cores", "1",
                          "resources/index/mydata/mydata.json", check=False)
    assert result.returncode != 0
    log = (work / "logs/data/check/mydata/mydata.log").read_text()
    assert f"cannot decode image {split_folder / 'train/circle/broken.jpg'}" in log
    assert not (work / "resources/index/mydata/mydata.json").exists()
