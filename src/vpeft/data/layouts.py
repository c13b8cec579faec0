"""Data layouts: how a task folder becomes training and evaluation datasets.

A suite names its `layout` in the config; the engine asks this registry for the layout's module,
which defines `train_dataset(run, spec, tc)` and `eval_dataset(run, spec, tc)`. `run` is the engine's
`RunConfig` (task folder, protocol splits, class count, the suite's `data` settings), `spec` the
backbone's `BackboneSpec` (input size, normalisation) and `tc` the `TrainingConfig` (augmentation
on/off). Two functions, not one, so that a stage that may only see the training split (a selection
or search stage) never even opens the evaluation split. Datasets yield `(input, label)`; an
evaluation input may carry a leading view axis (clips x crops), which the engine averages over.

Adding a layout is one entry here, pointing at the module that implements it (imported lazily, so
the image track never imports a video or detection stack).
"""

from __future__ import annotations

import importlib

LAYOUTS = {
    "vtab": "vpeft.data.vtab",
}


class LayoutError(ValueError):
    """A suite names a layout nobody implements."""


def get_layout(name: str):
    """The module implementing layout `name` (with `train_dataset` and `eval_dataset`)."""
    if name not in LAYOUTS:
        raise LayoutError(f"unknown data layout {name!r}; valid layouts: {', '.join(sorted(LAYOUTS))}")
    return importlib.import_module(LAYOUTS[name])
