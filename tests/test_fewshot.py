"""The few-shot protocol's sampling (vpeft.data.fewshot): deterministic per seed, k per class, nested in k,
independent of the order of the manifest and of the test split, and layout-agnostic (it samples the
manifest rows the layout's protocol split reads)."""

from __future__ import annotations

import random
import shutil
from collections import Counter

import pytest
from conftest import write_vtab_task

from vpeft.data.check import check_vtab_task
from vpeft.data.fewshot import sample_shots, write_fewshot_index
from vpeft.data.layouts import manifest_splits
from vpeft.data.manifest import Row, read_index, read_rows, write_task_index
from vpeft.data.splits import DataError


def _rows(per_class: dict[int, int], split: str = "train800val200") -> list[Row]:
    return [Row(split, f"images/{label}/{i:03d}.png", label, f"{label:02d}{i:062d}")
            for label, n in per_class.items() for i in range(n)]


def test_sampling_is_deterministic_stratified_and_nested():
    rows = _rows({0: 9, 1: 7, 2: 12})
    first = sample_shots(rows, 4, seed=0)
    assert first == sample_shots(rows, 4, seed=0)
    assert Counter(r.label for r in first) == {0: 4, 1: 4, 2: 4}
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert sample_shots(shuffled, 4, seed=0) == first  # the manifest's order does not matter
    assert sample_shots(rows, 4, seed=1) != first  # another seed, another draw
    for k in (1, 2):  # nested: the k-shot sample of a seed is part of its 4-shot sample
        assert set(sample_shots(rows, k, seed=0)) <= set(first)
    assert {r.label for r in sample_shots(rows, 1, seed=0)} == {0, 1, 2}


def test_a_class_with_fewer_than_k_images_keeps_all_of_them():
    rows = _rows({0: 2, 1: 8})
    sample = sample_shots(rows, 4, seed=3)
    assert Counter(r.label for r in sample) == {0: 2, 1: 4}
    with pytest.raises(DataError, match="positive integer"):
        sample_shots(rows, 0, seed=0)


def _checked_index(task_dir, index_path):
    index, rows = check_vtab_task(task_dir, 3, suite="toy", task="toy")
    return write_task_index(index_path, index, rows)


def test_derived_index_holds_the_sample_and_the_full_test_split(tmp_path):
    task = write_vtab_task(tmp_path / "toy", sizes={"train800": 12, "val200": 6, "test": 9})
    source = tmp_path / "index/toy.json"
    _checked_index(task, source)
    out = tmp_path / "fewshot/shots-2-seed-0.json"
    derived = write_fewshot_index(source, out, train_splits=["train800val200"], eval_splits=["test"], shots=2, seed=0)
    _, train = read_rows(out, ["train800val200"])
    _, test = read_rows(out, ["test"])
    _, source_train = read_rows(source, ["train800val200"])
    _, source_test = read_rows(source, ["test"])
    assert Counter(r.label for r in train) == {0: 2, 1: 2, 2: 2}
    assert set(train) <= set(source_train)
    assert test == source_test  # the whole test split, unchanged
    assert read_index(out)["fewshot"]["shots"] == 2 and derived["splits"]["train800val200"]["count"] == 6
    assert derived["fewshot"]["source_manifest_sha256"] == read_index(source)["manifest"]["sha256"]
    # a task index that has no train800 / val200 rows left: a stage reading them fails instead of using all
    with pytest.raises(DataError, match="no rows for split"):
        read_rows(out, ["train800"])


