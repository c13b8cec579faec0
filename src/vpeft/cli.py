"""The `vpeft` command line: inspect methods, count parameters, and run single steps by hand."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


def method_rows() -> list[dict]:
    """One row per registered method, in table order (baselines, then by family)."""
    from .methods import available_methods, get_method_class
    from .methods.registry import in_table_order

    rows = []
    for name in in_table_order(available_methods()):
        cls = get_method_class(name)
        stages = [s for s, on in (("selection", cls.needs_selection), ("search", cls.needs_search)) if on]
        rows.append({"name": name, "family": cls.category, "mergeable": cls.mergeable,
                     "backbone_grad": cls.needs_backbone_grad, "stages": stages, "reference": cls.paper,
                     "verified": cls.provenance.kind, "provenance": cls.provenance.to_dict(),
                     "verified_detail": cls.provenance.summary()})
    return rows


def cmd_methods(args) -> int:
    rows = method_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.markdown:
        print("| Method | Family | Mergeable | Extra stage | Reference | Verified against |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| `{r['name']}` | {r['family']} | {'yes' if r['mergeable'] else 'no'} | "
                  f"{', '.join(r['stages']) or '-'} | {r['reference']} | {r['verified_detail']} |")
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'family':<18}  mergeable  {'stage':<9}  {'verified':<13}  reference")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['family']:<18}  {'yes' if r['mergeable'] else 'no':<9}  "
              f"{', '.join(r['stages']) or '-':<9}  {r['verified']:<13}  {r['reference']}")
        print(f"{'':<{width}}  {'':<18}  {'':<9}  {'':<9}  {'':<13}  {r['verified_detail']}")
    return 0


def _count_backbone(args) -> tuple[str, dict]:
    """(timm architecture, model arguments) of --backbone: a timm `arch[.tag]`, or the name of a
    `backbones:` entry of the config (its architecture at its input size, e.g. DINOv2 at 224 px)."""
    import timm

    from .backbones import BackboneSpec, model_kwargs, register_architecture

    if not timm.is_model(args.backbone.split(".")[0]) and Path(args.config).is_file():
        import yaml

        entries = (yaml.safe_load(Path(args.config).read_text()) or {}).get("backbones") or {}
        if args.backbone in entries:
            spec = BackboneSpec.from_config(args.backbone, entries[args.backbone])
            register_architecture(spec.arch)
            return spec.arch, model_kwargs(spec)
    return args.backbone, {}


def cmd_count(args) -> int:
    import timm

    from .backbones import register_architecture
    from .methods import apply_method, build_method

    try:
        method = build_method(args.method, _parse_sets(args.set))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    arch, kwargs = _count_backbone(args)
    register_architecture(arch)
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=args.num_classes, **kwargs)
    except RuntimeError as err:
        raise SystemExit(f"error: unknown backbone architecture {args.backbone!r} ({err}); "
                         f"list them with: python -c \"import timm; print(timm.list_models())\", or name "
                         f"a backbones: entry of {args.config}") from None
    selection = None
    if method.needs_selection:
        # The count does not depend on *which* entries are selected, only on how many: random inputs do.
        import torch

        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        if kwargs.get("img_size"):  # built for the backbones: entry's input size, not timm's default
            size = (3, kwargs["img_size"], kwargs["img_size"])
        images = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
        selection = method.compute_selection(model, [(images, torch.arange(2) % args.num_classes)],
                                             args.num_classes)
    try:
        applied = apply_method(model, method, selection)
    except ValueError as err:  # MethodError: the method does not fit this architecture
        raise SystemExit(f"error: {err}") from None
    counts = applied.parameter_counts()
    out = {"method": args.method, "backbone": args.backbone, "arch": arch, "num_classes": args.num_classes,
           "hparams": method.config.to_dict(), "trainable_params": counts["trainable"],
           "trainable_params_with_head": counts["trainable_with_head"], "head_params": counts["head"],
           "total_params": counts["total"], "matched_modules": len(applied.matched)}
    if args.show_matched:
        out["matched"] = applied.matched
    print(json.dumps(out, indent=2))
    return 0


def cmd_generate(args) -> int:
    from .data.synthetic.vtab_mini import generate_task

    sizes = {"train800": args.train, "val200": args.val, "test": args.test}
    print(json.dumps(generate_task(args.task, args.out, seed=args.seed, sizes=sizes, image_size=args.image_size)))
    return 0


def cmd_pretrain(args) -> int:
    from .engine.pretrain import PretrainConfig, pretrain_demo_backbone
    from .logs import log_to_file

    log_to_file(None)
    cfg = PretrainConfig(seed=args.seed, epochs=args.epochs, num_classes=args.num_classes,
                         images_per_class=args.images_per_class)
    summary = pretrain_demo_backbone(args.out, cfg, threads=args.threads)
    print(json.dumps({k: summary[k] for k in ("checkpoint", "sha256", "wall_seconds")}))
    return 0


def cmd_plan(args) -> int:
    from pathlib import Path

    from .config import ConfigError, deep_merge, load_method_configs, load_yaml, validate_against_schema
    from .plan import format_plan, plan

    config: dict = {}
    for path in args.configfile:
        config = deep_merge(config, load_yaml(path))
    root = Path(__file__).resolve().parents[2]  # the repository: schemas and config/methods/
    try:
        validate_against_schema(config, root / "workflow/schemas/config.schema.yaml")
        rows = plan(config, load_method_configs(root / "config/methods"), args.suite or None)
    except (ConfigError, KeyError) as err:
        raise SystemExit(f"error: {err}") from None
    if args.json:
        print(json.dumps([vars(r) for r in rows], indent=2))
    else:
        print(format_plan(rows, config))
    return 0


def cmd_export(args) -> int:
    from .artifacts import ArtifactError
    from .export import ExportError, export_run

    try:
        path = export_run(args.run_dir, args.to, args.out, base_dir=args.base_dir)
    except (ExportError, ArtifactError) as err:
        raise SystemExit(f"error: {err}") from None
    print(path)
    return 0


def cmd_evaluate(args) -> int:
    from .artifacts import ArtifactError
    from .export import load_run

    try:
        loaded = load_run(args.run_dir, base_dir=args.base_dir)
    except ArtifactError as err:
        raise SystemExit(f"error: {err}") from None
    value = loaded.evaluate(task_dir=args.task_dir)
    recorded = (loaded.metrics or {}).get("metric", {}).get("value")
    print(json.dumps({"run": str(args.run_dir), "method": loaded.method.name, "split": loaded.run.protocol["eval_split"],
                      "top1": value, "recorded": recorded}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpeft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list registered methods (family, mergeable, extra stages, reference, "
                                           "how each was verified)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (the README's)")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("count", help="apply a method to a random-init backbone and count trainable parameters")
    p.add_argument("method")
    p.add_argument("--backbone", required=True, help="timm architecture, e.g. vit_base_patch16_224 or "
                   "vit_base_patch14_dinov2.lvd142m, or a backbones: entry of --config, e.g. dinov2-vitb14")
    p.add_argument("--config", default="config/config.yaml", help="config whose backbones: --backbone may name")
    p.add_argument("--num-classes", type=int, default=100, help="head size (default 100)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method hyper-parameter")
    p.add_argument("--show-matched", action="store_true", help="list the modules the method matched")
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("generate", help="generate one embedded task in the VTAB-1k layout")
    p.add_argument("task")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=160)
    p.add_argument("--val", type=int, default=40)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--image-size", type=int, default=32)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("plan", help="jobs, samples and estimated GPU-hours of the benchmark, per suite and method")
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml", "config/benchmark.yaml"],
                   help="configs merged in order (default: the cluster profile's, i.e. the full benchmark)")
    p.add_argument("--suite", action="append", default=[], help="only this suite (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("export", help="export a finished run's trained tensors to huggingface peft or timm")
    p.add_argument("run_dir", help="the run's folder (results/<suite>/<method>/<task>/seed-<s>)")
    p.add_argument("--to", required=True, choices=("peft", "timm"),
                   help="peft: a LoRA adapter for PeftModel.from_pretrained; timm: the merged state dict")
    p.add_argument("--out", "-o", default=None, help="output folder (default RUN_DIR/<format>/)")
    p.add_argument("--base-dir", default=".", help="folder the workflow ran in (backbone paths are relative to it)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="rebuild a finished run from its trained tensors and re-evaluate it")
    p.add_argument("run_dir")
    p.add_argument("--base-dir", default=".", help="folder the workflow ran in (backbone paths are relative to it)")
    p.add_argument("--task-dir", default=None, help="the task's data folder, if not where the run read it")
    p.set_defaults(func=cmd_evaluate)

    from .engine.pretrain import PretrainConfig

    p = sub.add_parser("pretrain", help="pretrain the demo backbone on rendered fractals")
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=PretrainConfig.epochs)
    p.add_argument("--num-classes", type=int, default=PretrainConfig.num_classes)
    p.add_argument("--images-per-class", type=int, default=PretrainConfig.images_per_class)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:
        base = sys.modules.get("vpeft.methods.base")  # not imported here: most commands need no torch
        if base is not None and isinstance(err, base.MethodError):  # e.g. a new method missing an attribute
            raise SystemExit(f"error: {err}") from None
        raise


if __name__ == "__main__":
    sys.exit(main())
