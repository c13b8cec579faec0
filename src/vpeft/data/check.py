"""Checking a VTAB-layout task folder before any training reads it.

What is checked: the four split files exist and parse (`<path> <label>` per line), line counts match
the expected sizes (VTAB-1k: 800 / 200 / 1000 / the task's test size), labels lie in
[0, num_classes), no line is listed twice, train800val200 = train800 + val200, no evaluation image
(by path or by content) is in the split trained before it, and every listed image exists and decodes.
Each image's sha256 goes into the manifest (vpeft.data.manifest) that training reads.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .manifest import Row, decode_image
from .splits import SPLITS, DataError, read_split_file

log = logging.getLogger(__name__)

PROGRESS_EVERY = 5000


def _missing_folder_message(task_dir: Path, suite: str, task: str, source: str, tried: list[Path]) -> str:
    if source == "embedded":
        return f"embedded task folder {task_dir} is missing; re-run the rule generate_embedded_task"
    hint = ""
    if task == "cifar" and (task_dir.parent / "cifar100").is_dir() and task_dir.parent / "cifar100" not in tried:
        hint = " A 'cifar100' folder exists beside it: V-PETL's name for the same task; rename or symlink it to 'cifar'."
    also = f" (also looked for {', '.join(p.name for p in tried[1:])})" if len(tried) > 1 else ""
    return (f"data for task '{task}' of suite '{suite}' not found at {task_dir}{also}. Put an extracted VTAB-1k copy "
            f"in the NOAH layout there (<root>/{task}/train800.txt, val200.txt, train800val200.txt, test.txt "
            f"and images/<split>/...), or set suites.{suite}.root in config/config.yaml to the folder that "
            f"holds your copy.{hint}")


def resolve_task_folder(task_dir: str | Path, folders: list[str] | None = None) -> tuple[Path | None, list[Path]]:
    """The first existing folder among `task_dir` and its alternative names (`folders`, siblings of
    task_dir), with the list of paths tried."""
    task_dir = Path(task_dir)
    tried = [task_dir] + [task_dir.parent / f for f in (folders or []) if f != task_dir.name]
    return next((p for p in tried if p.is_dir()), None), tried


def hash_and_decode(path: Path, decode: bool = True) -> str:
    """sha256 of an image file, after checking that it decodes (the error names the file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    if decode:
        decode_image(data, path)
    return hashlib.sha256(data).hexdigest()


def hash_images(paths: list[Path], decode: bool, workers: int, progress: "Progress") -> list[str]:
    """sha256 of each image (decoded first when `decode`), in order, on `workers` threads (zlib, JPEG
    decoding and hashing release the GIL, so a check job uses the CPUs it asked for)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        hashes = []
        for digest in pool.map(lambda path: hash_and_decode(path, decode), paths):
            hashes.append(digest)
            progress.step()
        return hashes


def check_sizes(counts: dict[str, int], sizes: dict[str, int] | None, files: dict[str, Path], where: str,
                why: str = "") -> None:
    """Each split's image count equals the config's; `why` says what a mismatch means."""
    for split, expected in (sizes or {}).items():
        if split in counts and counts[split] != expected:
            raise DataError(f"{files[split]} lists {counts[split]} images, expected {expected} "
                            f"(set by {where}.sizes.{split}){why}")


class Progress:
    """Logs how many images have been checked, every PROGRESS_EVERY."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done = label, total, 0

    def step(self) -> None:
        self.done += 1
        if self.done % PROGRESS_EVERY == 0 or self.done == self.total:
            log.info("%s: %d / %d images checked", self.label, self.done, self.total)


def check_task_folder(task_dir: str | Path, num_classes: int, *, suite: str = "", task: str = "",
                      source: str = "external", decode: bool = True, sizes: dict[str, int] | None = None,
                      folders: list[str] | None = None, with_rows: bool = False, workers: int = 1):
    """Validate a VTAB-layout task folder. Returns its index (per-split counts and class histograms,
    the folder actually used), and with `with_rows` also the manifest rows. Raises DataError naming
    the problem (file and line where there is one)."""
    found, tried = resolve_task_folder(task_dir, folders)
    task = task or Path(task_dir).name
    if found is None:
        raise DataError(_missing_folder_message(Path(task_dir), suite, task, source, tried))
    task_dir = found
    files = {split: task_dir / f"{split}.txt" for split in SPLITS}
    items = {split: read_split_file(files[split], num_classes) for split in SPLITS}
    counts = {split: len(v) for split, v in items.items()}
    check_sizes(counts, sizes, files, f"suites.{suite}.tasks.{task}" if suite else "the config")
    expected = counts["train800"] + counts["val200"]
    if counts["train800val200"] != expected:
        raise DataError(f"{task_dir}/train800val200.txt has {counts['train800val200']} lines, "
                        f"expected train800 + val200 = {expected}")
    for split in SPLITS:
        for rel, _ in items[split]:
            if not (task_dir / rel).is_file():
                raise DataError(f"{files[split]}: listed image {rel} does not exist")
    unique = list(dict.fromkeys(rel for split in SPLITS for rel, _ in items[split]))
    progress = Progress(f"{suite}/{task}", len(unique))
    hashes = dict(zip(unique, hash_images([task_dir / rel for rel in unique], decode, workers, progress)))
    _check_combined_split(items, hashes, task_dir)
    check_held_out(items, hashes, files, LEAK_PAIRS)
    rows = [Row(split, rel, label, hashes[rel]) for split in SPLITS for rel, label in items[split]]
    splits = {}
    for split in SPLITS:
        histogram = Counter(label for _, label in items[split])
        splits[split] = {"count": counts[split], "classes": {str(k): histogram[k] for k in sorted(histogram)}}
    missing = sorted(set(range(num_classes)) - {label for _, label in items["train800val200"]})
    if missing:
        log.warning("%s/%s: %d of %d classes have no training image in train800val200 (e.g. %s)", suite, task,
                    len(missing), num_classes, missing[:5])
    index = {"suite": suite, "task": task, "layout": "vtab", "task_dir": str(task_dir), "num_classes": num_classes,
             "source": source, "splits": splits}
    return (index, rows) if with_rows else index


#: (training split, split it is evaluated on) in the VTAB protocols: tuning trains on train800 and
#: scores val200; the final runs train on train800val200 (or train800) and score test.
LEAK_PAIRS = (("train800", "val200"), ("train800", "test"), ("val200", "test"), ("train800val200", "test"))


def check_held_out(items: dict, hashes: dict[str, str], files: dict, pairs) -> None:
    """No image of an evaluation split is in the split trained before it, neither by path nor by
    content (sha256): a copy under another name would be scored as unseen. `items[split]` lists
    (path, label), `hashes` maps each path to its sha256, `files[split]` is the split's file."""
    for train, held_out in pairs:
        paths = {rel for rel, _ in items[train]}
        for rel, _ in items[held_out]:
            if rel in paths:
                raise DataError(f"{_where(files[held_out], rel)}: image {rel} is also in the training split "
                                f"{files[train]}; an evaluation image must not be trained on")
    for train, held_out in pairs:
        contents = {hashes[rel]: rel for rel, _ in items[train]}
        for rel, _ in items[held_out]:
            if hashes[rel] in contents:
                raise DataError(f"{_where(files[held_out], rel)}: image {rel} has the same content (sha256 "
                                f"{hashes[rel][:12]}...) as {contents[hashes[rel]]} of the training split "
                                f"{files[train]}; an evaluation image must not be trained on")


def _where(path: Path, rel: str) -> str:
    """`path:line` of the line that lists `rel` (the file alone when it is not found as text)."""
    try:
        for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if rel in line:
                return f"{path}:{lineno}"
    except OSError:
        pass
    return str(path)


def _check_combined_split(items: dict, hashes: dict[str, str], task_dir: Path) -> None:
    """train800val200 must hold exactly the images (by content) and labels of train800 and val200: a
    copy made from other images, or with relabelled ones, would train on data the protocol never saw."""
    def content(split):
        return Counter((hashes[rel], label) for rel, label in items[split])

    combined, parts = content("train800val200"), content("train800") + content("val200")
    if combined != parts:
        extra, lacking = combined - parts, parts - combined
        where = ("train800val200",) if extra else ("train800", "val200")
        digest, label = next(iter(extra or lacking))
        example = next(rel for split in where for rel, lab in items[split] if (hashes[rel], lab) == (digest, label))
        raise DataError(f"{task_dir}/train800val200.txt is not train800 + val200 by image content: "
                        f"{sum(extra.values())} image(s) not in train800/val200, {sum(lacking.values())} of theirs "
                        f"missing (e.g. {example} with label {label})")


def check_vtab_task(task_dir: str | Path, num_classes: int, **options):
    """The layouts registry's checker for `vtab`: (index, manifest rows)."""
    options.pop("image_dir", None)
    return check_task_folder(task_dir, num_classes, with_rows=True, **options)
