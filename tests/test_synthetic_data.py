"""Tests for the embedded image suite (vtab-mini) and the FractalDB-style generator."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpeft.data.synthetic import fractal, vtab_mini
from vpeft.data.synthetic.vtab_mini import EMBEDDED_TASKS, EmbeddedTask, generate_task

SIZES = {"train800": 20, "val200": 10, "test": 20}
SPLITS = ("train800", "val200", "train800val200", "test")
TASKS = sorted(EMBEDDED_TASKS)
REQUIRED = {"digits", "photo_crops", "textures", "dsprites_loc", "dsprites_ori", "clevr_count"}


def _read_split(root: Path, split: str) -> list[tuple[str, int]]:
    text = (root / f"{split}.txt").read_text(encoding="utf-8")
    assert text.endswith("\n")
    rows = []
    for line in text.splitlines():
        m = re.fullmatch(rf"(images/{split}/(\d{{6}})\.png) (\d+)", line)
        assert m, f"bad line in {split}.txt: {line!r}"
        rows.append((m.group(1), int(m.group(3))))
    return rows


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    base = tmp_path_factory.mktemp("vtab_mini")
    return {name: (base / name, generate_task(name, base / name, seed=3, sizes=SIZES)) for name in TASKS}


def test_registry():
    assert REQUIRED <= set(EMBEDDED_TASKS)
    groups = set()
    for key, task in EMBEDDED_TASKS.items():
        assert isinstance(task, EmbeddedTask)
        assert task.name == key and re.fullmatch(r"[a-z][a-z0-9_]*", key)
        assert task.group in {"natural", "specialized", "structured"}
        assert task.num_classes >= 2
        assert task.description and task.vtab_analogue
        groups.add(task.group)
    assert groups == {"natural", "specialized", "structured"}
    with pytest.raises(AttributeError):
        EMBEDDED_TASKS["digits"].num_classes = 3  # frozen


@pytest.mark.parametrize("name", TASKS)
def test_layout(generated, name):
    root, info = generated[name]
    task = EMBEDDED_TASKS[name]
    expected = {"train800": 20, "val200": 10, "train800val200": 30, "test": 20}
    assert info == {
        "task": name, "num_classes": task.num_classes, "group": task.group,
        "counts": expected, "seed": 3, "image_size": 32,
    }
    # exactly the VTAB-1k files and folders, nothing else
    assert sorted(p.name for p in root.iterdir()) == sorted([f"{s}.txt" for s in SPLITS] + ["images"])
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(SPLITS)

    rows = {}
    for split in SPLITS:
        rows[split] = _read_split(root, split)
        assert len(rows[split]) == expected[split]
        assert [r[0] for r in rows[split]] == [f"images/{split}/{i:06d}.png" for i in range(expected[split])]
        on_disk = sorted(p.name for p in (root / "images" / split).iterdir())
        assert on_disk == [f"{i:06d}.png" for i in range(expected[split])]
        for rel, label in rows[split]:
            assert 0 <= label < task.num_classes
        for rel, _ in rows[split][:3]:
            with Image.open(root / rel) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)

    for split in ("train800", "test"):
        assert {lab for _, lab in rows[split]} == set(range(task.num_classes)), split
        counts = np.bincount([lab for _, lab in rows[split]], minlength=task.num_classes)
        assert counts.max() - counts.min() <= 1  # balanced

    # train800val200 = train800 then val200, same bytes and labels, re-indexed
    combined = rows["train800"] + rows["val200"]
    assert [lab for _, lab in rows["train800val200"]] == [lab for _, lab in combined]
    for (rel_c, _), (rel_s, _) in zip(rows["train800val200"], combined):
        assert (root / rel_c).read_bytes() == (root / rel_s).read_bytes()

    # no image shared between the training splits and the test split
    train_bytes = {(root / r).read_bytes() for r, _ in rows["train800"] + rows["val200"]}
    test_bytes = {(root / r).read_bytes() for r, _ in rows["test"]}
    assert not train_bytes & test_bytes

    # images are not blank
    arr = np.asarray(Image.open(root / rows["test"][0][0]))
    assert arr.std() > 0


@pytest.mark.parametrize("name", TASKS)
def test_determinism(generated, tmp_path, name):
    root, _ = generated[name]
    again = tmp_path / "again"
    generate_task(name, again, seed=3, sizes=SIZES)
    assert _digest_tree(root) == _digest_tree(again)

    other = tmp_path / "other"
    generate_task(name, other, seed=4, sizes=SIZES)
    a, b = _digest_tree(root), _digest_tree(other)
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != b[k] for k in pngs) >= 0.9 * len(pngs)


def test_arrays_match_files(generated):
    root, _ = generated["dsprites_ori"]
    arrays = vtab_mini.generate_arrays("dsprites_ori", seed=3, sizes=SIZES)
    x, y = arrays["test"]
    rows = _read_split(root, "test")
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
    assert [lab for _, lab in rows] == y.tolist()
    assert np.array_equal(np.asarray(Image.open(root / rows[5][0])), x[5])


def test_unknown_task(tmp_path):
    with pytest.raises(ValueError) as err:
        generate_task("imagenet", tmp_path / "x", seed=0, sizes=SIZES)
    for name in EMBEDDED_TASKS:
        assert name in str(err.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("sizes", [{"train800": 2, "val200": 1}, {"train800": 2, "val200": 1, "test": -1},
                                   {"train800": 2, "val200": 1, "test": 1, "extra": 1}])
def test_bad_sizes(tmp_path, sizes):
    with pytest.raises(ValueError):
        generate_task("digits", tmp_path / "x", seed=0, sizes=sizes)


def test_replaces_existing_and_cleans_up(tmp_path):
    out = tmp_path / "task"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    info = generate_task("textures", out, seed=0, sizes={"train800": 8, "val200": 8, "test": 8})
    assert not (out / "stale.txt").exists()
    assert info["counts"]["train800val200"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]  # no temp folders left


def test_other_image_size(tmp_path):
    generate_task("clevr_count", tmp_path / "c", seed=0, sizes={"train800": 6, "val200": 0, "test": 6},
                  image_size=48)
    with Image.open(tmp_path / "c" / "images" / "test" / "000000.png") as im:
        assert im.size == (48, 48) and im.mode == "RGB"
    assert (tmp_path / "c" / "val200.txt").read_text() == ""


# ---------------------------------------------------------------------------
# fractal pretraining data
# ---------------------------------------------------------------------------

def test_ifs_systems():
    systems = fractal.sample_ifs_systems(6, seed=1)
    assert len(systems) == 6
    for s in systems:
        assert s.dtype == np.float64 and s.ndim == 2 and s.shape[1] == 7 and 2 <= s.shape[0] <= 4
        assert np.isclose(s[:, 6].sum(), 1.0) and (s[:, 6] > 0).all()
        det = np.abs(s[:, 0] * s[:, 3] - s[:, 1] * s[:, 2])
        assert np.allclose(s[:, 6], np.maximum(det, 1e-3) / np.maximum(det, 1e-3).sum())
    again = fractal.sample_ifs_systems(6, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(systems, again))
    prefix = fractal.sample_ifs_systems(3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(systems, prefix))
    other = fractal.sample_ifs_systems(6, seed=2)
    assert not np.array_equal(systems[0], other[0])


def test_fractal_dataset():
    x, y = fractal.render_fractal_dataset(5, 4, seed=0)
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (20,) and y.dtype == np.int64
    assert y.tolist() == np.repeat(np.arange(5), 4).tolist()
    lit = (x.max(axis=-1) > 0).mean(axis=(1, 2))
    assert (lit > 0.05).all() and (lit < 0.95).all()  # not blank, not full
    assert len({img.tobytes() for img in x}) == 20  # instances differ

    x2, y2 = fractal.render_fractal_dataset(5, 4, seed=0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = fractal.render_fractal_dataset(5, 4, seed=1)
    assert not np.array_equal(x, x3)

    x4, _ = fractal.render_fractal_dataset(3, 2, seed=0, image_size=24)
    assert x4.shape == (6, 24, 24, 3)
