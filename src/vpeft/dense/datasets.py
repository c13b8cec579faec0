"""Checking dense task folders before training: COCO 2017, PASCAL VOC 2007+2012, ADE20K (and the
generated sets, which use the same layouts). Torch-free and mmdet-free: the data check job stays light.

Layouts (the task folder is `<suite root>/<task>`, as the download rules assemble it):

* `coco`: `annotations/instances_<split>.json` + images in `<split>/` (COCO 2017: train2017, val2017).
  The json must parse, hold `images`, `annotations` and `categories` lists whose entries have the
  fields mmdet and pycocotools read; every annotation must name a listed image and category and carry
  a box [x, y, w, h] with w, h >= 0; every listed image must exist and decode.
* `voc`: `VOC2007/`, `VOC2012/` (VOCdevkit's year folders) with `ImageSets/Main/<set>.txt`,
  `Annotations/<id>.xml`, `JPEGImages/<id>.jpg`. Split names: `trainval0712` (2007 + 2012 trainval,
  the dense papers' training set), `test2007`, and `<set><year>` in general.
* `ade20k`: ADEChallengeData2016's `images/<split>/*.jpg` and `annotations/<split>/*.png`, one label
  map per image (splits `training`, `validation`); an optional `classes.txt` names the classes
  (ADE20K's 150 names come with mmseg).

The check raises `DataError` naming the bad file (and the json / list that names it), or returns an
index: per split the image and instance counts, class names, and the sha256 of every annotation
file; with `hash_images` also the sha256 of every image. A manifest csv (`split,kind,path,bytes,
sha256`) lists every file the check looked at. Training reads the index and refuses annotation files
whose sha256 changed since.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

from ..data.splits import DataError
from ..io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
MANIFEST_FIELDS = ("split", "kind", "path", "bytes", "sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _missing_folder(task_dir: Path, layout: str, suite: str, source: str) -> str:
    if source == "embedded":
        return f"embedded task folder {task_dir} is missing; re-run the rule generate_embedded_dense_task"
    expected = {"coco": "annotations/instances_train2017.json, train2017/, val2017/",
                "voc": "VOC2007/ and VOC2012/ (VOCdevkit's year folders)",
                "ade20k": "images/{training,validation}/, annotations/{training,validation}/ (ADEChallengeData2016)"}
    return (f"data of dense suite '{suite}' not found at {task_dir}: put the extracted {layout} copy there "
            f"({expected.get(layout, '')}), or set suites.{suite}.root to the folder that holds it, or use "
            f"source: download")


class _Manifest:
    def __init__(self, task_dir: Path, hash_images: bool, decode: bool = True):
        self.task_dir = task_dir
        self.hash_images = hash_images
        self.decode = decode
        self.rows: list[tuple] = []

    def add(self, split: str, kind: str, path: Path, *, force_hash: bool = False) -> str | None:
        if kind == "image" and self.decode:  # a corrupt image fails here, not hours into training
            from ..data.manifest import decode_image

            data = path.read_bytes()
            decode_image(data, path)
            digest = hashlib.sha256(data).hexdigest() if (force_hash or self.hash_images) else None
        else:
            digest = _sha256(path) if (force_hash or self.hash_images) else None
        self.rows.append((split, kind, path.relative_to(self.task_dir).as_posix(), path.stat().st_size, digest or ""))
        return digest


# -- COCO ---------------------------------------------------------------------------------------------
def _load_coco_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"COCO annotation file {path} does not exist")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: '{key}' must be a list (COCO instances format)")
    return data


def _need(entry, fields: dict, where: str) -> None:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    for field, kinds in fields.items():
        if not isinstance(entry.get(field), kinds) or isinstance(entry.get(field), bool):
            raise DataError(f"{where}: field '{field}' missing or not {getattr(kinds, '__name__', kinds)}")


def _check_coco_split(task_dir: Path, split: str, num_classes: int, manifest: _Manifest) -> dict:
    ann_path = task_dir / "annotations" / f"instances_{split}.json"
    data = _load_coco_json(ann_path)
    digest = manifest.add(split, "annotations", ann_path, force_hash=True)
    categories = {}
    for i, cat in enumerate(data["categories"]):
        _need(cat, {"id": int, "name": str}, f"{ann_path}: categories[{i}]")
        categories[cat["id"]] = cat["name"]
    if len(categories) != num_classes:
        raise DataError(f"{ann_path}: {len(categories)} categories, but the suite's task has num_classes "
                        f"{num_classes}")
    images = {}
    for i, image in enumerate(data["images"]):
        _need(image, {"id": int, "file_name": str, "height": int, "width": int}, f"{ann_path}: images[{i}]")
        images[image["id"]] = image
    per_class = dict.fromkeys(categories.values(), 0)
    for i, ann in enumerate(data["annotations"]):
        where = f"{ann_path}: annotations[{i}]"
        _need(ann, {"id": int, "image_id": int, "category_id": int, "bbox": list}, where)
        if ann["image_id"] not in images:
            raise DataError(f"{where}: image_id {ann['image_id']} is not in 'images'")
        if ann["category_id"] not in categories:
            raise DataError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
        box = ann["bbox"]
        if len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box) \
                or box[2] < 0 or box[3] < 0:
            raise DataError(f"{where}: bbox must be [x, y, w, h] with w, h >= 0, got {box}")
        per_class[categories[ann["category_id"]]] += 1
    folder = task_dir / split
    for image in images.values():
        path = folder / image["file_name"]
        if not path.is_file():
            raise DataError(f"{ann_path} lists image {image['file_name']}, but {path} does not exist")
        manifest.add(split, "image", path)
    return {"images": len(images), "instances": len(data["annotations"]), "per_class": per_class,
            "annotation_file": ann_path.relative_to(task_dir).as_posix(), "annotation_sha256": digest,
            "classes": [categories[k] for k in sorted(categories)]}


# -- PASCAL VOC -----------------------------------------------------------------------------------------
def voc_image_sets(split: str) -> list[tuple[str, str]]:
    """`trainval0712` -> [(VOC2007, trainval), (VOC2012, trainval)]; `test2007` -> [(VOC2007, test)]."""
    for name in ("trainval", "train", "val", "test"):
        if split.startswith(name) and split[len(name):].isdigit():
            years = split[len(name):]
            if years == "0712":
                return [("VOC2007", name), ("VOC2012", name)]
            if len(years) == 4:
                return [(f"VOC{years}", name)]
    raise DataError(f"VOC split {split!r} is not <set><year> (e.g. test2007) or <set>0712 (e.g. trainval0712)")


def _check_voc_split(task_dir: Path, split: str, num_classes: int, manifest: _Manifest) -> dict:
    if num_classes != len(VOC_CLASSES):
        raise DataError(f"PASCAL VOC has {len(VOC_CLASSES)} classes, the suite's task says {num_classes}")
    per_class = dict.fromkeys(VOC_CLASSES, 0)
    images = objects = 0
    sets = []
    for year, image_set in voc_image_sets(split):
        list_path = task_dir / year / "ImageSets" / "Main" / f"{image_set}.txt"
        if not list_path.is_file():
            raise DataError(f"VOC image list {list_path} does not exist")
        digest = manifest.add(split, "image-set", list_path, force_hash=True)
        sets.append({"file": list_path.relative_to(task_dir).as_posix(), "sha256": digest})
        ids = [line.split()[0] for line in list_path.read_text().splitlines() if line.strip()]
        for image_id in ids:
            xml_path = task_dir / year / "Annotations" / f"{image_id}.xml"
            jpg_path = task_dir / year / "JPEGImages" / f"{image_id}.jpg"
            if not jpg_path.is_file():
                raise DataError(f"{list_path} lists {image_id}, but {jpg_path} does not exist")
            try:
                root = ET.parse(xml_path).getroot()
            except FileNotFoundError:
                raise DataError(f"{list_path} lists {image_id}, but {xml_path} does not exist") from None
            except ET.ParseError as err:
                raise DataError(f"{xml_path}: not valid XML ({err})") from None
            for obj in root.iter("object"):
                name = (obj.findtext("name") or "").strip()
                if name not in per_class:
                    raise DataError(f"{xml_path}: object class {name!r} is not one of the 20 VOC classes")
                per_class[name] += 1
                objects += 1
            manifest.add(split, "annotation", xml_path)
            manifest.add(split, "image", jpg_path)
            images += 1
    return {"images": images, "instances": objects, "per_class": per_class, "image_sets": sets,
            "classes": list(VOC_CLASSES)}


# -- ADE20K -------------------------------------------------------------------------------------------------
def _check_ade_split(task_dir: Path, split: str, num_classes: int, manifest: _Manifest, decode: bool) -> dict:
    img_dir, ann_dir = task_dir / "images" / split, task_dir / "annotations" / split
    for folder in (img_dir, ann_dir):
        if not folder.is_dir():
            raise DataError(f"ADE20K folder {folder} does not exist")
    images = sorted(img_dir.glob("*.jpg"))
    if not images:
        raise DataError(f"{img_dir} holds no .jpg image")
    labels = {p.stem: p for p in ann_dir.glob("*.png")}
    extra = sorted(set(labels) - {p.stem for p in images})
    if extra:
        raise DataError(f"{labels[extra[0]]} has no image {img_dir / (extra[0] + '.jpg')}")
    highest = 0
    for image in images:
        label = labels.get(image.stem)
        if label is None:
            raise DataError(f"image {image} has no label map {ann_dir / (image.stem + '.png')}")
        if decode:
            highest = max(highest, _label_max(label))
        manifest.add(split, "image", image)
        manifest.add(split, "label", label)
    if highest > num_classes:
        raise DataError(f"{ann_dir}: label value {highest} above the suite's num_classes {num_classes} "
                        f"(ADE label maps hold class + 1, 0 = unlabelled)")
    return {"images": len(images), "label_maps": len(labels), "max_label": highest if decode else None}


def _label_max(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return int(max(img.getextrema()) if img.mode in ("L", "P") else -1)
    except OSError as err:
        raise DataError(f"{path}: cannot decode the label map ({err})") from None


# -- entry point --------------------------------------------------------------------------------------------
def check_dense_task(layout: str, task_dir: str | Path, num_classes: int, splits: list[str], *, suite: str = "",
                     task: str = "", source: str = "external", hash_images: bool | None = None,
                     decode: bool | None = None, classes: list[str] | None = None) -> tuple[dict, list[tuple]]:
    """Validate the splits of a dense task folder; return (index, manifest rows)."""
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise DataError(_missing_folder(task_dir, layout, suite, source))
    embedded = source == "embedded"
    decode = True if decode is None else decode
    manifest = _Manifest(task_dir, embedded if hash_images is None else hash_images, decode)
    out = {}
    for split in dict.fromkeys(splits):
        log.info("checking %s split %s of %s", layout, split, task_dir)
        if layout == "coco":
            out[split] = _check_coco_split(task_dir, split, num_classes, manifest)
        elif layout == "voc":
            out[split] = _check_voc_split(task_dir, split, num_classes, manifest)
        elif layout == "ade20k":
            out[split] = _check_ade_split(task_dir, split, num_classes, manifest, decode)
        else:
            raise DataError(f"unknown dense layout {layout!r}; valid: coco, voc, ade20k")
    names = classes or next((s["classes"] for s in out.values() if s.get("classes")), None)
    if names is None and (task_dir / "classes.txt").is_file():  # a segmentation set that names its classes
        names = [line.strip() for line in (task_dir / "classes.txt").read_text().splitlines() if line.strip()]
    if names is not None and len(names) != num_classes:
        raise DataError(f"{task_dir}: {len(names)} class names, but the suite's task has num_classes {num_classes}")
    index = {"suite": suite, "task": task, "layout": layout, "task_dir": str(task_dir), "num_classes": num_classes,
             "source": source, "classes": names, "splits": out}
    return index, manifest.rows


def write_dense_index(index_path: str | Path, index: dict, rows: list[tuple]) -> dict:
    """Write the manifest csv, then the index naming it (never an index pointing at a missing manifest)."""
    index_path = Path(index_path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    manifest = index_path.with_name(index_path.name.removesuffix(".json") + ".manifest.csv")
    atomic_write_bytes(manifest, data)
    index = dict(index, manifest={"file": manifest.name, "sha256": hashlib.sha256(data).hexdigest(),
                                  "rows": len(rows), "fields": list(MANIFEST_FIELDS)})
    atomic_write_json(index_path, index)
    return index


def read_dense_index(index_path: str | Path, splits: list[str]) -> dict:
    """The checked index of a task; annotation files that changed since the check are refused."""
    index_path = Path(index_path)
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        raise DataError(f"dense task index {index_path} not found; the rule check_dense_task writes it") from None
    except json.JSONDecodeError as err:
        raise DataError(f"dense task index {index_path} is not valid JSON ({err})") from None
    task_dir = Path(index["task_dir"])
    for split in splits:
        info = index["splits"].get(split)
        if info is None:
            raise DataError(f"{index_path} has no split {split!r} (it has {', '.join(index['splits'])})")
        checked = [(info.get("annotation_file"), info.get("annotation_sha256"))] if info.get("annotation_file") \
            else [(s["file"], s["sha256"]) for s in info.get("image_sets", [])]
        for rel, digest in checked:
            if digest and _sha256(task_dir / rel) != digest:
                raise DataError(f"{task_dir / rel} changed since the data check ({index_path}); re-run it")
    return index
