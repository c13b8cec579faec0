"""FGVC task folders in the VPT json format (catalog §6.2), as V-PETL uses them.

A task folder holds `train.json`, `val.json` and `test.json`, each a flat `{"<image path>": <class
id>}` dict whose paths are relative to the task's image folder (`image_dir`: `images` for CUB-200-2011
and NABirds, `Images` for Stanford Dogs, the task folder itself for Oxford Flowers and Stanford Cars).
Class ids are mapped to 0..C-1 by sorting the ids of all three splits together (VPT sorts each split's
ids separately, which shifts labels whenever a split lacks a class; here that can not happen).

Checked before training: the three files parse, ids are integers, the number of classes equals the
config's, the training split has every class, no image is in two splits (by path or content) nor listed
twice, every listed image exists and decodes (its sha256 goes into the manifest). Training reads the
manifest only.

Protocol splits map to files as train800 -> train, val200 -> val, train800val200 -> train + val,
test -> test (the native names train / val / trainval / test work too).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path, PurePosixPath

from .check import Progress, check_held_out, check_sizes, hash_images, resolve_task_folder
from .manifest import Row, read_rows
from .protocols import for_layout
from .splits import DataError

log = logging.getLogger(__name__)

SPLIT_FILES = ("train", "val", "test")
SPLITS = {
    "train800": ["train"], "val200": ["val"], "train800val200": ["train", "val"], "test": ["test"],
    "train": ["train"], "val": ["val"], "trainval": ["train", "val"],
}


def _read_json_split(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    def refuse_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen and isinstance(value, int):  # json.loads would keep the last silently
                raise DataError(f"{path}: image {key!r} is listed twice; remove the duplicated entry")
            seen[key] = value
        return seen

    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=refuse_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty object {{\"<image path>\": <class id>, ...}}")
    for key, value in data.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{path}: class id of {key!r} is {value!r}, not an integer")
        pure = PurePosixPath(key)
        if pure.is_absolute() or ".." in pure.parts:
            raise DataError(f"{path}: image path {key!r} must be relative to the image folder")
    return data


def _missing_message(task_dir: Path, suite: str, task: str, tried: list[Path]) -> str:
    return (f"data for FGVC task '{task}' of suite '{suite}' not found (looked for {', '.join(map(str, tried))}). "
            f"Let the workflow download it (suites.{suite}.source: download), or put the dataset in the VPT "
            f"json layout there (train.json, val.json, test.json and its images) and set suites.{suite}.root "
            f"to the folder that holds it.")


def check_task(task_dir: str | Path, num_classes: int, *, suite: str = "", task: str = "", source: str = "external",
               image_dir: str = ".", folders: list[str] | None = None, sizes: dict[str, int] | None = None,
               decode: bool = True, workers: int = 1):
    """Validate an FGVC task folder; returns (index, manifest rows). Raises DataError naming the file."""
    found, tried = resolve_task_folder(task_dir, folders)
    task = task or Path(task_dir).name
    if found is None:
        raise DataError(_missing_message(Path(task_dir), suite, task, tried))
    task_dir = found
    files = {split: task_dir / f"{split}.json" for split in SPLIT_FILES}
    annotations = {split: _read_json_split(files[split]) for split in SPLIT_FILES}
    counts = {split: len(a) for split, a in annotations.items()}
    check_sizes(counts, sizes, files, f"suites.{suite}.tasks.{task}" if suite else "the config",
                why=": the shipped sizes are VPT's published split, which the published FGVC numbers "
                    "used; other split files (not VPT's json.zip) make results incomparable with them")

    ids = sorted({cid for a in annotations.values() for cid in a.values()})
    if len(ids) != num_classes:
        raise DataError(f"{task_dir}: the split files hold {len(ids)} class ids, but the config says "
                        f"num_classes: {num_classes} (suites.{suite}.tasks.{task}.num_classes)")
    to_label = {cid: i for i, cid in enumerate(ids)}
    lacking = sorted(set(ids) - set(annotations["train"].values()))
    if lacking:
        raise DataError(f"{files['train']}: class ids {lacking[:10]} have no training image")
    for a, b in (("train", "test"), ("val", "test"), ("train", "val")):
        shared = sorted(set(annotations[a]) & set(annotations[b]))
        if shared:
            raise DataError(f"{files[a]} and {files[b]} share {len(shared)} image(s), e.g. {shared[0]!r}")

    image_root = task_dir / image_dir
    listed = [(split, key, cid) for split in SPLIT_FILES for key, cid in annotations[split].items()]
    for split, key, _ in listed:
        if not (image_root / key).is_file():
            raise DataError(f"{files[split]}: listed image {key} does not exist under {image_root}")
    progress = Progress(f"{suite}/{task}", len(listed))
    hashes = hash_images([image_root / key for _, key, _ in listed], decode, workers, progress)
    by_split = {split: [(key, cid) for key, cid in annotations[split].items()] for split in SPLIT_FILES}
    check_held_out(by_split, {key: digest for (_, key, _), digest in zip(listed, hashes)}, files,
                   (("train", "val"), ("train", "test"), ("val", "test")))  # by content: same path is refused above
    rows: list[Row] = []
    for (split, key, cid), digest in zip(listed, hashes):
        rel = PurePosixPath(image_dir, key).as_posix() if image_dir not in ("", ".") else key
        rows.append(Row(split, rel, to_label[cid], digest))
    splits = {}
    notes = []
    for split in SPLIT_FILES:
        histogram = Counter(to_label[cid] for cid in annotations[split].values())
        splits[split] = {"count": counts[split], "classes": {str(k): histogram[k] for k in sorted(histogram)}}
        absent = num_classes - len(histogram)
        if split != "train" and absent:
            notes.append(f"{split}.json has no image of {absent} class(es)")
            log.warning("%s/%s: %s", suite, task, notes[-1])
    index = {"suite": suite, "task": task, "layout": "fgvc", "task_dir": str(task_dir), "num_classes": num_classes,
             "source": source, "image_dir": image_dir, "splits": splits,
             "class_ids": {str(cid): label for cid, label in to_label.items()}, "notes": notes}
    return index, rows


# -- training and evaluation datasets ------------------------------------------------------------
def _transform(spec, train: bool, vpetl: bool, train_aug: bool):
    from torchvision import transforms as T

    from .transforms import build_transform

    if not vpetl:
        return build_transform(spec.input_size, spec.mean, spec.std, spec.interpolation, train_aug=train and train_aug)
    # V-PETL / VPT: shorter side to 256/224 of the input size, then a random (train) or centre crop.
    resize = T.Resize(round(spec.input_size * 256 / 224), antialias=True)
    crop = [T.RandomCrop(spec.input_size), T.RandomHorizontalFlip(0.5)] if train else [T.CenterCrop(spec.input_size)]
    return T.Compose([resize, *crop, T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def _dataset(run, spec, tc, *, train: bool):
    from .vtab import ManifestSplit, materialize_small

    index = (run.data or {}).get("index")
    if not index:
        raise DataError(f"FGVC task '{run.task}': the run names no checked task index (run.data.index); FGVC "
                        f"data is read from the manifest that the rule check_task_data writes")
    protocol = for_layout(run.protocol, "fgvc")
    split = protocol.train_split if train else protocol.eval_split
    if split not in SPLITS:
        raise DataError(f"protocol {protocol.name!r}: split {split!r} means nothing for FGVC; valid: {', '.join(SPLITS)}")
    task_dir, rows = read_rows(index, SPLITS[split])
    vpetl = protocol.augmentation == "vpetl"
    random_input = train and (vpetl or (protocol.augmentation != "none" and tc.train_aug))
    dataset = ManifestSplit(task_dir, rows, _transform(spec, train, vpetl, random_input))
    return materialize_small(dataset) if train and not random_input else dataset


def train_dataset(run, spec, tc):
    return _dataset(run, spec, tc, train=True)


def eval_dataset(run, spec, tc):
    return _dataset(run, spec, tc, train=False)
