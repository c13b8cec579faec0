"""Checking a VTAB-layout task folder before any training reads it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .images import load_image
from .splits import SPLITS, DataError, read_split_file


def _missing_folder_message(task_dir: Path, suite: str, task: str, source: str) -> str:
    if source == "embedded":
        return f"embedded task folder {task_dir} is missing; re-run the rule generate_embedded_task"
    hint = ""
    if task == "cifar" and (task_dir.parent / "cifar100").is_dir():
        hint = " A 'cifar100' folder exists beside it: V-PETL's name for the same task; rename or symlink it to 'cifar'."
    return (f"data for task '{task}' of suite '{suite}' not found at {task_dir}. Put an extracted VTAB-1k copy "
            f"in the NOAH layout there (<root>/{task}/train800.txt, val200.txt, train800val200.txt, test.txt "
            f"and images/<split>/...), or set suites.{suite}.root in config/config.yaml to the folder that "
            f"holds your copy.{hint}")


def check_task_folder(task_dir: str | Path, num_classes: int, *, suite: str = "", task: str = "",
                      source: str = "external", decode: bool = True) -> dict:
    """Validate every split file (format, label range) and every listed image (exists, decodes).

    Returns an index: per-split counts and class histograms. Raises DataError naming the problem.
    """
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise DataError(_missing_folder_message(task_dir, suite, task or task_dir.name, source))
    splits = {}
    for split in SPLITS:
        items = read_split_file(task_dir / f"{split}.txt", num_classes)
        for rel, _ in items:
            path = task_dir / rel
            if not path.is_file():
                raise DataError(f"{task_dir / (split + '.txt')}: listed image {rel} does not exist")
            if decode:
                load_image(path)
        histogram = Counter(label for _, label in items)
        splits[split] = {"count": len(items), "classes": {str(k): histogram[k] for k in sorted(histogram)}}
    expected = splits["train800"]["count"] + splits["val200"]["count"]
    if splits["train800val200"]["count"] != expected:
        raise DataError(f"{task_dir}/train800val200.txt has {splits['train800val200']['count']} lines, "
                        f"expected train800 + val200 = {expected}")
    return {"suite": suite, "task": task, "task_dir": str(task_dir), "num_classes": num_classes,
            "source": source, "splits": splits}
