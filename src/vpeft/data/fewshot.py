"""Few-shot training splits: k images per class drawn from a suite's checked training split.

Layout-agnostic: the sample is drawn from the rows of the task's checked manifest (vpeft.data.manifest)
that the protocol's training split reads, as the layout maps it (`vpeft.data.layouts.manifest_splits`),
and written as a derived index + manifest holding the sampled training rows and the evaluation split's
rows unchanged. The layout then reads the derived index exactly as it reads a checked one, so every layout
that trains from its manifest (vtab, fgvc, imagenet, and new ones) gets the protocol for free.

Sampling (NOAH's few-shot protocol: k in 1, 2, 4, 8, 16 per class, seeds 0, 1, 2, test on the full test
split): per class, the class's training rows in a stable order (by path) are shuffled by a generator
seeded from (seed, class) alone, and the first k kept. So a sample depends on nothing but the training
rows, k and the seed; the k-shot sample of a seed contains its smaller-k samples (nested shots); a class
with fewer than k images keeps all of them (named in the index). The evaluation split is never read to
draw the sample, and a sampled image that also appears in the evaluation split (by content) is refused.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

from .manifest import Row, read_index, read_rows, write_task_index
from .splits import DataError

#: NOAH's few-shot settings (configs/*/few-shot/*.sh: SHOT in 1 2 4 8 16, SEED in 0 1 2).
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (0, 1, 2)


def sample_shots(rows: list[Row], shots: int, seed: int) -> list[Row]:
    """k = `shots` rows per label, deterministic in (rows, shots, seed), in label then draw order."""
    if int(shots) < 1:
        raise DataError(f"few-shot: shots must be a positive integer, got {shots!r}")
    by_label: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row.label].append(row)
    sample = []
    for label in sorted(by_label):
        candidates = sorted(by_label[label], key=lambda r: (r.path, r.split, r.sha256))
        # str seeds are hashed with sha512 by random.Random: stable across Python versions and platforms
        random.Random(f"vpeft-fewshot:{int(seed)}:{label}").shuffle(candidates)
        sample.extend(candidates[:int(shots)])
    return sample


def write_fewshot_index(source_index: str | Path, out_index: str | Path, *, train_splits: list[str],
                        eval_splits: list[str], shots: int, seed: int) -> dict:
    """Draw the sample from the manifest rows of `train_splits` of `source_index` and write the derived
    index + manifest at `out_index` (sampled training rows + the rows of `eval_splits`)."""
    overlap = sorted(set(train_splits) & set(eval_splits))
    if overlap:
        raise DataError(f"few-shot: the protocol trains and evaluates on the same split(s) {overlap}; a few-shot "
                        f"sample must come from a training split only")
    index = read_index(source_index)
    _, train_rows = read_rows(source_index, list(train_splits))
    sample = sample_shots(train_rows, shots, seed)
    _, eval_rows = read_rows(source_index, list(eval_splits))
    eval_content = {row.sha256 for row in eval_rows}
    leaked = [row for row in sample if row.sha256 in eval_content]
    if leaked:
        raise DataError(f"few-shot: sampled training image {leaked[0].path} has the same bytes as an image of the "
                        f"evaluation split ({', '.join(eval_splits)}) in {source_index}; fix the task's splits")
    available = Counter(row.label for row in train_rows)
    short = {str(label): n for label, n in sorted(available.items()) if n < int(shots)}
    num_classes = int(index.get("num_classes") or 0)
    absent = sorted(set(range(num_classes)) - set(available)) if num_classes else []
    rows = sample + eval_rows
    splits = {}
    for split in dict.fromkeys(row.split for row in rows):
        histogram = Counter(row.label for row in rows if row.split == split)
        splits[split] = {"count": sum(histogram.values()), "classes": {str(k): histogram[k] for k in sorted(histogram)}}
    source_manifest = index.get("manifest") or {}
    derived = {k: v for k, v in index.items() if k not in ("manifest", "splits")}
    derived.update(splits=splits, fewshot={
        "shots": int(shots), "seed": int(seed), "train_splits": list(train_splits), "eval_splits": list(eval_splits),
        "sampled": len(sample), "classes_with_fewer_images": short, "classes_without_images": absent,
        "source_index": str(source_index), "source_manifest_sha256": source_manifest.get("sha256"),
        "rule": "per class: rows sorted by path, shuffled by Random('vpeft-fewshot:<seed>:<label>'), first k"})
    return write_task_index(out_index, derived, rows)
