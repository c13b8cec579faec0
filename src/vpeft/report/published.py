"""Published V-PETL Bench numbers (README tables, ViT-B/16 IN-21K) as data.

The CSV files next to this module are transcriptions of the V-PETL README image-classification
tables (VTAB-1k: 19 tasks, FGVC: 5 datasets). One row per method, keyed by our method name; task
columns use our task names (the NOAH VTAB folder names; short FGVC names). Values are top-1 in %,
exactly as printed. Columns:

``method``            our method name (index of the returned frame)
``display_name``      the README's row label
``<task>`` ...        per-task top-1 (%)
``mean``              the README "Mean" (plain arithmetic mean over the tasks)
``params_printed``    the README "Params." string, e.g. ``"0.16M"``
``params``            the same as an integer count, e.g. ``160000``
``ppt_printed``       the README "PPT" string (``"-"`` for full fine-tuning)
``note``              caveats (documented README typos, head included in the count, ...)

:func:`load_published` adds ``ppt`` (float, NaN where the README prints ``"-"``).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = [
    "FGVC_TASKS",
    "PUBLISHED_TASKS",
    "VIDEO_TABLES",
    "PUBLISHED_SOURCE",
    "TASK_ALIASES",
    "VTAB_GROUPS",
    "VTAB_TASKS",
    "load_published",
    "published_task",
    "DENSE_TABLES",
    "DENSE_SOURCE",
    "load_published_dense",
]

#: The 19 VTAB-1k tasks in README column order, named like NOAH's ``get_vtab1k.py`` folders.
VTAB_TASKS: tuple[str, ...] = (
    "cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397",
    "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy",
    "clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
    "smallnorb_azi", "smallnorb_ele",
)  # fmt: skip

#: The VTAB-1k task groups (natural 7, specialized 4, structured 8).
VTAB_GROUPS: dict[str, str] = {
    **{t: "natural" for t in VTAB_TASKS[:7]},
    **{t: "specialized" for t in VTAB_TASKS[7:11]},
    **{t: "structured" for t in VTAB_TASKS[11:]},
}

#: The 5 FGVC datasets in README column order.
FGVC_TASKS: tuple[str, ...] = ("cub", "nabirds", "oxford_flowers", "stanford_dogs", "stanford_cars")

#: Other spellings of the same tasks (V-PETL scripts, NOAH training scripts, VPT dataset folders).
TASK_ALIASES: dict[str, str] = {
    "cifar100": "cifar",
    "oxford_pet": "oxford_iiit_pet",
    "CUB_200_2011": "cub",
    "OxfordFlower": "oxford_flowers",
    "StanfordDogs": "stanford_dogs",
    "StanfordCars": "stanford_cars",
}

PUBLISHED_SOURCE = "V-PETL Bench README (ViT-B/16, supervised IN-21K)"

_FILES = {"vtab": ("vtab1k.csv", VTAB_TASKS), "fgvc": ("fgvc.csv", FGVC_TASKS)}

#: Video tables (V-PETL README, catalog §7.4): one csv, one published key per (dataset, backbone).
#: key -> (task column, backbone column value). ViT-B is VideoMAE (K400 self-supervised), Swin is Video Swin-B.
VIDEO_TABLES: dict[str, tuple[str, str]] = {
    "ssv2": ("ssv2", "vit-b"), "ssv2-vswin": ("ssv2", "video-swin-b"),
    "hmdb51": ("hmdb51", "vit-b"), "hmdb51-vswin": ("hmdb51", "video-swin-b"),
}

#: The task columns of every published key.
PUBLISHED_TASKS: dict[str, tuple[str, ...]] = {
    "vtab": VTAB_TASKS, "fgvc": FGVC_TASKS, **{k: (task,) for k, (task, _) in VIDEO_TABLES.items()},
}


def _load_video(key: str) -> pd.DataFrame:
    """One (dataset, backbone) slice of video.csv in the image tables' columns (mean = the task's value)."""
    task, backbone = VIDEO_TABLES[key]
    with resources.files(__package__).joinpath("published", "video.csv").open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle, dtype=str, keep_default_na=False)
    table = table[table["backbone"] == backbone]
    out = pd.DataFrame({
        "method": table["method"], "display_name": table["display_name"], task: table[task].astype(float),
        "mean": table[task].astype(float), "params_printed": table["params_printed"],
        "params": table["params"].astype("int64"), "ppt_printed": table[f"{task}_ppt_printed"], "note": table["note"],
    })
    out["ppt"] = pd.to_numeric(out["ppt_printed"].replace("-", float("nan")), errors="raise").astype(float)
    return out.set_index("method")


def published_task(task: str) -> str:
    """Our canonical task name for ``task`` (maps known aliases, returns anything else unchanged)."""
    return TASK_ALIASES.get(task, task)


def load_published(suite: str) -> pd.DataFrame | None:
    """The published table for ``suite`` (``"vtab"``, ``"fgvc"``, or a video key of ``VIDEO_TABLES``),
    indexed by method name.

    Returns ``None`` for any other suite name, so callers can write
    ``load_published(cfg.get("published") or "")``.
    """
    if suite in VIDEO_TABLES:
        return _load_video(suite)
    if suite not in _FILES:
        return None
    filename, tasks = _FILES[suite]
    with resources.files(__package__).joinpath("published", filename).open("r", encoding="utf-8") as handle:
        table = pd.read_csv(
            handle,
            dtype={name: str for name in ("method", "display_name", "params_printed", "ppt_printed", "note")},
            keep_default_na=False,
        )
    for column in (*tasks, "mean"):
        table[column] = table[column].astype(float)
    table["params"] = table["params"].astype("int64")
    printed_ppt = table["ppt_printed"].replace("-", float("nan"))
    table["ppt"] = pd.to_numeric(printed_ppt, errors="raise").astype(float)
    return table.set_index("method")


#: Dense prediction tables (catalog 7.5-7.6): key -> (csv, {metric column: its printed-PPT column}).
#: Metrics in %, as printed (COCO AP@[.5:.95]; VOC mAP@0.5, printed as "AP box"; ADE20K mIoU).
DENSE_TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "coco": ("coco.csv", {"box_ap": "box_ppt_printed", "mask_ap": "mask_ppt_printed"}),
    "voc": ("voc.csv", {"box_ap50": "ppt_printed"}),
    "ade20k": ("ade20k.csv", {"miou": "ppt_printed"}),
}

DENSE_SOURCE = "V-PETL Bench README (dense prediction; the Mona, LoRand and E3VA papers' numbers)"


def load_published_dense(key: str) -> pd.DataFrame | None:
    """A published dense table (``"coco"``, ``"voc"``, ``"ade20k"``) indexed by method name, or None.

    Columns: ``display_name``, ``params_printed``, ``params`` (int), ``memory_mb`` (training memory as
    printed, NaN where none), one float column per metric (in %), ``<metric>_ppt_printed`` (str) and
    ``<metric>_ppt`` (float, NaN where the README prints "-"), ``note``.
    """
    if key not in DENSE_TABLES:
        return None
    filename, metrics = DENSE_TABLES[key]
    with resources.files(__package__).joinpath("published", filename).open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle, dtype=str, keep_default_na=False)
    for metric, ppt_column in metrics.items():
        table[metric] = table[metric].astype(float)
        table[f"{metric}_ppt_printed"] = table[ppt_column]
        table[f"{metric}_ppt"] = pd.to_numeric(table[ppt_column].replace("-", float("nan")), errors="raise").astype(float)
    table["params"] = table["params"].astype("int64")
    table["memory_mb"] = pd.to_numeric(table["memory_mb"].replace("", float("nan")), errors="raise").astype(float)
    return table.set_index("method")
