"""Tiny videos in the official layouts of the real datasets (decodable with PyAV / decord), for the
preparation code and the workflow's prepare_video_task."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_video(path: Path, fmt: str, codec: str, width=40, height=24, frames=6, seed=0) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(12))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_ssv2(root: Path, corrupt: str | None = None) -> Path:
    templates = ["Pushing [something] from left to right", "Pushing [something] from right to left",
                 "Approaching [something] with your camera"]
    labels = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)}
    (root / "labels").mkdir(parents=True)
    (root / "labels/something-something-v2-labels.json").write_text(json.dumps(labels))
    for split, ids in (("train", range(1, 7)), ("validation", range(100, 103))):
        entries = [{"id": str(i), "label": "x", "template": templates[i % 3], "placeholders": ["x"]} for i in ids]
        (root / f"labels/something-something-v2-{split}.json").write_text(json.dumps(entries))
        for i in ids:
            write_video(root / "20bn-something-something-v2" / f"{i}.webm", "webm", "libvpx-vp9", seed=i)
    if corrupt:
        (root / "20bn-something-something-v2" / f"{corrupt}.webm").write_bytes(b"\x1a\x45\xdf\xa3broken")
    return root
