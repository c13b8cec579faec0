"""Where a suite's runs are trained or evaluated differently from the runs behind its published table.

The recipe of each published table is data (``published/protocols.yaml``, in the config's vocabulary);
a suite's side is its resolved runs (:func:`vpeft.config.resolve_run`, one per method and task). Every
setting is described in the same words for both sides and compared per (method, task), so the report's
list follows the config: switch a suite to ``protocol: vtab1k`` and the split and augmentation rows
appear, change a method's epochs and a row names that method. A gap to the published number can then
be read as the method's or the protocol's.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from importlib import resources

import yaml

from .published import published_task

__all__ = ["OUR_SELECTION", "describe_input", "describe_split", "load_recipes", "protocol_differences"]

#: What every run of this project reports (vpeft.engine.train: the final model, evaluated once).
OUR_SELECTION = "final epoch (the test split is evaluated once, after training)"

_FGVC_FILES = {"train800": "train.json", "val200": "val.json", "train800val200": "train.json + val.json",
               "test": "test.json"}


@lru_cache(maxsize=1)
def load_recipes() -> dict[str, dict]:
    """The published tables' recipes, keyed like a suite's ``published:``."""
    path = resources.files(__package__).joinpath("published", "protocols.yaml")
    with path.open("r", encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def describe_split(layout: str, split: str) -> str:
    """A protocol split in words (FGVC: with the VPT json file it reads)."""
    if layout == "fgvc" and split in _FGVC_FILES:
        return f"{split} ({_FGVC_FILES[split]})"
    return split


def describe_input(layout: str, augmentation: str | None, train_aug: bool) -> str:
    """The training input pipeline a protocol's augmentation and a task's train_aug flag select
    (vpeft.data.protocols, vpeft.data.fgvc)."""
    if layout == "fgvc" and augmentation == "vpetl":
        return "resize-256 / random-crop-224 / flip (test: centre crop)"
    if augmentation == "none" or not train_aug:
        return "direct resize, no augmentation"
    return "flip + RandAugment after a direct resize"


def _text(value) -> str:
    return "not set" if value is None else str(value)


def _where(pairs: set[tuple[str, str]], methods: list[str], tasks: list[str]) -> str:
    """Which runs a difference concerns, as short as the set allows."""
    by_method: dict[str, list[str]] = defaultdict(list)
    for method, task in pairs:
        by_method[method].append(task)
    task_sets = {frozenset(t) for t in by_method.values()}

    def tasks_text(chosen) -> str:
        return "all tasks" if set(chosen) == set(tasks) else ", ".join(t for t in tasks if t in chosen)

    if len(task_sets) == 1:
        method_text = "all methods" if set(by_method) == set(methods) else ", ".join(
            m for m in methods if m in by_method)
        return f"{method_text}; {tasks_text(next(iter(task_sets)))}"
    return "; ".join(f"{m}: {tasks_text(by_method[m])}" for m in methods if m in by_method)


def protocol_differences(key: str, runs: list[dict]) -> list[dict[str, str]]:
    """Rows ``{setting, ours, published, where}``: each way the resolved ``runs`` of a suite differ from
    the recipe of published table ``key``; one row per (setting, our value, published value)."""
    recipe = load_recipes().get(key)
    if recipe is None:
        return [{"setting": "Recipe", "ours": "\u2013", "where": "",
                 "published": f"not recorded for the published table {key!r}; differences are not listed"}]
    pub_protocol = recipe.get("protocol") or {}
    pub_training = recipe.get("training") or {}
    pub_tasks = recipe.get("tasks") or {}
    methods = list(dict.fromkeys(run["method"] for run in runs))
    tasks = list(dict.fromkeys(run["task"] for run in runs))
    found: dict[tuple[str, str, str], set[tuple[str, str]]] = defaultdict(set)
    order: list[str] = ["Model selection", "Training split", "Evaluation split", "Training input"]
    for run in runs:
        layout, protocol, training = run["layout"], run["protocol"], run["training"]
        published = {**pub_training, **((recipe.get("methods") or {}).get(run["method"]) or {}),
                     **(pub_tasks.get(published_task(run["task"])) or {})}
        compared = {
            "Model selection": (OUR_SELECTION, recipe.get("selection") or "not recorded"),
            "Training split": (describe_split(layout, protocol["train_split"]),
                               describe_split(layout, pub_protocol.get("train_split", "?"))),
            "Evaluation split": (describe_split(layout, protocol["eval_split"]),
                                 describe_split(layout, pub_protocol.get("eval_split", "?"))),
            "Training input": (
                describe_input(layout, protocol.get("augmentation"), bool(training.get("train_aug"))),
                describe_input(layout, pub_protocol.get("augmentation"), bool(published.get("train_aug")))),
        }
        for name, value in published.items():
            if name == "train_aug":  # part of "Training input"
                continue
            compared[f"training.{name}"] = (_text(training.get(name)), _text(value))
            if f"training.{name}" not in order:
                order.append(f"training.{name}")
        for setting, (ours, theirs) in compared.items():
            if ours != theirs:
                found[setting, ours, theirs].add((run["method"], run["task"]))
    rows = [{"setting": setting, "ours": ours, "published": theirs, "where": _where(pairs, methods, tasks)}
            for (setting, ours, theirs), pairs in found.items()]
    return sorted(rows, key=lambda r: (order.index(r["setting"]), r["ours"]))
