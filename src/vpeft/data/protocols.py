"""How a layout reads a run's protocol (config `protocols:`).

A protocol names the split that trains the model and the split the final model is evaluated on, in
VTAB-1k's terms (`train800`, `val200`, `train800val200`, `test`); each layout maps them to its own
files (FGVC: train.json, val.json, train+val, test.json). `layouts.<layout>` may override the
splits for one layout (V-PETL trains FGVC on train.json alone). `augmentation` says which input
pipeline trains the model:

* `none`: direct resize to the backbone's input size, nothing random (the `vtab1k` and `val`
  protocols), whatever the task's `train_aug` says;
* `vpetl`: V-PETL's choices: on VTAB the per-task `train_aug` flag (flip + RandAugment after a
  bicubic resize), on FGVC resize-256 / random-crop-224 / flip for training and resize-256 /
  centre-crop-224 for evaluation;
* absent: the run's `training.train_aug` decides (the embedded suites' behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass

AUGMENTATIONS = ("none", "vpetl")


@dataclass(frozen=True)
class Protocol:
    name: str
    train_split: str
    eval_split: str
    augmentation: str | None


def for_layout(protocol: dict, layout: str) -> Protocol:
    """The run's protocol with the layout's overrides applied."""
    merged = {**protocol, **(protocol.get("layouts") or {}).get(layout, {})}
    augmentation = merged.get("augmentation")
    if augmentation is not None and augmentation not in AUGMENTATIONS:
        raise ValueError(f"protocol {protocol.get('name')!r}: unknown augmentation {augmentation!r}; "
                         f"valid: {', '.join(AUGMENTATIONS)}")
    return Protocol(protocol.get("name", "?"), merged["train_split"], merged["eval_split"], augmentation)


def random_training_input(protocol: Protocol, train_aug: bool) -> bool:
    """VTAB-style layouts: whether training images go through flip + RandAugment (else they are decoded
    once, deterministically)."""
    return protocol.augmentation != "none" and bool(train_aug)
