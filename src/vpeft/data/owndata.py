"""The user's own image data: the `imagefolder` and `csv` layouts (README "Benchmark PEFT methods on
your own data").

* `imagefolder`: `<root>/<class>/<image>` (one pool of images), or `<root>/{train,val,test}/<class>/<image>`
  (`train/` required, `val/` and `test/` optional). Class folders may nest sub-folders; hidden files
  (`.DS_Store`) and files that are not images (by extension) are skipped and counted in the index's notes.
* `csv`: a file of `path,label[,split]` rows (a header row naming the columns is optional), `path`
  relative to `root` (default: the file's folder) or absolute, `label` a class name, `split` one of
  train / val / test.

Classes are the class folder names (csv: the labels), sorted, numerically when every name is an
integer; label i is the i-th. Splits the data lacks are derived, deterministic and stratified: test
(when there is none) from the training pool, then val from what is left, then, when `split.train` is
set, the training images kept (VTAB-1k: `split: {val: 200, train: 800}`); `SplitSettings` holds the
defaults. An image's place depends only on the seed and its content hash (its rank within its
class), so renaming files moves nothing and identical images always land in the same split.

The check (rule check_own_data) decodes every image, refuses empty class folders, unreadable images,
an image (by path or content) in two splits and identical images with two labels, and writes the
same index and sha256-checked manifest as the real suites, in VTAB-1k's split vocabulary (train800 =
train, val200 = val, train800val200 = both, test), so every protocol, tuning on val200 and the final
train800val200 -> test run read it unchanged; beside them `<task>.splits.csv`, the derived assignment
as a csv-layout file (freeze it by pointing a csv suite at it). Training reads the manifest through
the VTAB layout's datasets.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..io import atomic_write_bytes
from .check import Progress, hash_images
from .manifest import Row
from .splits import DataError

log = logging.getLogger(__name__)

LAYOUTS = ("imagefolder", "csv")
SPLIT_NAMES = ("train", "val", "test")
# what each physical split is called in the protocols' vocabulary (config `protocols:`)
PROTOCOL_SPLITS = {"train800": ("train",), "val200": ("val",), "train800val200": ("train", "val"), "test": ("test",)}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
SPLIT_FILE_FIELDS = ("path", "label", "split")


@dataclass(frozen=True)
class SplitSettings:
    """How splits the data lacks are derived (config `suites.<s>.split`). An amount is a fraction of
    each class (a number in (0, 1)) or a total number of images shared out over the classes in
    proportion to their size (an integer)."""

    seed: int = 0            # the derivation's own seed (not the training seeds)
    val: float | int = 0.2   # held out of train as val200 when the data has no val split (VTAB-1k: 200)
    test: float | int = 0.2  # held out as test when the data has none (one pool of images)
    train: float | int | None = None  # training images kept after val (VTAB-1k: 800); None: all the rest

    @classmethod
    def from_dict(cls, values: dict | None, where: str = "split") -> SplitSettings:
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise DataError(f"{where}: unknown key(s) {unknown}; valid: {', '.join(cls.__dataclass_fields__)}")
        settings = cls(**values)
        if not isinstance(settings.seed, int) or settings.seed < 0:
            raise DataError(f"{where}.seed: {settings.seed!r} is not an integer >= 0")
        for key in ("val", "test", "train"):
            amount = getattr(settings, key)
            if amount is None and key == "train":
                continue
            _amount_kind(amount, f"{where}.{key}")
        return settings

    def to_dict(self) -> dict:
        return asdict(self)


def _amount_kind(amount, where: str) -> str:
    """'count' or 'fraction'; anything else is refused."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise DataError(f"{where}: {amount!r} is neither a fraction in (0, 1) nor a number of images")
    if float(amount).is_integer() and amount >= 1:
        return "count"
    if 0 < amount < 1:
        return "fraction"
    raise DataError(f"{where}: {amount!r} is neither a fraction in (0, 1) nor a number of images >= 1")


