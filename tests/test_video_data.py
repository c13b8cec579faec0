"""The video loader: decord reading, frame sampling, clip transforms, annotation csvs, the
`video-csv` layout, the generated video-mini suite and its task check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vpeft.data.layouts import get_layout
from vpeft.data.splits import DataError
from vpeft.video.annotations import read_annotations, write_annotations
from vpeft.video.check import check_video_task
from vpeft.video.errors import VideoReadError
from vpeft.video.reader import probe, read_frames
from vpeft.video.sampling import ClipSampler, dense_indices, segment_indices
from vpeft.video.settings import VideoDataSettings
from vpeft.video.synthetic import CLASSES, generate_task, make_clip
from vpeft.video.transforms import ClipTransform
from vpeft.video.writer import transcode, write_video

SIZES = {"train800": 12, "val200": 6, "test": 12}


@pytest.fixture(scope="module")
def mini_task(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video-mini") / "motion"
    generate_task("motion", out, seed=0, sizes=SIZES)
    return out


# -- reading and writing ----------------------------------------------------------------------
def test_decord_reads_generated_mp4_frame_exactly(tmp_path):
    """libx264rgb at crf 0: decord returns exactly the RGB bytes that were written (max difference 0)."""
    frames = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, fps=8)
    assert np.array_equal(read_frames(path, range(16)), frames)
    assert np.array_equal(read_frames(path, [15, 3, 3, 0]), frames[[15, 3, 3, 0]])  # random access
    info = probe(path)
    assert (info["frames"], info["height"], info["width"]) == (16, 32, 32)


def test_generated_clip_reads_back_exactly(mini_task):
    rng = np.random.default_rng([0, 1])
    clip = make_clip(3, rng)
    path = write_video(mini_task.parent / "one.mp4", clip)
    assert np.array_equal(read_frames(path, range(len(clip))), clip)


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "truncated"])
def test_bad_video_is_an_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "bad.mp4"
    if damage != "missing":
        good = write_video(tmp_path / "good.mp4", np.zeros((8, 16, 16, 3), np.uint8) + 90, lossless=False)
        data = good.read_bytes()
        path.write_bytes({"empty": b"", "garbage": b"not a video at all" * 50,
                          "truncated": data[: len(data) // 3]}[damage])
    with pytest.raises(VideoReadError, match="bad.mp4"):
        probe(path)


def test_transcode_converts_webm_and_resizes_the_short_side(tmp_path):
    import av

    src = tmp_path / "clip.webm"
    with av.open(str(src), "w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = np.full((48, 64, 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    same = transcode(src, tmp_path / "same.mp4")
    assert (same["frames"], same["width"], same["height"]) == (10, 64, 48)
    small = transcode(src, tmp_path / "short.mp4", short_side=32)
    assert (small["width"], small["height"]) == (42, 32)
    info = probe(tmp_path / "short.mp4")
    assert (info["frames"], info["height"], info["width"]) == (10, 32, 42)
    with pytest.raises(VideoReadError, match="broken.webm"):
        (tmp_path / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3" + b"\0" * 100)
        transcode(tmp_path / "broken.webm", tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


# -- sampling and transforms ------------------------------------------------------------------
def test_segment_sampling_takes_one_frame_per_segment():
    torch.manual_seed(0)
    for n in (8, 16, 47, 300):
        for _ in range(20):
            idx = segment_indices(n, 8, train=True)
            edges = np.linspace(0, n, 9)
            assert all(np.floor(edges[i]) <= idx[i] <= np.ceil(edges[i + 1]) for i in range(8))
            assert np.all(np.diff(idx) >= 0)
    assert segment_indices(16, 4, train=False).tolist() == [2, 6, 10, 14]  # segment middles
    first, second = (segment_indices(16, 4, train=False, clip=c, num_clips=2).tolist() for c in (0, 1))
    assert first == [1, 5, 9, 13] and second == [3, 7, 11, 15]
    assert segment_indices(3, 8, train=False).max() <= 2  # short video: frames repeat


def test_dense_sampling_with_stride_and_test_clips():
    torch.manual_seed(0)
    for _ in range(20):
        idx = dense_indices(100, 8, 4, train=True)
        assert np.all(np.diff(idx) == 4) and 0 <= idx[0] <= 100 - 29
    starts = [dense_indices(100, 8, 4, train=False, clip=c, num_clips=3)[0] for c in range(3)]
    assert starts == [0, 36, 71]
    assert dense_indices(10, 8, 4, train=False).tolist() == [0, 4, 8, 9, 9, 9, 9, 9]  # last frame repeats
    with pytest.raises(ValueError, match="data.sampling"):
        ClipSampler("random")


def test_clip_transforms_train_and_three_crop_test():
    frames = np.zeros((4, 40, 60, 3), np.uint8)
    frames[..., 0] = np.arange(60, dtype=np.uint8)[None, None, :]  # red channel = column index
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    train = ClipTransform(32, mean, std, short_side=40, train=True)
    torch.manual_seed(0)
    assert train(frames).shape == (3, 4, 32, 32)
    test = ClipTransform(32, mean, std, short_side=32, crops=3)
    views = test(frames)
    assert views.shape == (3, 3, 4, 32, 32)
    lefts = [round(float(v[0, 0, 0, 0]) * 255 / 1.5) for v in views]  # columns scaled by 32/40
    assert lefts[0] < lefts[1] < lefts[2]
    assert ClipTransform(32, mean, std, crops=1)(frames).shape == (1, 3, 4, 32, 32)


def test_no_flip_by_default_because_left_and_right_are_labels():
    assert VideoDataSettings().flip is False
    with pytest.raises(DataError, match=r"data: unknown key\(s\) \['frames'\]"):
        VideoDataSettings.from_dict({"frames": 8})
    with pytest.raises(DataError, match="data.test_crops"):
        VideoDataSettings.from_dict({"test_crops": 2})


# -- annotations --------------------------------------------------------------------------------
def test_annotation_csv_forms_and_errors(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("videos/a.mp4,3\n/abs/b.mp4,0\n\nvideos/c d.mp4 2\n")
    items = read_annotations(csv, 5)
    assert items == [(tmp_path / "videos/a.mp4", 3), (Path("/abs/b.mp4"), 0), (tmp_path / "videos/c d.mp4", 2)]
    csv.write_text("videos/a.mp4,7\n")
    with pytest.raises(DataError, match=r"train.csv:1: label 7 outside \[0, 5\)"):
        read_annotations(csv, 5)
    csv.write_text("videos/a.mp4,x\n")
    with pytest.raises(DataError, match=r"train.csv:1: label 'x' is not an integer"):
        read_annotations(csv)
    with pytest.raises(DataError, match="contains a comma"):
        write_annotations(tmp_path / "o.csv", [(Path("a,b.mp4"), 1)])


# -- the generated suite --------------------------------------------------------------------------
def test_video_mini_is_deterministic_balanced_and_checksummed(mini_task, tmp_path):
    again = tmp_path / "motion"
    generate_task("motion", again, seed=0, sizes=SIZES)
    for file in sorted(p.relative_to(mini_task) for p in mini_task.rglob("*") if p.is_file()):
        assert (again / file).read_bytes() == (mini_task / file).read_bytes(), f"{file} differs"
    manifest = json.loads((mini_task / "manifest.json").read_text())
    assert len(manifest["videos"]) == sum(SIZES.values())
    entry = manifest["videos"]["videos/test/000000.mp4"]
    assert entry["sha256"] == hashlib.sha256((mini_task / "videos/test/000000.mp4").read_bytes()).hexdigest()
    labels = [label for _, label in read_annotations(mini_task / "test.csv")]
    assert sorted(labels) == sorted(list(range(6)) * 2)
    assert len(read_annotations(mini_task / "train800val200.csv")) == 18


def test_paired_classes_are_time_reversals_of_each_other():
    """The second class of each pair is the first one played backwards: same frames, other order."""
    for first, second in ((1, 0), (2, 3), (4, 5)):
        a = make_clip(first, np.random.default_rng(7))
        b = make_clip(second, np.random.default_rng(7))
        assert np.array_equal(a[::-1], b), (CLASSES[first], CLASSES[second])


def test_check_finds_a_changed_or_corrupt_video(mini_task, tmp_path):
    index = check_video_task(mini_task, 6, ["train800val200.csv", "test.csv"], suite="video-mini", task="motion",
                             source="embedded", decode=True)
    assert index["splits"]["test.csv"]["count"] == 12 and index["decoded"]
    import shutil

    copy = tmp_path / "motion"
    shutil.copytree(mini_task, copy)
    victim = copy / "videos/test/000003.mp4"
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match="000003.mp4 changed since it was checked"):
        check_video_task(copy, 6, ["test.csv"])
    (copy / "manifest.json").unlink()  # no manifest: every video is opened with decord
    with pytest.raises(VideoReadError, match="000003.mp4"):
        check_video_task(copy, 6, ["test.csv"])
    with pytest.raises(DataError, match="re-run the rule generate_embedded_video_task"):
        check_video_task(tmp_path / "nothing", 6, ["test.csv"], source="embedded")


def _run(task_dir, **data):
    backbone = {"name": "video-demo", "model_kwargs": {"num_frames": 4}}
    return SimpleNamespace(suite="video-mini", task_dir=str(task_dir), num_classes=6, backbone=backbone,
                           protocol={"train_split": "train800val200", "eval_split": "test", "name": "vtab1k"},
                           data={"num_frames": 4, **data})


def test_layout_yields_training_clips_and_test_views(mini_task):
    layout = get_layout("video-csv")
    spec = SimpleNamespace(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    train = layout.train_dataset(_run(mini_task), spec, None)
    clip, label = train[0]
    assert clip.shape == (3, 4, 32, 32) and 0 <= label < 6 and len(train) == 18
    evaluation = layout.eval_dataset(_run(mini_task, test_clips=2, test_crops=3), spec, None)
    views, _ = evaluation[0]
    assert evaluation.views == 6 and views.shape == (6, 3, 4, 32, 32)
    single = layout.eval_dataset(_run(mini_task), spec, None)
    assert single.views == 1 and single[0][0].shape == (3, 4, 32, 32)
    with pytest.raises(DataError, match="num_frames is 8, but backbone 'video-demo' is built for num_frames=4"):
        layout.train_dataset(_run(mini_task, num_frames=8), spec, None)


def test_a_video_that_breaks_after_the_check_fails_the_run_naming_it(mini_task, tmp_path):
    import shutil

    copy = tmp_path / "motion"
    shutil.copytree(mini_task, copy)
    (copy / "videos/train800/000002.mp4").write_bytes(b"corrupt")
    spec = SimpleNamespace(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    train = get_layout("video-csv").train_dataset(_run(copy), spec, None)
    with pytest.raises(VideoReadError, match="000002.mp4"):
        for i in range(len(train)):
            train[i]


def test_clips_decode_in_dataloader_worker_processes(mini_task):
    """decord runs in the workers (training.num_workers > 0, persistent): the test views they decode
    equal the training process's own, and the training clips come through whole."""
    from torch.utils.data import DataLoader

    layout = get_layout("video-csv")
    spec = SimpleNamespace(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    evaluation = layout.eval_dataset(_run(mini_task, test_clips=2), spec, None)
    inline = [x for x, _ in DataLoader(evaluation, batch_size=4)]
    loader = DataLoader(evaluation, batch_size=4, num_workers=2, persistent_workers=True)
    for _ in range(2):  # persistent workers serve a second epoch too
        assert all(torch.equal(a, b) for a, (b, _) in zip(inline, loader, strict=True))
    train = DataLoader(layout.train_dataset(_run(mini_task), spec, None), batch_size=6, num_workers=2)
    assert [tuple(clips.shape) for clips, _ in train] == [(6, 3, 4, 32, 32)] * 3


@pytest.mark.parametrize("change, message", [
    ("duplicate", r"test\.csv: video .*000002\.mp4 is listed again \(entry 13, first at entry 3\)"),
    ("same-path", r"train800val200\.csv and .*test\.csv both list .*test/000004\.mp4"),
    ("same-content", r"test\.csv: video .*test/000005\.mp4 has the same content \(sha256\) as .*train800val200\.csv"),
])
def test_the_check_refuses_a_duplicated_line_and_a_video_in_training_and_evaluation_splits(mini_task, tmp_path,
                                                                                          change, message):
    import shutil

    copy = tmp_path / "motion"
    shutil.copytree(mini_task, copy)
    test, train = copy / "test.csv", copy / "train800val200.csv"
    lines = test.read_text().splitlines()
    if change == "duplicate":
        test.write_text("\n".join([*lines, lines[2]]) + "\n")
    elif change == "same-path":
        train.write_text(train.read_text() + lines[4] + "\n")
    else:  # a training video copied under a test name, manifest rewritten to match
        source = train.read_text().splitlines()[0].split(",")[0]
        (copy / "videos/test/000005.mp4").write_bytes((copy / source).read_bytes())
        (copy / "manifest.json").unlink()
    with pytest.raises(DataError, match=message):
        check_video_task(copy, 6, ["train800val200.csv", "test.csv"])
