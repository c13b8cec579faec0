"""Write the generated mmdet / mmseg config of one dense run, for OpenMMLab's own tools.

    python -m vpeft.dense.export coco mona coco2017 -o work/coco_mona.py
    PYTHONPATH=src python <mmdet>/tools/train.py work/coco_mona.py      # or tools/dist_train.sh

The config is the one `snakemake results/coco/mona/` trains (same resolution of config/config.yaml and
config/methods/*.yaml); it imports `vpeft.dense.backbone` itself (`custom_imports`). The class names
come from the checked data index when it exists, else from the toolbox's dataset (COCO, VOC, ADE20K).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from ..config import load_method_configs, resolve_suites
from .recipes import build_config, write_config
from .settings import resolve_dense_run


def _classes(run: dict, config: dict) -> list[str]:
    index = Path(config["resources_dir"]) / "index" / "dense" / run["suite"] / f"{run['task']}.json"
    if index.is_file():
        names = json.loads(index.read_text()).get("classes")
        if names:
            return list(names)
    kind = run["dense"]["kind"]
    if kind == "instance":
        from mmdet.datasets import CocoDataset as dataset
    elif kind == "detection":
        from mmdet.datasets import VOCDataset as dataset
    else:
        from mmseg.datasets import ADE20KDataset as dataset
    return list(dataset.METAINFO["classes"])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("method")
    parser.add_argument("task")
    parser.add_argument("-o", "--out", required=True, help="config file to write (.py)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--methods-dir", default="config/methods")
    parser.add_argument("--work-dir", default=None, help="mmengine work_dir (default: beside the config file)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    methods = load_method_configs(args.methods_dir)
    run = resolve_dense_run(config, resolve_suites(config), methods, args.suite, args.method, args.task, args.seed)
    out = Path(args.out)
    cfg = build_config(run, _classes(run, config), work_dir=args.work_dir or out.with_suffix(""), device=args.device)
    write_config(cfg, out)
    print(out)
    return out


if __name__ == "__main__":
    main()