# -- reading what the user has ------------------------------------------------------------------
@dataclass
class Listing:
    """The images of a dataset as the user laid them out: per given split, (path, class name) pairs
    with paths relative to `root`, plus where each came from (for messages) and what was skipped."""

    root: Path
    classes: list[str]
    items: dict[str, list[tuple[str, str]]]
    origin: dict[str, str] = field(default_factory=dict)  # path -> "file:line" (csv) for messages
    skipped: list[str] = field(default_factory=list)
    form: str = ""

    @property
    def given(self) -> list[str]:
        return [s for s in SPLIT_NAMES if s in self.items]


def class_order(names) -> list[str]:
    """Class names sorted, numerically when every one is an integer (so labels 0..9 stay 0..9)."""
    names = set(names)
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _class_images(folder: Path, root: Path, skipped: list[str]) -> list[str]:
    images = []
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        rel = path.relative_to(root).as_posix()
        (images if path.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(rel)
    return images


def list_imagefolder(root: str | Path) -> Listing:
    """The classes and images of an `imagefolder` dataset; DataError naming the folder when its
    layout is not one of the two forms or a class folder holds no image."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: an imagefolder suite reads <root>/<class>/<image>, "
                        f"or <root>/train/<class>/<image> (+ test/, val/ when you have them)")
    folders = {p.name: p for p in root.iterdir() if p.is_dir() and not _hidden(p)}
    skipped = sorted(p.name for p in root.iterdir() if p.is_file() and not _hidden(p))
    present = [s for s in SPLIT_NAMES if s in folders]
    if "train" in folders:
        others = sorted(set(folders) - set(SPLIT_NAMES))
        if others:
            raise DataError(f"{root} holds train/ and also {', '.join(o + '/' for o in others)}: in the split form "
                            f"(<root>/{{train,val,test}}/<class>/<image>) nothing else is read; move class folders "
                            f"into train/ (or remove train/ to use the single-folder form <root>/<class>/<image>)")
        splits, form = {s: folders[s] for s in present}, "splits"
    elif present:
        raise DataError(f"{root} holds {', '.join(p + '/' for p in present)} but no train/: the split form needs "
                        f"<root>/train/<class>/<image> (val/ and test/ are derived from it when absent)")
    else:
        splits, form = {"train": root}, "single"
    items: dict[str, list[tuple[str, str]]] = {}
    classes_of: dict[str, list[str]] = {}
    for split, folder in splits.items():
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p))
        if form == "splits":
            skipped += sorted(p.relative_to(root).as_posix() for p in folder.iterdir()
                              if p.is_file() and not _hidden(p))
        if not class_dirs:
            raise DataError(f"{folder}: no class folders; put each class's images in {folder}/<class name>/")
        classes_of[split] = [p.name for p in class_dirs]
        items[split] = []
        for class_dir in class_dirs:
            before = len(skipped)
            images = _class_images(class_dir, root, skipped)
            if not images:
                others = skipped[before:]
                held = f"; it holds {len(others)} other file(s), e.g. {others[0]}" if others else ""
                raise DataError(f"class folder {class_dir} holds no images (files ending in "
                                f"{', '.join(IMAGE_EXTENSIONS)}){held}; add images or remove the folder")
            items[split] += [(rel, class_dir.name) for rel in images]
    classes = class_order(classes_of["train"])
    for split in ("val", "test"):
        unknown = sorted(set(classes_of.get(split, ())) - set(classes))
        if unknown:
            raise DataError(f"{root / split}: class folder(s) {', '.join(unknown)} have no counterpart in "
                            f"{root / 'train'}; a model can not learn a class it never trains on: add "
                            f"train/{unknown[0]}/ or remove {split}/{unknown[0]}/")
    return Listing(root, classes, items, skipped=skipped, form=form)


def read_csv_listing(csv_path: str | Path, root: str | Path | None = None) -> Listing:
    """The rows of a `csv` dataset file; DataError naming the file and line of a malformed row."""
    csv_path = Path(csv_path)
    root = Path(root) if root else csv_path.parent
    if not csv_path.is_file():
        raise DataError(f"csv file {csv_path} not found: a csv suite reads rows 'path,label[,split]' from it")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{csv_path}: not a UTF-8 text file ({err})") from None
    records = [(n, [c.strip() for c in r]) for n, r in enumerate(csv.reader(io.StringIO(text)), start=1)
               if any(c.strip() for c in r)]
    if not records:
        raise DataError(f"{csv_path}: no rows; expected 'path,label[,split]' per line")
    first = [c.lower() for c in records[0][1]]
    if "path" in first and "label" in first:  # a header row names the columns
        unknown = sorted(set(first) - {"path", "label", "split"})
        if unknown:
            raise DataError(f"{csv_path}:{records[0][0]}: unknown column(s) {unknown}; valid: path, label, split")
        columns = {name: first.index(name) for name in ("path", "label", "split") if name in first}
        width, records = len(first), records[1:]
    else:
        width = len(records[0][1])
        if width not in (2, 3):
            raise DataError(f"{csv_path}:{records[0][0]}: expected 'path,label' or 'path,label,split', "
                            f"got {len(records[0][1])} columns")
        columns = {"path": 0, "label": 1, **({"split": 2} if width == 3 else {})}
    if not records:
        raise DataError(f"{csv_path}: a header but no rows")
    has_split = "split" in columns
    items: dict[str, list[tuple[str, str]]] = defaultdict(list)
    origin: dict[str, str] = {}
    for lineno, cells in records:
        where = f"{csv_path}:{lineno}"
        if len(cells) != width:
            raise DataError(f"{where}: {len(cells)} columns, the file's other rows have {width}")
        path, label = cells[columns["path"]], cells[columns["label"]]
        path = Path(path).as_posix() if path else path  # ./a.png and a.png are one image
        split = cells[columns["split"]].lower() if has_split else "train"
        if not path or not label:
            raise DataError(f"{where}: empty {'path' if not path else 'label'}")
        if split not in SPLIT_NAMES:
            raise DataError(f"{where}: split {split!r}; valid: {', '.join(SPLIT_NAMES)}")
        if path in origin:
            raise DataError(f"{where}: image {path} is listed twice (also at {origin[path]}); "
                            f"an image belongs to one split and one class")
        if not (root / path).is_file():
            raise DataError(f"{where}: image {root / path} not found (paths are relative to {root})")
        origin[path] = where
        items[split].append((path, label))
    if "train" not in items:
        raise DataError(f"{csv_path}: no row has split 'train'; training needs images")
    classes = class_order(label for _, label in items["train"])
    for split in ("val", "test"):
        unknown = sorted({label for _, label in items.get(split, [])} - set(classes))
        if unknown:
            first_path = next(p for p, lab in items[split] if lab == unknown[0])
            raise DataError(f"{origin[first_path]}: class {unknown[0]!r} has {split} images but no training "
                            f"image; a model can not learn a class it never trains on")
    return Listing(root, classes, dict(items), origin=origin, form="csv")


def scan(layout: str, root: str | Path | None, csv_file: str | Path | None = None) -> Listing:
    if layout == "csv":
        return read_csv_listing(csv_file, root)
    return list_imagefolder(root)


# -- deriving what is missing -------------------------------------------------------------------
def allocate(sizes: list[int], amount, lo: list[int], hi: list[int], where: str) -> list[int]:
    """How many of each class's `sizes[k]` images a split takes: a fraction of each class (rounded,
    half up), or a total shared out in proportion to the class sizes (largest remainders, ties to the
    earlier class); always within [lo[k], hi[k]]."""
    if _amount_kind(amount, where) == "fraction":
        return [min(max(math.floor(amount * n + 0.5), low), high) for n, low, high in zip(sizes, lo, hi)]
    total, pool = int(amount), sum(sizes)
    if not sum(lo) <= total <= sum(hi):
        raise DataError(f"{where}: {total} images asked for, but between {sum(lo)} and {sum(hi)} of these "
                        f"{pool} can be (every class keeps one image for training and, where it has them, "
                        f"one per split); ask for fewer, or give a fraction such as 0.2")
    quota = [total * n / pool for n in sizes]
    counts = [min(max(math.floor(q), low), high) for q, low, high in zip(quota, lo, hi)]
    while sum(counts) < total:
        k = max((k for k in range(len(sizes)) if counts[k] < hi[k]), key=lambda k: (quota[k] - counts[k], -k))
        counts[k] += 1
    while sum(counts) > total:
        k = min((k for k in range(len(sizes)) if counts[k] > lo[k]), key=lambda k: (quota[k] - counts[k], k))
        counts[k] -= 1
    return counts


def _rank(seed: int, purpose: str, digest: str) -> str:
    return hashlib.sha256(f"vpeft-split/{seed}/{purpose}/{digest}".encode()).hexdigest()


def _take(pool: dict[int, list[str]], amount, seed: int, purpose: str, where: str, *, keep: bool) -> set[str]:
    """The content hashes a split takes from `pool` (class -> distinct hashes): per class the first
    n of the pool in a seeded order; `keep` for the images training keeps (at least one per class),
    else a held-out split (every class keeps one for training; a fraction holds out one where it can)."""
    labels = sorted(pool)
    sizes = [len(pool[k]) for k in labels]
    fraction = _amount_kind(amount, where) == "fraction"
    if keep:
        lo, hi = [min(1, n) for n in sizes], sizes
    else:
        lo, hi = [int(fraction and n >= 2) for n in sizes], [max(n - 1, 0) for n in sizes]
    counts = allocate(sizes, amount, lo, hi, where)
    taken = set()
    for label, n in zip(labels, counts):
        taken.update(sorted(pool[label], key=lambda d: _rank(seed, purpose, d))[:n])
    return taken


def derive_splits(listing: Listing, hashes: dict[str, str], settings: SplitSettings, where: str = "split"):
    """Final train / val / test as (path, label index) lists, with the list of derived splits and the
    number of training images left unused. Identical images (one content hash) move together."""
    label_of = {name: i for i, name in enumerate(listing.classes)}
    splits = {s: [(p, label_of[c]) for p, c in listing.items[s]] for s in listing.given}
    derived = []

    def pool_of(items):
        pool: dict[int, dict[str, None]] = defaultdict(dict)
        for path, label in items:
            pool[label][hashes[path]] = None
        return {k: list(v) for k, v in pool.items()}

    def carve(name, amount, *, keep=False):
        taken = _take(pool_of(splits["train"]), amount, settings.seed, name, f"{where}.{name}", keep=keep)
        inside = [(p, lab) for p, lab in splits["train"] if hashes[p] in taken]
        outside = [(p, lab) for p, lab in splits["train"] if hashes[p] not in taken]
        return inside, outside

    for name, amount in (("test", settings.test), ("val", settings.val)):
        if name not in splits:
            splits[name], splits["train"] = carve(name, amount)
            derived.append(name)
    unused = 0
    if settings.train is not None:
        splits["train"], dropped = carve("train", settings.train, keep=True)
        unused = len(dropped)
    return splits, derived, unused


def expected_sizes(listing: Listing, settings: SplitSettings, where: str = "split") -> dict[str, int]:
    """Split sizes in the protocols' vocabulary, from file names alone (exact unless some images are
    byte-identical copies): for `vpeft plan`, before any image is read."""
    hashes = {p: p for items in listing.items.values() for p, _ in items}  # every file its own content
    splits, _, _ = derive_splits(listing, hashes, settings, where)
    return {name: sum(len(splits[s]) for s in parts) for name, parts in PROTOCOL_SPLITS.items()}


# -- the check ------------------------------------------------------------------------------------
def _refuse_duplicates(listing: Listing, hashes: dict[str, str], notes: list[str]) -> None:
    """The same image (by content) in two splits, or with two labels, is refused naming both files."""
    first: dict[str, tuple[str, str, str]] = {}
    copies = 0
    for split in listing.given:
        for path, label in listing.items[split]:
            seen = first.setdefault(hashes[path], (split, path, label))
            if seen[1] == path:
                continue
            name = listing.origin.get(path, str(listing.root / path))
            other = listing.origin.get(seen[1], str(listing.root / seen[1]))
            if seen[0] != split:
                raise DataError(f"{name} ({split}) and {other} ({seen[0]}) are the same image (sha256 "
                                f"{hashes[path][:16]}...): an image in two splits leaks what the model is "
                                f"tested on into its training; remove one copy")
            if seen[2] != label:
                raise DataError(f"{name} (class {label!r}) and {other} (class {seen[2]!r}) are the same image "
                                f"(sha256 {hashes[path][:16]}...) with two labels; remove the wrong copy")
            copies += 1
    if copies:
        notes.append(f"{copies} image(s) are byte-identical copies of another image of the same class and "
                     f"split (kept; derived splits keep copies together)")


def _check(listing: Listing, num_classes: int | None, *, layout: str, suite: str, task: str, source: str,
           split: dict | None, split_file: str | Path | None, decode: bool, workers: int):
    where = f"suites.{suite}.split" if suite else "split"
    settings = SplitSettings.from_dict(split, where)
    if num_classes is not None and num_classes != len(listing.classes):
        raise DataError(f"{listing.root}: {len(listing.classes)} classes ({', '.join(listing.classes[:10])}"
                        f"{', ...' if len(listing.classes) > 10 else ''}), but the config says num_classes: "
                        f"{num_classes}; re-run snakemake (it counts the classes when it starts)")
    paths = [p for s in listing.given for p, _ in listing.items[s]]
    progress = Progress(f"{suite}/{task}", len(paths))
    hashes = dict(zip(paths, hash_images([listing.root / p for p in paths], decode, workers, progress)))
    notes: list[str] = []
    if listing.skipped:
        notes.append(f"{len(listing.skipped)} file(s) skipped as not images (by extension), e.g. {listing.skipped[0]}")
    _refuse_duplicates(listing, hashes, notes)
    splits, derived, unused = derive_splits(listing, hashes, settings, where)
    if unused:
        notes.append(f"{unused} training image(s) left unused (split.train: {settings.train})")
    rows = [Row(name, p, label, hashes[p]) for name, parts in PROTOCOL_SPLITS.items()
            for s in parts for p, label in splits[s]]
    histograms = {}
    for name, parts in PROTOCOL_SPLITS.items():
        counts = Counter(label for s in parts for _, label in splits[s])
        histograms[name] = {"count": sum(counts.values()), "classes": {str(k): counts[k] for k in sorted(counts)}}
        absent = [listing.classes[k] for k in range(len(listing.classes)) if not counts[k]]
        if absent and name in ("val200", "test"):
            notes.append(f"{name} has no image of {len(absent)} class(es), e.g. {absent[0]!r}")
    for note in notes:
        log.warning("%s/%s: %s", suite, task, note)
    split_info = {"settings": settings.to_dict(), "given": listing.given, "derived": derived, "unused": unused,
                  "form": listing.form}
    if split_file:
        split_info.update(write_split_file(split_file, splits, listing.classes))
    index = {"suite": suite, "task": task, "layout": layout, "task_dir": str(listing.root),
             "num_classes": len(listing.classes), "source": source, "classes": listing.classes,
             "splits": histograms, "split_rule": split_info, "notes": notes}
    return index, rows


def write_split_file(path: str | Path, splits: dict[str, list[tuple[str, int]]], classes: list[str]) -> dict:
    """The final assignment as a csv-layout file (`path,label,split`; paths relative to the root)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SPLIT_FILE_FIELDS)
    for split in SPLIT_NAMES:
        for rel, label in splits[split]:
            writer.writerow((rel, classes[label], split))
    data = buffer.getvalue().encode()
    atomic_write_bytes(path, data)
    return {"file": Path(path).name, "sha256": hashlib.sha256(data).hexdigest()}


