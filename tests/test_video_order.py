"""video-mini needs temporal order: a classifier that sees the frames in order beats one that cannot,
and the same classifier scores clearly lower on time-reversed or shuffled test clips.

Features: the shipped demo image backbone on each of 4 frames (segment sampling, read with decord
from the generated mp4s); classifier: logistic regression on the 4 frame features in time order
(order-aware) or on their mean (order-blind)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from vpeft.backbones import demo  # noqa: F401  (registers the demo image backbone)
from vpeft.video.annotations import read_annotations
from vpeft.video.reader import read_frames
from vpeft.video.sampling import ClipSampler
from vpeft.video.synthetic import generate_task


def _features(task_dir, split, model):
    sampler = ClipSampler("segment", 4)
    clips, labels = [], []
    for path, label in read_annotations(task_dir / f"{split}.csv"):
        clips.append(read_frames(path, sampler(16, train=False)))
        labels.append(label)
    frames = torch.from_numpy(np.concatenate(clips)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        feats = model(frames).numpy()
    return feats.reshape(len(clips), 4, -1), np.array(labels)


@pytest.mark.slow  # ~10-30 s: 240 generated clips and 960 backbone forwards
def test_frame_order_is_needed_and_used(tmp_path):
    from sklearn.linear_model import LogisticRegression

    task = tmp_path / "motion"
    generate_task("motion", task, seed=0, sizes={"train800": 144, "val200": 6, "test": 90})
    model = timm.create_model("vit_demo_patch4_32", num_classes=0,
                              checkpoint_path="assets/vit_demo_patch4_32.fractal.safetensors").eval()
    x_train, y_train = _features(task, "train800val200", model)
    x_test, y_test = _features(task, "test", model)
    ordered = LogisticRegression(max_iter=5000).fit(x_train.reshape(len(x_train), -1), y_train)
    rng = np.random.default_rng(0)
    shuffled = np.stack([clip[rng.permutation(4)] for clip in x_test])
    acc = {
        "ordered": ordered.score(x_test.reshape(len(x_test), -1), y_test),
        "reversed": ordered.score(x_test[:, ::-1].reshape(len(x_test), -1), y_test),
        "shuffled": ordered.score(shuffled.reshape(len(x_test), -1), y_test),
        "order-blind": LogisticRegression(max_iter=5000).fit(x_train.mean(1), y_train).score(x_test.mean(1), y_test),
    }
    # chance is 1/6; an order-blind model can at best tell the three pairs apart (<= 1/2 in expectation)
    assert acc["ordered"] >= 0.6, acc
    assert acc["reversed"] <= acc["ordered"] - 0.3, acc  # reversing a clip turns it into its pair's class
    assert acc["shuffled"] <= acc["ordered"] - 0.15, acc
    assert acc["order-blind"] <= 0.6 and acc["order-blind"] <= acc["ordered"] - 0.1, acc
