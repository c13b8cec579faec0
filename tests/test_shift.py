"""Distribution shift: class maps of subset targets (the shipped ImageNet-A / -R maps included), the
rendered embedded targets, the ImageNet-style folder check, and the WiSE-FT interpolation."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_vtab_task
from helpers.models import small_vit
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from vpeft.data.check import check_vtab_task
from vpeft.data.imagenet import check_task as check_imagenet
from vpeft.data.splits import DataError, read_split_file
from vpeft.data.synthetic.shift_mini import kept_classes, render_task
from vpeft.engine.shift import SubsetLogits, interpolate, plain_backbone_keys, read_class_map
from vpeft.engine.train import evaluate
from vpeft.methods import apply_method, build_method

ROOT = Path(__file__).resolve().parents[1]


# -- class maps -----------------------------------------------------------------------------------
def _map(tmp_path, text: str) -> Path:
    path = tmp_path / "map.csv"
    path.write_text(text)
    return path


def test_class_map_reads_target_to_source_and_checks_names(tmp_path):
    path = _map(tmp_path, "# from somewhere\ntarget,source,name\n0,3,b\n1,1,a\n2,7,c\n")
    assert read_class_map(path, target_classes=3, source_classes=10, target_names=["b", "a", "c"]) == [3, 1, 7]
    with pytest.raises(DataError, match="target label 1 is class 'a'"):
        read_class_map(path, target_classes=3, source_classes=10, target_names=["b", "x", "c"])


@pytest.mark.parametrize(("text", "message"), [
    ("target,source\n0,1\n0,2\n", "mapped twice"),
    ("target,source\n0,1\n", "the target has 2 classes"),
    ("target,source\n0,1\n1,10\n", "outside \\[0, 10\\)"),
    ("target,source\n0,4\n1,4\n", "same source class"),
    ("a,b\n0,1\n1,2\n", "expected a header"),
    ("target,source\n0,x\n1,2\n", "must be integers"),
])
def test_class_map_refuses_a_broken_mapping(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_class_map(_map(tmp_path, text), target_classes=2, source_classes=10)


@pytest.mark.parametrize("name", ["imagenet-a", "imagenet-r"])
def test_shipped_imagenet_subset_maps_cover_200_of_the_1000_classes(name):
    path = ROOT / f"config/shift/{name}.classes.csv"
    mapping = read_class_map(path, target_classes=200, source_classes=1000)
    assert len(set(mapping)) == 200 and mapping == sorted(mapping)  # both sorted by WordNet id
    assert "Source:" in path.read_text()


def test_shipped_maps_match_the_releases_spot_checks():
    a = read_class_map(ROOT / "config/shift/imagenet-a.classes.csv", target_classes=200, source_classes=1000)
    # natural-adv-examples' thousand_k_to_200: 6 -> 0, 207 -> 38, 589 -> 118, 988 -> 199
    assert (a[0], a[38], a[118], a[199]) == (6, 207, 589, 988)
    rows = [line.split(",") for line in (ROOT / "config/shift/imagenet-r.classes.csv").read_text().splitlines()
            if line and not line.startswith(("#", "target"))]
    names = [r[2] for r in rows]
    assert names == sorted(names) and len(set(names)) == 200 and all(n.startswith("n") and len(n) == 9 for n in names)
    # ImageNet-R's first classes: goldfish n01443537 = index 1, great white shark n01484850 = 2
    assert rows[0][1:] == ["1", "n01443537"] and rows[1][1:] == ["2", "n01484850"]


def test_subset_logits_predict_in_target_label_order():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x  # the inputs are the logits

    logits = torch.tensor([[0.0, 5.0, 1.0, 9.0], [3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 4.0, 1.0]])
    source_labels = [3, 0, 2]  # target 0 = source 3, target 1 = source 0, target 2 = source 2
    picked = SubsetLogits(Fixed(), source_labels)(logits)
    assert picked.argmax(1).tolist() == [0, 1, 2]
    loader = DataLoader(TensorDataset(logits, torch.tensor([0, 1, 1])), batch_size=2)
    top1, n = evaluate(SubsetLogits(Fixed(), source_labels), loader, "cpu")
    assert n == 3 and top1 == pytest.approx(2 / 3)


# -- embedded targets -----------------------------------------------------------------------------
def test_rendered_target_is_deterministic_relabelled_and_passes_the_check(tmp_path):
    source = write_vtab_task(tmp_path / "src/toy", num_classes=5, sizes={"train800": 10, "val200": 5, "test": 10})
    first = render_task(source, tmp_path / "a/toy", style="sketch", seed=0, num_classes=5, classes="odd")
    render_task(source, tmp_path / "b/toy", style="sketch", seed=0, num_classes=5, classes="odd")
    digest = {name: hashlib.sha256(b"".join(p.read_bytes() for p in sorted((tmp_path / name / "toy").rglob("*")) if p.is_file()))
              .hexdigest() for name in ("a", "b")}
    assert digest["a"] == digest["b"]
    assert kept_classes(5, "odd") == [1, 3] and first["num_classes"] == 2
    assert (tmp_path / "a/toy/class_map.csv").read_text().splitlines()[1:] == ["target,source", "0,1", "1,3"]
    source_test = read_split_file(source / "test.txt")
    target_test = read_split_file(tmp_path / "a/toy/test.txt", 2)
    assert len(target_test) == sum(1 for _, label in source_test if label in (1, 3))
    index, _ = check_vtab_task(tmp_path / "a/toy", 2, suite="t", task="toy")  # train800val200 = train800 + val200
    assert index["splits"]["test"]["count"] == len(target_test)
    noisy = render_task(source, tmp_path / "n/toy", style="noise", seed=0, num_classes=5)
    assert noisy["num_classes"] == 5
    a = np.asarray(Image.open(source / "images/test/000000.png"), dtype=float)
    b = np.asarray(Image.open(tmp_path / "n/toy/images/test/000000.png"), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() > 10  # actually shifted


# -- ImageNet-style folders -----------------------------------------------------------------------
def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_imagenet_folders_train_val_and_numbered_classes(tmp_path):
    for split, offset in (("train", 0), ("val", 100)):
        for c, wnid in enumerate(["n02", "n01", "n03"]):
            for i in range(2):
                _image(tmp_path / f"in/imagenet/{split}/{wnid}/{i}.JPEG", offset + 10 * c + i)
    index, rows = check_imagenet(tmp_path / "in/imagenet", 3, suite="imagenet", task="imagenet")
    assert index["class_names"] == ["n01", "n02", "n03"]
    assert {r.split for r in rows} == {"train", "test"} and index["splits"]["test"]["count"] == 6
    assert all(r.label == index["class_names"].index(r.path.split("/")[1]) for r in rows)
    # ImageNet-V2 names its class folders by index: "10" is class 10, not the third in text order
    for c in range(12):
        _image(tmp_path / f"v2/imagenet/{c}/a.jpeg", c)
    index, rows = check_imagenet(tmp_path / "v2/imagenet", 12, suite="imagenet-v2", task="imagenet")
    assert index["class_names"][10] == "10" and {r.label for r in rows if r.path.startswith("10/")} == {10}


def test_imagenet_check_names_missing_data_empty_classes_and_shared_images(tmp_path):
    with pytest.raises(DataError, match="hendrycks/natural-adv-examples"):
        check_imagenet(tmp_path / "none/imagenet", 200, suite="imagenet-a", task="imagenet", folders=["imagenet-a"])
    (tmp_path / "t/imagenet/n01").mkdir(parents=True)
    _image(tmp_path / "t/imagenet/n02/x.jpg", 1)
    with pytest.raises(DataError, match="class folder 'n01' holds no image"):
        check_imagenet(tmp_path / "t/imagenet", 2, suite="x", task="imagenet")
    with pytest.raises(DataError, match="2 class folders, but the config says num_classes: 3"):
        check_imagenet(tmp_path / "t/imagenet", 3, suite="x", task="imagenet")
    for split in ("train", "val"):
        _image(tmp_path / f"d/imagenet/{split}/n01/same.png", 7)
    with pytest.raises(DataError, match="in both train/ and val/"):
        check_imagenet(tmp_path / "d/imagenet", 1, suite="x", task="imagenet")


# -- WiSE-FT --------------------------------------------------------------------------------------
def test_wise_interpolates_full_and_merged_backbones_but_not_adapter_layers():
    frozen = small_vit(num_classes=3, seed=0)
    tuned = copy.deepcopy(frozen)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p))
    keys = plain_backbone_keys(tuned, frozen)
    assert keys and not any(k.startswith("head.") for k in keys) and "blocks.0.attn.qkv.weight" in keys
    theta0, theta_ft = copy.deepcopy(frozen.state_dict()), copy.deepcopy(tuned.state_dict())
    head = tuned.head.weight.detach().clone()
    interpolate(tuned, theta0, theta_ft, keys, 0.25)
    w = tuned.state_dict()["blocks.0.attn.qkv.weight"]
    assert torch.allclose(w, 0.75 * theta0["blocks.0.attn.qkv.weight"] + 0.25 * theta_ft["blocks.0.attn.qkv.weight"])
    assert torch.equal(tuned.head.weight, head)  # the trained head at every alpha
    interpolate(tuned, theta0, theta_ft, keys, 0.0)
    assert torch.equal(tuned.state_dict()["blocks.1.mlp.fc1.weight"], theta0["blocks.1.mlp.fc1.weight"])
    interpolate(tuned, theta0, theta_ft, keys, 1.0)
    assert all(torch.equal(tuned.state_dict()[k], theta_ft[k]) for k in keys)
    # a merged LoRA model is the plain architecture again; an adapter model is not
    lora = small_vit(num_classes=3, seed=0)
    applied = apply_method(lora, build_method("lora", {}))
    assert plain_backbone_keys(applied.merge_and_unload(), frozen) is not None
    adapter = small_vit(num_classes=3, seed=0)
    apply_method(adapter, build_method("adapter", {}))
    assert plain_backbone_keys(adapter, frozen) is None
