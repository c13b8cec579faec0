"""Dense data: the embedded generators (COCO json instances, ADE-format segmentation) and the layout
checks of COCO, PASCAL VOC and ADE20K folders, whose errors must name the bad file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpeft.data.splits import DataError
from vpeft.dense.datasets import check_dense_task, read_dense_index, voc_image_sets, write_dense_index
from vpeft.dense.synthetic import GenerationError, generate_dense_task

SIZES = {"train800": 6, "val200": 2, "test": 4}
SPLITS = ["train800val200", "test"]


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def shapes_dir(tmp_path):
    out = tmp_path / "shapes"
    generate_dense_task("coco", out, seed=0, sizes=SIZES)
    return out


@pytest.fixture
def scenes_dir(tmp_path):
    out = tmp_path / "scenes"
    generate_dense_task("ade20k", out, seed=0, sizes=SIZES)
    return out


def test_generators_are_byte_identical_per_seed(tmp_path):
    for layout in ("coco", "ade20k"):
        a = generate_dense_task(layout, tmp_path / f"{layout}-a", seed=3, sizes=SIZES)
        b = generate_dense_task(layout, tmp_path / f"{layout}-b", seed=3, sizes=SIZES)
        c = generate_dense_task(layout, tmp_path / f"{layout}-c", seed=4, sizes=SIZES)
        assert a == b
        assert tree_digest(tmp_path / f"{layout}-a") == tree_digest(tmp_path / f"{layout}-b")
        assert tree_digest(tmp_path / f"{layout}-a") != tree_digest(tmp_path / f"{layout}-c")


def test_coco_json_is_read_by_pycocotools_with_boxes_matching_masks(shapes_dir):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco = COCO(str(shapes_dir / "annotations" / "instances_train800val200.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle"]
    assert len(coco.getImgIds()) == SIZES["train800"] + SIZES["val200"]
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns
    for ann in anns:
        mask = coco.annToMask(ann)
        assert mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        img = coco.loadImgs(ann["image_id"])[0]
        assert (shapes_dir / "train800val200" / img["file_name"]).is_file()
        assert mask_utils.area(ann["segmentation"]) == ann["area"]


def test_coco_union_split_is_train800_then_val200(shapes_dir):
    union = json.loads((shapes_dir / "annotations" / "instances_train800val200.json").read_text())
    first = json.loads((shapes_dir / "annotations" / "instances_train800.json").read_text())
    assert (shapes_dir / "train800val200" / "000000.png").read_bytes() == (shapes_dir / "train800" / "000000.png").read_bytes()
    assert len(union["images"]) == SIZES["train800"] + SIZES["val200"]
    assert union["annotations"][: len(first["annotations"])] == first["annotations"]


def test_ade_format_pairs_and_labels(scenes_dir):
    images = sorted((scenes_dir / "images" / "test").glob("*.jpg"))
    assert len(images) == SIZES["test"]
    labels = np.array(Image.open(scenes_dir / "annotations" / "test" / (images[0].stem + ".png")))
    assert labels.shape == (64, 64) and labels.dtype == np.uint8
    assert 1 <= labels.min() and labels.max() <= 4  # class + 1, no unlabelled pixel
    assert (scenes_dir / "classes.txt").read_text().split() == ["stripes", "checkerboard", "dots", "blobs"]


def test_generation_settings_are_checked(tmp_path):
    with pytest.raises(GenerationError, match="multiple of 32"):
        generate_dense_task("coco", tmp_path / "x", seed=0, sizes=SIZES, image_size=48)
    with pytest.raises(GenerationError, match="sizes.test"):
        generate_dense_task("coco", tmp_path / "x", seed=0, sizes={"test": 0})
    with pytest.raises(GenerationError, match="valid: coco, ade20k"):
        generate_dense_task("voc", tmp_path / "x", seed=0, sizes=SIZES)


def test_check_writes_index_and_manifest_and_refuses_changed_annotations(shapes_dir, tmp_path):
    index, rows = check_dense_task("coco", shapes_dir, 3, SPLITS, source="embedded", suite="coco-mini", task="shapes")
    assert index["classes"] == ["circle", "square", "triangle"]
    assert index["splits"]["test"]["images"] == SIZES["test"]
    assert all(r[4] for r in rows)  # embedded: every file hashed
    path = write_dense_index(tmp_path / "index" / "shapes.json", index, rows)
    assert (tmp_path / "index" / "shapes.manifest.csv").is_file() and path["manifest"]["rows"] == len(rows)
    assert read_dense_index(tmp_path / "index" / "shapes.json", SPLITS)["task"] == "shapes"
    ann = shapes_dir / "annotations" / "instances_test.json"
    ann.write_text(ann.read_text().replace('"iscrowd": 0', '"iscrowd": 0 '))
    with pytest.raises(DataError, match="instances_test.json changed since the data check"):
        read_dense_index(tmp_path / "index" / "shapes.json", SPLITS)


def test_malformed_coco_json_names_the_file(shapes_dir):
    ann = shapes_dir / "annotations" / "instances_test.json"
    ann.write_text(ann.read_text()[:-20])
    with pytest.raises(DataError, match=r"instances_test\.json: not valid JSON"):
        check_dense_task("coco", shapes_dir, 3, SPLITS)


def test_missing_image_names_the_file_and_the_json(shapes_dir):
    (shapes_dir / "test" / "000002.png").unlink()
    with pytest.raises(DataError, match=r"instances_test\.json lists image 000002\.png, but .*test/000002\.png "
                                        r"does not exist"):
        check_dense_task("coco", shapes_dir, 3, SPLITS)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0].update(category_id=9), r"annotations\[0\]: category_id 9 is not in"),
    (lambda d: d["annotations"][0].update(image_id=999), r"annotations\[0\]: image_id 999 is not in"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), r"annotations\[0\]: bbox must be"),
    (lambda d: d["images"][0].pop("file_name"), r"images\[0\]: field 'file_name' missing"),
    (lambda d: d.pop("categories"), r"'categories' must be a list"),
])
def test_bad_coco_entries_name_file_and_entry(shapes_dir, edit, message):
    ann = shapes_dir / "annotations" / "instances_test.json"
    data = json.loads(ann.read_text())
    edit(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_test\.json.*" + message):
        check_dense_task("coco", shapes_dir, 3, SPLITS)


def test_class_count_must_match_the_config(shapes_dir):
    with pytest.raises(DataError, match="3 categories, but the suite's task has num_classes 80"):
        check_dense_task("coco", shapes_dir, 80, SPLITS)


def test_missing_folder_says_where_to_put_the_data(tmp_path):
    with pytest.raises(DataError, match="put the extracted coco copy there .*suites.coco.root"):
        check_dense_task("coco", tmp_path / "nothing", 80, ["train2017", "val2017"], suite="coco")


def test_ade_checks(scenes_dir):
    index, _ = check_dense_task("ade20k", scenes_dir, 4, SPLITS, source="embedded")
    assert index["classes"] == ["stripes", "checkerboard", "dots", "blobs"]
    assert index["splits"]["test"]["max_label"] == 4
    with pytest.raises(DataError, match="label value 4 above the suite's num_classes 3"):
        check_dense_task("ade20k", scenes_dir, 3, SPLITS, classes=["a", "b", "c"], source="embedded")
    label = next((scenes_dir / "annotations" / "test").glob("*.png"))
    label.unlink()
    with pytest.raises(DataError, match=rf"has no label map .*{label.name}"):
        check_dense_task("ade20k", scenes_dir, 4, SPLITS)


def _voc_tree(root: Path) -> Path:
    """A two-year VOCdevkit in miniature, written by hand."""
    for year, ids in (("VOC2007", {"trainval": ["000001"], "test": ["000002"]}), ("VOC2012", {"trainval": ["2008_1"]})):
        main = root / year / "ImageSets" / "Main"
        main.mkdir(parents=True)
        (root / year / "Annotations").mkdir()
        (root / year / "JPEGImages").mkdir()
        for image_set, names in ids.items():
            (main / f"{image_set}.txt").write_text("".join(f"{n}\n" for n in names))
            for n in names:
                Image.new("RGB", (40, 30)).save(root / year / "JPEGImages" / f"{n}.jpg")
                (root / year / "Annotations" / f"{n}.xml").write_text(
                    "<annotation><size><width>40</width><height>30</height></size><object><name>dog</name>"
                    "<difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>25</ymax>"
                    "</bndbox></object></annotation>")
    return root


def test_voc_checks(tmp_path):
    assert voc_image_sets("trainval0712") == [("VOC2007", "trainval"), ("VOC2012", "trainval")]
    assert voc_image_sets("test2007") == [("VOC2007", "test")]
    root = _voc_tree(tmp_path / "voc0712")
    index, _ = check_dense_task("voc", root, 20, ["trainval0712", "test2007"])
    assert index["splits"]["trainval0712"]["images"] == 2 and index["splits"]["test2007"]["per_class"]["dog"] == 1
    (root / "VOC2012" / "Annotations" / "2008_1.xml").write_text("<annotation><object><name>dragon</name>")
    with pytest.raises(DataError, match=r"2008_1\.xml: not valid XML"):
        check_dense_task("voc", root, 20, ["trainval0712"])
    (root / "VOC2007" / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DataError, match=r"test\.txt lists 000002, but .*000002\.jpg does not exist"):
        check_dense_task("voc", root, 20, ["test2007"])
    with pytest.raises(DataError, match="not <set><year>"):
        voc_image_sets("everything")


@pytest.mark.parametrize("layout", ["coco", "voc", "ade20k"])
def test_a_corrupt_image_is_named_by_the_check_of_every_source(tmp_path, layout):
    """Every image is decoded by the check (external data too), so a damaged file fails here, not in training."""
    if layout == "voc":
        root, splits, classes = _voc_tree(tmp_path / "voc0712"), ["trainval0712", "test2007"], 20
        image = root / "VOC2012" / "JPEGImages" / "2008_1.jpg"
    else:
        root, splits, classes = tmp_path / layout, SPLITS, 3 if layout == "coco" else 4
        generate_dense_task(layout, root, seed=0, sizes=SIZES)
        image = sorted((root / "test" if layout == "coco" else root / "images" / "test").iterdir())[1]
    check_dense_task(layout, root, classes, splits)
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 3])  # a truncated download
    with pytest.raises(DataError, match=rf"cannot decode image .*{image.name}"):
        check_dense_task(layout, root, classes, splits)