def check_imagefolder_task(task_dir: str | Path, num_classes: int | None = None, *, suite: str = "", task: str = "",
                           source: str = "external", split: dict | None = None, split_file: str | Path | None = None,
                           decode: bool = True, workers: int = 1, **_unused):
    """The layouts registry's checker for `imagefolder`: (index, manifest rows); DataError names the file."""
    return _check(list_imagefolder(task_dir), num_classes, layout="imagefolder", suite=suite, task=task,
                  source=source, split=split, split_file=split_file, decode=decode, workers=workers)


def check_csv_task(task_dir: str | Path, num_classes: int | None = None, *, csv_file: str | Path, suite: str = "",
                   task: str = "", source: str = "external", split: dict | None = None,
                   split_file: str | Path | None = None, decode: bool = True, workers: int = 1, **_unused):
    """The layouts registry's checker for `csv` (`task_dir`: the folder the file's paths are relative to)."""
    return _check(read_csv_listing(csv_file, task_dir), num_classes, layout="csv", suite=suite, task=task,
                  source=source, split=split, split_file=split_file, decode=decode, workers=workers)


# -- the config: a suite from a folder ----------------------------------------------------------
def task_name(data_suite: str) -> str:
    """The one task of an own-data suite: its data suite's name as a task name (results/<suite>/<m>/<task>)."""
    return data_suite.replace("-", "_")


