"""Data layouts: how a task folder becomes training and evaluation datasets.

A suite names its `layout` in the config; the engine asks this registry for the layout's module,
which defines `train_dataset(run, spec, tc)` and `eval_dataset(run, spec, tc)`. `run` is the engine's
`RunConfig` (task folder, protocol splits, class count, the suite's `data` settings), `spec` the
backbone's `BackboneSpec` (input size, normalisation) and `tc` the `TrainingConfig` (augmentation
on/off). Two functions, not one, so that a stage that may only see the training split (a selection
or search stage) never even opens the evaluation split. Datasets yield `(input, label)`.

Multi-view evaluation: an evaluation dataset whose examples are several views (clips x crops of a
video, flattened to one axis) sets the attribute `views = V` (an int > 1) and yields inputs shaped
`(V, ...)`, so that batches are `(B, V, ...)`. The engine runs the model on all B*V views and
predicts, per example, the argmax of the softmax probabilities averaged over its V views
(`vpeft.engine.train.evaluate`); the evaluation batch size then counts views (`eval_batch_size // V`
examples per batch). Without the attribute, or with `views = 1`, inputs are single views.

Deterministic training input: a layout whose training input does not change between epochs (no
augmentation) should return a `torch.utils.data.TensorDataset` of the preprocessed inputs; the
engine's frozen-prefix feature cache (`vpeft.engine.feature_cache`) only caches such datasets.

Adding a layout is one entry here, pointing at the module that implements it (imported lazily, so
the image track never imports a video or detection stack).

Before training, the rule check_task_data validates every task folder and writes its index and
manifest (vpeft.data.manifest). `CHECKERS` names each layout's checker, a torch-free function
`(task_dir, num_classes, *, suite, task, source, folders, sizes, **task_options) -> (index, rows)`;
a layout without one is checked as a VTAB-layout folder.
"""

from __future__ import annotations

import importlib

LAYOUTS = {
    "vtab": "vpeft.data.vtab",
    "fgvc": "vpeft.data.fgvc",
    "video-csv": "vpeft.video.layout",
    "imagefolder": "vpeft.data.owndata",
    "csv": "vpeft.data.owndata",
    "imagenet": "vpeft.data.imagenet",
}

CHECKERS = {
    "vtab": "vpeft.data.check:check_vtab_task",
    "fgvc": "vpeft.data.fgvc:check_task",
    "imagefolder": "vpeft.data.owndata:check_imagefolder_task",
    "csv": "vpeft.data.owndata:check_csv_task",
    "imagenet": "vpeft.data.imagenet:check_task",
}

#: How a layout maps a protocol split (train800val200, test, ...) to the split names of its manifest
#: rows, for stages that read the manifest themselves (few-shot sampling); absent: the same name.
MANIFEST_SPLITS = {
    "fgvc": "vpeft.data.fgvc:SPLITS",
    "imagenet": "vpeft.data.imagenet:SPLITS",
}


class LayoutError(ValueError):
    """A suite names a layout nobody implements."""


def get_layout(name: str):
    """The module implementing layout `name` (with `train_dataset` and `eval_dataset`)."""
    if name not in LAYOUTS:
        raise LayoutError(f"unknown data layout {name!r}; valid layouts: {', '.join(sorted(LAYOUTS))}")
    return importlib.import_module(LAYOUTS[name])


def get_checker(name: str):
    """The function that validates a task folder of layout `name` (VTAB's for layouts without one)."""
    module, _, function = CHECKERS.get(name, CHECKERS["vtab"]).partition(":")
    return getattr(importlib.import_module(module), function)


def manifest_splits(layout: str, split: str) -> list[str]:
    """The manifest split names that protocol split `split` reads in `layout` (torch-free)."""
    if layout not in MANIFEST_SPLITS:
        return [split]
    module, _, name = MANIFEST_SPLITS[layout].partition(":")
    mapping = getattr(importlib.import_module(module), name)
    if split not in mapping:
        raise LayoutError(f"split {split!r} means nothing in layout {layout!r}; valid: {', '.join(mapping)}")
    return list(mapping[split])
