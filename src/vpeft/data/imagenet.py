"""ImageNet-style class folders: ImageNet-1k itself and its distribution-shift test sets.

A task folder holds either `train/<class>/<image>` and `val/<class>/<image>` (ImageNet-1k after the
usual preparation of the validation images into class folders; `val` is read as the `test` split, as
every paper evaluating on ImageNet does), or class folders directly (a test-only set: ImageNet-V2,
-Sketch, -A, -R). Class folders are WordNet ids (sorted: ImageNet's standard class index) or, as in
ImageNet-V2's release, the class indices themselves (`0` ... `999`, read as numbers, not sorted as text).

Checked before training: the class count equals the config's, no class folder is empty, every image
decodes (its sha256 goes into the manifest), and no image (by content) is in both train and test.
Training and evaluation read the manifest only. Protocol splits map to folders as train800val200 /
train800 / train -> train, test -> val (or the test-only folder); ImageNet has no val200.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .check import Progress, check_sizes, hash_images, resolve_task_folder
from .manifest import Row, read_rows
from .protocols import for_layout
from .splits import DataError

SPLITS = {"train800val200": ["train"], "train800": ["train"], "train": ["train"], "test": ["test"]}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

#: Where each shipped suite's data comes from (shown when its folder is missing).
WHERE_TO_GET = {
    "imagenet": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org/download.php "
                "(registration needed), extracted to train/<wnid>/ and val/<wnid>/ (move the validation images "
                "into class folders with the devkit's ground truth, e.g. the widely used valprep.sh)",
    "imagenet-v2": "imagenetv2-matched-frequency.tar.gz from https://github.com/modestyachts/ImageNetV2 "
                   "(Hugging Face vaishaal/ImageNetV2), extracted: its folder holds class folders 0 ... 999",
    "imagenet-sketch": "ImageNet-Sketch from https://github.com/HaohanWang/ImageNet-Sketch (Hugging Face "
                       "imagenet_sketch), extracted: its sketch/ folder holds 1000 <wnid> class folders",
    "imagenet-a": "imagenet-a.tar from https://github.com/hendrycks/natural-adv-examples, extracted: 200 <wnid> "
                  "class folders",
    "imagenet-r": "imagenet-r.tar from https://github.com/hendrycks/imagenet-r, extracted: 200 <wnid> class folders",
}


def _class_folders(folder: Path) -> list[Path]:
    classes = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if classes and all(p.name.isdigit() for p in classes):
        return sorted(classes, key=lambda p: int(p.name))
    return sorted(classes, key=lambda p: p.name)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_task(task_dir: str | Path, num_classes: int, *, suite: str = "", task: str = "", source: str = "external",
               folders: list[str] | None = None, sizes: dict[str, int] | None = None, decode: bool = True,
               workers: int = 1, **_ignored):
    """Validate an ImageNet-style task folder; returns (index, manifest rows). Raises DataError naming the file."""
    found, tried = resolve_task_folder(task_dir, folders)
    task = task or Path(task_dir).name
    if found is None:
        where = WHERE_TO_GET.get(suite, "the dataset")
        raise DataError(f"data for task '{task}' of suite '{suite}' not found (looked for "
                        f"{', '.join(map(str, tried))}). Get {where}; put the extracted folder at one of those paths, "
                        f"or set suites.{suite}.root to the folder that holds it.")
    task_dir = found
    parts = {"train": task_dir / "train", "test": task_dir / "val"} if (task_dir / "train").is_dir() else {"test": task_dir}
    if "train" in parts and not parts["test"].is_dir():
        raise DataError(f"{task_dir}: has train/ but no val/ (the split read as test)")
    names: list[str] | None = None
    listed: list[tuple[str, Path, int]] = []
    for split, folder in parts.items():
        classes = _class_folders(folder)
        if len(classes) != num_classes:
            raise DataError(f"{folder}: {len(classes)} class folders, but the config says num_classes: {num_classes} "
                            f"(suites.{suite}.tasks.{task}.num_classes)")
        split_names = [p.name for p in classes]
        if names is not None and split_names != names:
            raise DataError(f"{folder}: class folders differ from {parts['train']}'s "
                            f"(e.g. {sorted(set(split_names) ^ set(names))[:3]})")
        names = split_names
        for label, class_dir in enumerate(classes):
            images = _images(class_dir)
            if not images:
                raise DataError(f"{class_dir}: class folder '{class_dir.name}' holds no image "
                                f"({', '.join(IMAGE_SUFFIXES)})")
            listed.extend((split, image, label) for image in images)
    counts = dict(Counter(split for split, _, _ in listed))
    check_sizes(counts, sizes, {s: parts[s] for s in parts}, f"suites.{suite}.tasks.{task}" if suite else "the config")
    progress = Progress(f"{suite}/{task}", len(listed))
    hashes = hash_images([path for _, path, _ in listed], decode, workers, progress)
    rows = [Row(split, path.relative_to(task_dir).as_posix(), label, digest)
            for (split, path, label), digest in zip(listed, hashes)]
    if "train" in parts:
        train = {r.sha256: r.path for r in rows if r.split == "train"}
        shared = [r for r in rows if r.split == "test" and r.sha256 in train]
        if shared:
            raise DataError(f"{task_dir}: {len(shared)} image(s) are in both train/ and val/ (same bytes), e.g. "
                            f"{shared[0].path} = {train[shared[0].sha256]}")
    splits = {}
    for split in parts:
        histogram = Counter(r.label for r in rows if r.split == split)
        splits[split] = {"count": counts[split], "classes": {str(k): histogram[k] for k in sorted(histogram)}}
    index = {"suite": suite, "task": task, "layout": "imagenet", "task_dir": str(task_dir), "num_classes": num_classes,
             "source": source, "splits": splits, "class_names": names}
    return index, rows


# -- training and evaluation datasets ------------------------------------------------------------
def _dataset(run, spec, tc, *, train: bool):
    from .fgvc import _transform  # the same resize-256 / crop pipeline as FGVC's V-PETL protocol
    from .vtab import ManifestSplit, materialize_small

    index = (run.data or {}).get("index")
    if not index:
        raise DataError(f"task '{run.task}': the run names no checked task index (run.data.index); ImageNet-style "
                        f"data is read from the manifest that the rule check_task_data writes")
    protocol = for_layout(run.protocol, "imagenet")
    split = protocol.train_split if train else protocol.eval_split
    if split not in SPLITS:
        raise DataError(f"protocol {protocol.name!r}: split {split!r} means nothing for ImageNet-style folders; "
                        f"valid: {', '.join(SPLITS)}")
    task_dir, rows = read_rows(index, SPLITS[split])
    vpetl = protocol.augmentation == "vpetl"
    random_input = train and (vpetl or (protocol.augmentation != "none" and tc.train_aug))
    dataset = ManifestSplit(task_dir, rows, _transform(spec, train, vpetl, random_input))
    return materialize_small(dataset) if train and not random_input else dataset


def train_dataset(run, spec, tc):
    return _dataset(run, spec, tc, train=True)


def eval_dataset(run, spec, tc):
    return _dataset(run, spec, tc, train=False)
