"""The `data:` block of a video suite, typed and validated (errors name `data.<key>`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..data.splits import DataError


@dataclass(frozen=True)
class VideoDataSettings:
    """Args (all optional in the config):
    sampling: `segment` (SSv2-style, one frame per segment) or `dense` (K400/HMDB-style, `stride` apart).
    num_frames: frames per clip (must equal the backbone's `num_frames` where it has one).
    stride: frame step of dense sampling.
    short_side: resize the short side to this before cropping (default: the backbone's input size).
    train_scale: [low, high] area fraction of a random resized crop when training (null: plain random crop).
    flip: random horizontal flip when training (off: it swaps left and right).
    test_clips, test_crops: test views = clips x crops (crops 1 or 3), averaged by the engine.
    splits: protocol split name -> annotation file in the task folder (default `<split>.csv`).
    prepare: settings of the preparation rule (source folder, format, ...); not read by the loader.
    generate: settings of the embedded suite's generator (frames per video, fps); not read by the loader.
    check_decode: whether the check rule opens every video again with decord (default: embedded suites
        only; prepared folders were decoded when prepared and are then checked by sha256).
    index: the checked task index (resources/index/<suite>/<task>.json) that the workflow adds to every
        run's config, so the run record names the check it trained after; not read by the loader.
    """

    sampling: str = "segment"
    num_frames: int = 8
    stride: int = 4
    short_side: int | None = None
    train_scale: tuple | None = None
    flip: bool = False
    test_clips: int = 1
    test_crops: int = 1
    splits: dict = field(default_factory=dict)
    prepare: dict = field(default_factory=dict)
    generate: dict = field(default_factory=dict)
    check_decode: bool | None = None
    index: str | None = None

    @classmethod
    def from_dict(cls, values: dict | None, where: str = "data") -> VideoDataSettings:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataError(f"{where}: unknown key(s) {unknown}; valid: {sorted(known)}")
        for key in ("num_frames", "stride", "test_clips", "test_crops"):
            if key in values and (not isinstance(values[key], int) or isinstance(values[key], bool)
                                  or values[key] < 1):
                raise DataError(f"{where}.{key}: expected an integer >= 1, got {values[key]!r}")
        if values.get("sampling", "segment") not in ("segment", "dense"):
            raise DataError(f"{where}.sampling: expected 'segment' or 'dense', got {values['sampling']!r}")
        if values.get("test_crops", 1) not in (1, 3):
            raise DataError(f"{where}.test_crops: expected 1 or 3, got {values['test_crops']!r}")
        scale = values.get("train_scale")
        if scale is not None:
            if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
                raise DataError(f"{where}.train_scale: expected [low, high] with 0 < low <= high <= 1, got {scale!r}")
            values["train_scale"] = tuple(float(s) for s in scale)
        if not isinstance(values.get("splits", {}), dict):
            raise DataError(f"{where}.splits: expected a mapping split -> file name")
        return cls(**values)

    @property
    def views(self) -> int:
        return self.test_clips * self.test_crops

    def split_file(self, split: str) -> str:
        return self.splits.get(split, f"{split}.csv")
