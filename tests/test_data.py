"""The VTAB-layout loader and checker: real and embedded data go through the same code."""

from __future__ import annotations

import pytest
import torch

from vpeft.data.check import check_task_folder
from vpeft.data.splits import DataError, read_split_file
from vpeft.data.transforms import build_transform
from vpeft.data.vtab import VtabSplit, materialize


def test_split_dataset_reads_images_and_labels(vtab_task):
    ds = VtabSplit(vtab_task, "train800val200", build_transform(32, (0.5,) * 3, (0.5,) * 3), num_classes=3)
    assert len(ds) == 16
    image, label = ds[1]
    assert image.shape == (3, 32, 32) and label == 1
    tensors = materialize(ds)
    assert torch.equal(tensors.tensors[0][1], image)


def test_resize_to_backbone_input(vtab_task):
    ds = VtabSplit(vtab_task, "test", build_transform(48, (0.5,) * 3, (0.5,) * 3, "bicubic"))
    assert ds[0][0].shape == (3, 48, 48)


@pytest.mark.parametrize("content, message", [
    ("images/train800/000000.png 0\nimages/train800/000001.png\n", r"train800\.txt:2: expected '<image path> <label>'"),
    ("images/train800/000000.png zero\n", r"train800\.txt:1: label 'zero' is not an integer"),
    ("images/train800/000000.png 7\n", r"train800\.txt:1: label 7 outside \[0, 3\)"),
    ("/etc/passwd 0\n", r"train800\.txt:1: image path '/etc/passwd' must be relative"),
    ("../../secret.png 0\n", r"must be relative to the task folder"),
    ("\n\n", r"split file is empty"),
])
def test_malformed_split_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "train800.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_split_file(path, num_classes=3)


def test_checker_accepts_a_good_folder(vtab_task):
    index = check_task_folder(vtab_task, 3, suite="toy-suite", task="toy")
    assert index["splits"]["train800val200"]["count"] == 16
    assert index["splits"]["test"]["classes"] == {"0": 4, "1": 3, "2": 3}


def test_checker_names_a_corrupt_image(vtab_task):
    (vtab_task / "images/test/000003.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot decode image .*images/test/000003\.png"):
        check_task_folder(vtab_task, 3)


def test_checker_names_a_missing_image(vtab_task):
    (vtab_task / "images/val200/000001.png").unlink()
    with pytest.raises(DataError, match=r"val200\.txt: listed image images/val200/000001\.png does not exist"):
        check_task_folder(vtab_task, 3)


def test_missing_real_data_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=r"not found at .*vtab-1k/dtd\. Put an extracted VTAB-1k copy .*suites\.vtab\.root"):
        check_task_folder(tmp_path / "vtab-1k" / "dtd", 47, suite="vtab", task="dtd")


def test_cifar100_folder_name_gets_a_hint(tmp_path):
    (tmp_path / "cifar100").mkdir()
    with pytest.raises(DataError, match="'cifar100' folder exists beside it"):
        check_task_folder(tmp_path / "cifar", 100, suite="vtab", task="cifar")


def test_rand_augment_posterize_at_full_magnitude_gives_a_black_image_instead_of_raising():
    """"inc1" posterize keeps 0 bits at magnitude 10 (reached by m9 with std 0.5): Pillow 13 refuses
    0 bits, so the op must give what older Pillow gave (every bit masked off) instead of crashing."""
    import numpy as np
    from PIL import Image

    from vpeft.data.transforms import build_transform

    transform = build_transform(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), train_aug=True)
    rand_augment = transform.transforms[2]
    (posterize,) = [op for op in rand_augment.ops if op.name == "PosterizeIncreasing"]
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 10, 0
    image = Image.fromarray(np.random.default_rng(0).integers(1, 256, (32, 32, 3), dtype=np.uint8))
    assert not np.asarray(posterize(image)).any()
    posterize.magnitude = 5  # 2 bits kept: the top two bits survive, the rest are cleared
    kept = np.asarray(posterize(image))
    assert (kept == (np.asarray(image) & 0b11000000)).all() and kept.any()
