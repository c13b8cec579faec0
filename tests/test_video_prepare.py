"""Preparing real video datasets (SSv2, HMDB51, K400, your own csvs) from tiny generated stand-ins in
the official file layouts: conversion, decord validation, skip-with-warning, checksummed manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.videos import write_ssv2 as _ssv2
from helpers.videos import write_video as _video

from vpeft.data.splits import DataError
from vpeft.video.annotations import read_annotations
from vpeft.video.check import check_video_task
from vpeft.video.prepare import prepare_task
from vpeft.video.reader import probe


def test_ssv2_labels_become_csvs_and_webm_becomes_mp4(tmp_path):
    source = _ssv2(tmp_path / "raw")
    task = tmp_path / "data/ssv2/ssv2"
    info = prepare_task("ssv2", source, task, num_classes=3)
    train = read_annotations(task / "train.csv", 3)
    assert [label for _, label in train] == [1, 2, 0, 1, 2, 0]
    assert all(p.suffix == ".mp4" and p.is_relative_to(task) for p, _ in train)
    assert probe(train[0][0])["height"] == 24  # original height kept
    assert info["splits"]["val"]["count"] == 3 and info["skipped"] == []
    manifest = json.loads((task / "manifest.json").read_text())
    assert set(manifest["videos"]) == {p.relative_to(task).as_posix() for p, _ in train} | {
        p.relative_to(task).as_posix() for p, _ in read_annotations(task / "val.csv")}
    index = check_video_task(task, 3, ["train.csv", "val.csv"], suite="ssv2", task="ssv2")
    assert index["splits"]["train.csv"]["count"] == 6
    assert not any(p.name.startswith(".") for p in task.parent.iterdir())  # no staging left


def test_a_corrupt_video_fails_naming_it_or_is_skipped_with_a_warning(tmp_path, caplog):
    source = _ssv2(tmp_path / "raw", corrupt="4")
    with pytest.raises(DataError, match=r"4\.webm.*on_error: skip"):
        prepare_task("ssv2", source, tmp_path / "a/ssv2", num_classes=3)
    assert not (tmp_path / "a/ssv2").exists()
    info = prepare_task("ssv2", source, tmp_path / "b/ssv2", num_classes=3, on_error="skip")
    assert [Path(s["source"]).name for s in info["skipped"]] == ["4.webm"]
    assert len(read_annotations(tmp_path / "b/ssv2/train.csv")) == 5
    assert "skipping train video" in caplog.text and "4.webm" in caplog.text


def test_wrong_class_count_is_an_error(tmp_path):
    with pytest.raises(DataError, match="found 3 classes .* num_classes=174"):
        prepare_task("ssv2", _ssv2(tmp_path / "raw"), tmp_path / "ssv2", num_classes=174)


def test_hmdb51_split_files_pick_train_and_test_videos(tmp_path):
    source = tmp_path / "raw"
    classes = [f"class{i:02d}" for i in range(51)]
    for i, name in enumerate(classes):
        lines = []
        for j, flag in enumerate((1, 2, 0)):
            video = f"{name}_clip{j}.avi"
            if i < 2:  # real videos for two classes are enough to test; the others are unused (flag 0)
                _video(source / "videos" / name / video, "avi", "mpeg4", seed=10 * i + j)
            lines.append(f"{video} {flag if i < 2 else 0}")
        (source / "splits").mkdir(parents=True, exist_ok=True)
        (source / "splits" / f"{name}_test_split1.txt").write_text("\n".join(lines) + "\n")
        (source / "splits" / f"{name}_test_split2.txt").write_text("\n".join(lines) + "\n")
    task = tmp_path / "hmdb51"
    prepare_task("hmdb51", source, task, num_classes=51, split=1)
    train, test = read_annotations(task / "train.csv", 51), read_annotations(task / "val.csv", 51)
    assert [(p.name, label) for p, label in train] == [("class00_clip0.avi", 0), ("class01_clip0.avi", 1)]
    assert [(p.name, label) for p, label in test] == [("class00_clip1.avi", 0), ("class01_clip1.avi", 1)]
    assert all(p.is_absolute() for p, _ in train)  # avi read in place by decord, not converted


def test_hmdb51_archives_without_an_extractor_say_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/test_train_splits.rar").write_bytes(b"Rar!\x1a\x07\x00")
    (tmp_path / "raw/hmdb51_org.rar").write_bytes(b"Rar!\x1a\x07\x00")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(DataError, match="no extractor .* is installed"):
        prepare_task("hmdb51", tmp_path / "raw", tmp_path / "hmdb51", num_classes=51)


def test_k400_lists_and_short_side_320(tmp_path):
    source = tmp_path / "raw"
    (source / "lists").mkdir(parents=True)
    rows = {"train": [("abseiling", "aaa", 10), ("zumba", "bbb", 0)], "validate": [("zumba", "ccc", 5),
                                                                                   ("abseiling", "gone", 1)]}
    for split, entries in rows.items():
        text = "label,youtube_id,time_start,time_end,split\n" + "".join(
            f"{label},{yid},{start},{start + 10},{split}\n" for label, yid, start in entries)
        (source / "lists" / f"{split}.csv").write_text(text)
        for label, yid, start in entries:
            if yid != "gone":  # a deleted YouTube video
                _video(source / split / label / f"{yid}_{start:06d}_{start + 10:06d}.mp4", "mp4", "libx264",
                       width=80, height=60, frames=4)
    task = tmp_path / "k400"
    info = prepare_task("k400", source, task, num_classes=2, on_error="skip")
    assert [(p.name, label) for p, label in read_annotations(task / "train.csv")] == [
        ("aaa_000010_000020.mp4", 0), ("bbb_000000_000010.mp4", 1)]
    assert probe(task / "videos/train/aaa_000010_000020.mp4")["height"] == 320
    assert len(info["skipped"]) == 1 and "gone" in info["skipped"][0]["source"]


def test_your_own_csvs_are_validated_in_place(tmp_path):
    videos = [_video(tmp_path / "mine" / f"{i}.mp4", "mp4", "libx264", seed=i) for i in range(3)]
    (tmp_path / "mine/train.csv").write_text(f"{videos[0]},0\n{videos[1]},1\n")
    (tmp_path / "mine/val.csv").write_text("2.mp4,1\n")
    task = tmp_path / "task"
    prepare_task("csv", tmp_path / "mine", task, num_classes=2, files={"train": "train.csv", "val": "val.csv"})
    assert read_annotations(task / "val.csv")[0][0] == videos[2]
    assert check_video_task(task, 2, ["train.csv", "val.csv"])["splits"]["val.csv"]["count"] == 1
