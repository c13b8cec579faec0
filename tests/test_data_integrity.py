"""Task folders are checked by image content: train800val200 must be exactly train800 + val200, and the
parallel check gives the same manifest as the serial one."""

from __future__ import annotations

import json

import pytest
from conftest import write_vtab_task
from helpers.snake import ROOT, run_workflow

from vpeft.data.check import check_task_folder
from vpeft.data.splits import DataError


def _rewrite_line(path, index, new_line):
    lines = path.read_text().splitlines()
    lines[index] = new_line
    path.write_text("\n".join(lines) + "\n")


def test_combined_split_made_of_other_images_is_refused(tmp_path):
    task = write_vtab_task(tmp_path / "t")
    # same line count, but the first combined image is a test image (bytes of another picture)
    first = (task / "train800val200.txt").read_text().splitlines()[0].split()
    test_image = (task / "test.txt").read_text().splitlines()[5].split()[0]
    (task / first[0]).write_bytes((task / test_image).read_bytes())
    with pytest.raises(DataError, match=r"train800val200.txt is not train800 \+ val200 by image content.*"
                                        + first[0]):
        check_task_folder(task, 3)


def test_combined_split_with_a_changed_label_is_refused(tmp_path):
    task = write_vtab_task(tmp_path / "t")
    rel, label = (task / "train800val200.txt").read_text().splitlines()[0].split()
    _rewrite_line(task / "train800val200.txt", 0, f"{rel} {(int(label) + 1) % 3}")
    with pytest.raises(DataError, match="not train800 \\+ val200 by image content"):
        check_task_folder(task, 3)


def test_parallel_check_equals_the_serial_one(tmp_path):
    task = write_vtab_task(tmp_path / "t")
    assert check_task_folder(task, 3, with_rows=True, workers=4) == check_task_folder(task, 3, with_rows=True)


def test_an_undecodable_image_is_named_by_the_parallel_check(tmp_path):
    task = write_vtab_task(tmp_path / "t")
    rel = (task / "test.txt").read_text().splitlines()[3].split()[0]
    (task / rel).write_bytes(b"not an image")
    with pytest.raises(DataError, match=rel.split("/")[-1]):
        check_task_folder(task, 3, workers=3)


def test_a_checkpoint_placed_by_hand_is_held_to_the_lock_file(tmp_path):
    """No network, no sha256 in the config: the first check records the hand-placed file in the lock file;
    a different file at the same path later is refused before any run loads it, naming both hashes."""
    lock_setting = ("--config", f"download_lock={tmp_path / 'lock.json'}")
    checkpoint = tmp_path / "resources/backbones/ViT-B_16.npz"
    record = "resources/index/backbones/vit-b16-in21k.sha256.json"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights placed by hand")
    run_workflow(tmp_path, ROOT / "config/config.yaml", "--cores", "1", record, *lock_setting)
    digest = json.loads((tmp_path / record).read_text())["sha256"]
    lock = json.loads((tmp_path / "lock.json").read_text())["files"]
    assert lock["https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz"]["sha256"] == digest

    checkpoint.write_bytes(b"other weights at the same path")  # newer than the record: checked again
    second = run_workflow(tmp_path, ROOT / "config/config.yaml", "--cores", "1", record, *lock_setting,
                          check=False)
    assert second.returncode != 0
    log = (tmp_path / "logs/backbones/check_vit-b16-in21k.log").read_text()
    assert digest in log and "refusing to load it" in log


def _line(path, index):
    return path.read_text().splitlines()[index]


def test_a_duplicated_line_is_refused_naming_the_file_and_line(tmp_path):
    task = write_vtab_task(tmp_path / "t")
    test = task / "test.txt"
    lines = test.read_text().splitlines()
    test.write_text("\n".join([*lines[:-1], lines[2]]) + "\n")  # same count: the last line repeats the third
    with pytest.raises(DataError, match=rf"test\.txt:{len(lines)}: image {lines[2].split()[0]} is listed again "
                                        r"\(first at line 3\)"):
        check_task_folder(task, 3)


def test_an_evaluation_image_listed_in_the_training_split_is_refused(tmp_path):
    task = write_vtab_task(tmp_path / "t")
    trained = _line(task / "train800val200.txt", 4)
    _rewrite_line(task / "test.txt", 1, trained)  # the final runs would score an image they trained on
    with pytest.raises(DataError, match=rf"test\.txt:2: image {trained.split()[0]} is also in the training split "
                                        r".*train800val200\.txt"):
        check_task_folder(task, 3)


@pytest.mark.parametrize("train_split, held_out", [("train800", "test"), ("train800", "val200")])
def test_a_copy_of_a_training_image_in_an_evaluation_split_is_refused_by_content(tmp_path, train_split, held_out):
    task = write_vtab_task(tmp_path / "t")
    source = _line(task / f"{train_split}.txt", 0).split()[0]
    copy = _line(task / f"{held_out}.txt", 2).split()[0]
    (task / copy).write_bytes((task / source).read_bytes())  # another name, the same picture
    if held_out == "val200":  # train800val200 holds val200's images by content: keep it their copy
        n_train = len((task / "train800.txt").read_text().splitlines())
        combined = _line(task / "train800val200.txt", n_train + 2).split()[0]
        (task / combined).write_bytes((task / source).read_bytes())
    with pytest.raises(DataError, match=rf"{held_out}\.txt:3: image {copy} has the same content .* as {source} "
                                        rf"of the training split .*{train_split}\.txt"):
        check_task_folder(task, 3)