def test_the_sample_never_depends_on_the_test_split(tmp_path):
    """Same training images, other test images: the same k-shot sample (nothing is drawn from test)."""
    first = write_vtab_task(tmp_path / "a/toy", sizes={"train800": 12, "val200": 6, "test": 9}, seed=0)
    second = tmp_path / "b/toy"
    shutil.copytree(first, second)
    other_test = write_vtab_task(tmp_path / "c/toy", sizes={"train800": 12, "val200": 6, "test": 9}, seed=7)
    shutil.rmtree(second / "images/test")
    shutil.copytree(other_test / "images/test", second / "images/test")
    samples = []
    for name, task in (("a", first), ("b", second)):
        _checked_index(task, tmp_path / f"index/{name}.json")
        write_fewshot_index(tmp_path / f"index/{name}.json", tmp_path / f"fs/{name}.json",
                            train_splits=["train800val200"], eval_splits=["test"], shots=3, seed=1)
        samples.append(read_rows(tmp_path / f"fs/{name}.json", ["train800val200"])[1])
    assert read_rows(tmp_path / "index/a.json", ["test"])[1] != read_rows(tmp_path / "index/b.json", ["test"])[1]
    assert samples[0] == samples[1]


def test_sampling_from_the_eval_split_or_a_leaked_image_is_refused(tmp_path):
    task = write_vtab_task(tmp_path / "toy", sizes={"train800": 12, "val200": 6, "test": 9})
    _checked_index(task, tmp_path / "toy.json")
    with pytest.raises(DataError, match="same split"):
        write_fewshot_index(tmp_path / "toy.json", tmp_path / "x.json", train_splits=["test"], eval_splits=["test"],
                            shots=1, seed=0)
    # a test image that is byte-identical to a training image is refused when the sample draws it
    index, rows = check_vtab_task(task, 3, suite="toy", task="toy")
    leaked = [r for r in rows if r.split == "train800val200"]
    rows = rows + [Row("test", r.path, r.label, r.sha256) for r in leaked]
    write_task_index(tmp_path / "leak.json", index, rows)
    with pytest.raises(DataError, match="same bytes as an image of the evaluation split"):
        write_fewshot_index(tmp_path / "leak.json", tmp_path / "y.json", train_splits=["train800val200"],
                            eval_splits=["test"], shots=1, seed=0)


def test_layout_agnostic_fgvc_rows_keep_their_split_names(tmp_path):
    """FGVC's train800val200 reads the manifest's train + val rows: the sample is drawn from both and each
    sampled row stays in its split, so the fgvc layout reads the sample unchanged."""
    assert manifest_splits("fgvc", "train800val200") == ["train", "val"]
    assert manifest_splits("vtab", "train800val200") == ["train800val200"]
    assert manifest_splits("imagenet", "train800val200") == ["train"]
    rows = _rows({0: 5, 1: 5}, "train") + _rows({0: 3, 1: 3}, "val") + [Row("test", "t.png", 0, "f" * 64)]
    rows = [Row(r.split, f"{r.split}/{r.path}", r.label, r.split[0] + r.sha256[1:]) for r in rows]
    write_task_index(tmp_path / "fgvc.json", {"task_dir": str(tmp_path), "num_classes": 2, "layout": "fgvc"}, rows)
    write_fewshot_index(tmp_path / "fgvc.json", tmp_path / "fs.json", train_splits=manifest_splits("fgvc", "train800val200"),
                        eval_splits=manifest_splits("fgvc", "test"), shots=4, seed=2)
    _, sample = read_rows(tmp_path / "fs.json", ["train", "val"])
    assert Counter(r.label for r in sample) == {0: 4, 1: 4}
    assert {r.split for r in sample} <= {"train", "val"}
    assert set(sample) <= set(rows)


def test_method_summary_of_a_fewshot_suite_keeps_each_k_apart(tmp_path):
    import json

    from vpeft.report.summary import summarize_method

    paths = []
    for shots, values in ((1, (0.2, 0.4)), (4, (0.6, 0.8))):
        for seed, value in enumerate(values):
            path = tmp_path / f"shots-{shots}/seed-{seed}/metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"task": "t", "metric": {"name": "top1", "value": value},
                                        "params": {"trainable": 10},
                                        "protocol": {"fewshot": {"shots": shots, "seed": seed}}}))
            paths.append(path)
    summary = summarize_method(paths, "s", "m")
    assert set(summary["shots"]) == {"1", "4"}
    assert summary["shots"]["1"]["mean"] == pytest.approx(0.3) and summary["shots"]["4"]["mean"] == pytest.approx(0.7)