def complete_suite(name: str, suite: dict) -> dict:
    """An own-data suite with what the minimal form leaves out filled in: one task (the folder), its
    class count and split sizes from the folder, defaults for kind, source, title, protocol. Raises
    DataError naming the key or folder."""
    where = f"suites.{name}"
    for key in ("tasks", "sizes"):
        if key in suite:
            raise DataError(f"{where}.{key}: an {suite['layout']} suite is one dataset, whose classes and split "
                            f"sizes come from its files; remove `{key}` (size derived splits with `split:`)")
    for key, only in (("kind", "image"), ("source", "external")):
        if suite.get(key, only) != only:
            raise DataError(f"{where}.{key}: an {suite['layout']} suite is {key} {only}, not {suite[key]!r}")
    settings = SplitSettings.from_dict(suite.get("split"), f"{where}.split")
    if suite["layout"] == "csv":
        if not suite.get("csv"):
            raise DataError(f"{where}.csv: a csv suite needs the file of its 'path,label[,split]' rows")
        root = suite.get("root") or str(Path(suite["csv"]).parent)
    else:
        if not suite.get("root"):
            raise DataError(f"{where}.root: an imagefolder suite needs the folder of its images")
        root = suite["root"]
    listing = scan(suite["layout"], root, suite.get("csv"))
    sizes = expected_sizes(listing, settings, f"{where}.split")
    done = {"title": f"{name} ({suite['layout']}: {suite.get('csv') or root})", "protocol": "vtab1k",
            "published": None, **suite, "kind": "image", "source": "external", "root": str(root)}
    done["tasks"] = {task_name(suite.get("data_suite", name)): {"num_classes": len(listing.classes), "path": str(root),
                                                                "sizes": sizes}}
    # recorded in every run (metrics.json config.data): the classes and how missing splits are derived
    done["data"] = {**(suite.get("data") or {}), "classes": listing.classes, "split": settings.to_dict(),
                    "given_splits": listing.given}
    return done


def check_options(suite: dict) -> dict:
    """What the data check of an own-data suite needs beyond the common options."""
    options = {"split": suite["data"]["split"]}
    if suite["layout"] == "csv":
        options["csv_file"] = suite["csv"]
    return options


# -- training and evaluation datasets: the checked manifest, read as the VTAB layout reads it --------
def _require_index(run) -> None:
    if not (run.data or {}).get("index"):
        raise DataError(f"task '{run.task}' ({run.layout} layout): the run names no checked task index "
                        f"(run.data.index); own data is read from the manifest that rule check_own_data writes")


def train_dataset(run, spec, tc):
    from . import vtab

    _require_index(run)
    return vtab.train_dataset(run, spec, tc)


def train_uint8(run, spec, tc):
    from . import vtab

    _require_index(run)
    return vtab.train_uint8(run, spec, tc)


def eval_dataset(run, spec, tc):
    from . import vtab

    _require_index(run)
    return vtab.eval_dataset(run, spec, tc)
