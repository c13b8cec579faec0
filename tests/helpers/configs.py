"""The shipped config/config.yaml shrunk to seconds-scale runs, one function per track, each written to
`folder` and returned as a path for `--configfile`."""

from __future__ import annotations

from pathlib import Path

import yaml

from .snake import ROOT


def shipped_config() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def smoke_config(folder: Path, name: str = "smoke.yaml") -> Path:
    """The image track: 2 methods x 2 tasks x 1 epoch on tiny generated data, plus the scratch control's
    linear runs; the real VTAB suite points to an empty folder and the ViT-B download is refused at once."""
    config = shipped_config()
    mini = config["suites"]["vtab-mini"]
    mini.update(methods=["linear", "lora"], sizes={"train800": 12, "val200": 4, "test": 16},
                tasks={k: mini["tasks"][k] for k in ("digits", "dsprites_loc")})
    mini["training"].update(epochs=1, warmup_epochs=0, batch_size=8)
    for backbone in config["backbones"].values():  # shipped checkpoints, from a run in another folder
        if str(backbone.get("checkpoint") or "").startswith("assets/"):
            backbone["checkpoint"] = str(ROOT / backbone["checkpoint"])
    # the image track only: the video and dense tracks have end-to-end tests of their own
    config["default_suites"] = ["vtab-mini", "vtab-mini-scratch"]
    config["suites"]["vtab-mini-scratch"]["methods"] = ["linear"]
    config["suites"]["vtab"]["root"] = str(folder / "no-vtab-here")
    config["backbones"]["vit-b16-in21k"]["url"] = "http://127.0.0.1:9/ViT-B_16.npz"  # refused at once
    for archive_name, archive in config["suites"]["vtab"]["download"]["archives"].items():  # never the real GBs
        archive["url"] = f"http://127.0.0.1:9/{archive_name}"
    return write_config(config, folder / name)


def video_config(folder: Path, name: str = "video.yaml") -> Path:
    """The video track: video-mini as the only default suite, 2 methods x 1 epoch."""
    config = shipped_config()
    config["default_suites"] = ["video-mini"]
    mini = config["suites"]["video-mini"]
    mini.update(methods=["linear", "adaptformer"], sizes={"train800": 12, "val200": 6, "test": 12})
    mini["training"].update(epochs=1, warmup_epochs=0, batch_size=8)
    demo = config["backbones"]["video-demo"]
    demo["checkpoint"] = str(ROOT / demo["checkpoint"])
    return write_config(config, folder / name)


def dense_config(folder: Path, name: str = "dense.yaml") -> Path:
    """The dense track: the embedded suites as the default target, 2 methods and a few iterations on the
    shipped demo backbone."""
    config = shipped_config()
    config["default_suites"] = ["coco-mini", "ade-mini"]
    backbone = config["backbones"]["swin-demo"]
    backbone["checkpoint"] = str(ROOT / backbone["checkpoint"])
    for suite_name in ("coco-mini", "ade-mini"):
        config["suites"][suite_name].update(methods=["linear", "lora"], sizes={"train800": 8, "val200": 4, "test": 8})
    config["suites"]["coco-mini"]["training"]["epochs"] = 2
    config["suites"]["coco-mini"]["data"]["milestones"] = [1]
    config["suites"]["ade-mini"]["data"].update(max_iters=6, warmup_iters=2)
    return write_config(config, folder / name)
