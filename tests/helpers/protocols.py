"""Configs for the protocol tests: the shipped few-shot and shift suites on seconds-scale vtab-mini data."""

from __future__ import annotations

from pathlib import Path

from .configs import shipped_config, write_config
from .snake import ROOT


def protocols_config(folder: Path, *, tasks=("digits",), fewshot_methods=("linear", "lora"), shots=(1, 2),
                     seeds=(0, 1), shift_methods=("lora", "full", "adapter"), name: str = "protocols.yaml") -> Path:
    """vtab-mini at 24 / 8 / 32 images and 1 epoch; vtab-mini-fewshot and vtab-mini-shift (and its
    rendered targets) restricted to `tasks`."""
    config = shipped_config()
    mini = config["suites"]["vtab-mini"]
    mini.update(sizes={"train800": 24, "val200": 8, "test": 32}, tasks={k: mini["tasks"][k] for k in tasks})
    mini["training"].update(epochs=1, warmup_epochs=0, batch_size=8)
    for backbone in config["backbones"].values():  # shipped checkpoints, from a run in another folder
        if str(backbone.get("checkpoint") or "").startswith("assets/"):
            backbone["checkpoint"] = str(ROOT / backbone["checkpoint"])
    for target in ("vtab-mini-noise", "vtab-mini-sketch", "vtab-mini-odd"):
        entry = config["suites"][target]
        entry["tasks"] = {k: entry["tasks"][k] for k in tasks}
    config["suites"]["vtab-mini-fewshot"].update(methods=list(fewshot_methods),
                                                 fewshot={"shots": list(shots), "seeds": list(seeds)})
    config["suites"]["vtab-mini-shift"]["methods"] = list(shift_methods)
    return write_config(config, folder / name)
