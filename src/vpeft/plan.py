"""The cost of a benchmark before it is run: per suite and method, the jobs, the images (or clips)
trained and evaluated, and the GPU-hours they take.

Work comes from the config (split sizes, epochs, iterations, test views, methods x tasks x seeds). Time
comes from one of two sources, per backbone:
  * measured: `cost_plan.throughput.<backbone>` (training and evaluation samples per second on one GPU,
    e.g. from `bench/run.py --device cuda`);
  * estimated: the backbone's forward FLOPs per sample, counted by torch's FlopCounterMode on a
    meta-device model at the suite's input (nothing is allocated), x `train_flops_factor` for a training
    step, divided by the GPU's peak x an assumed utilisation (`cost_plan.gpu`, `cost_plan.mfu`).
Method-aware: a training step costs `train_flops_factor` forwards when gradients flow through the
backbone; one forward when they do not (linear probing, side-tuning: `needs_backbone_grad = False` or no
backbone tensor trained), and a linear probe whose frozen features the feature cache holds (no augmentation,
no drop-path, cache not off) runs the backbone once per training image, not once per epoch. Every seed is
a job of its own; `gpu_hours` covers all seeds, `gpu_hours_per_seed` one.
Estimates leave out what the method itself adds (small next to the backbone), the selection / search
stages of GPS, SCT and NOAH, and for dense suites the neck and heads (so they are lower bounds).

Few-shot suites count one job per method x task x shots x seed, each training k x classes images per
epoch; suites with shift targets add a row per method for the `evaluate_shift` stage (stage "shift"):
one job per run, evaluating the source test split and every target once per WiSE-FT alpha (once for
methods whose final model keeps its own layers). Embedded targets rendered from a class subset are
sized as that share of the source test split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .config import resolve_suites, suite_fewshot, suite_methods, suite_shift


@dataclass
class RunCost:
    suite: str
    method: str
    jobs: int
    train_samples: int  # per job: samples x epochs (x repeats)
    eval_samples: int   # per job: test samples x views
    gpu_hours: float    # all jobs
    source: str         # measured | estimated
    stage: str = "train"  # train | shift (the evaluate_shift stage: targets and WiSE-FT alphas)
    seeds: int = 1      # jobs = tasks x seeds
    cost_model: str = "full backward"  # how a training step was priced (see the module docstring)

    @property
    def gpu_hours_per_seed(self) -> float:
        return self.gpu_hours / max(self.seeds, 1)


def training_cost(method: str, run: dict) -> str:
    """How a training step of `method` in `run` is priced: "cached features", "forward only" or
    "full backward" (see the module docstring)."""
    from .methods import get_method_class

    training = run.get("training") or {}
    frozen = method == "linear" or not get_method_class(method).needs_backbone_grad
    if method == "linear":
        augmented = bool(training.get("train_aug")) or (run.get("protocol") or {}).get("augmentation") not in (
            None, "none")
        cache = str(training.get("feature_cache", "auto")).lower() not in ("off", "false")
        if cache and not augmented and not float(training.get("drop_path") or 0):
            return "cached features"
    return "forward only" if frozen else "full backward"


def _split_size(suite: dict, task: str, split: str, dataset_sizes: dict) -> int:
    sizes = {**(suite.get("sizes") or {}), **(suite["tasks"][task].get("sizes") or {})}
    known = {**dataset_sizes.get(suite.get("data_suite", ""), {}).get(task, {}), **sizes}
    if split == "train800val200" and split not in known and "train800" in known and "val200" in known:
        return known["train800"] + known["val200"]
    if split not in known:
        raise KeyError(f"no size for split '{split}' of {suite.get('data_suite')}/{task}: add it to "
                       f"cost_plan.dataset_sizes or the suite's sizes")
    return known[split]


def _protocol_size(suite: dict, task: str, split: str, dataset_sizes: dict) -> int:
    """A protocol split's size, summed over the manifest splits it reads where the layout names them
    otherwise (ImageNet: train800val200 = train)."""
    from .data.layouts import manifest_splits

    try:
        return _split_size(suite, task, split, dataset_sizes)
    except KeyError:
        parts = manifest_splits(suite["layout"], split)
        if parts == [split]:
            raise
        return sum(_split_size(suite, task, part, dataset_sizes) for part in parts)


def _work(suite: dict, task: str, training: dict, protocol: dict, dataset_sizes: dict, shots: int | None = None):
    """(train samples, eval samples) of one run (`shots`: a few-shot run, k images per class)."""
    train = _protocol_size(suite, task, protocol["train_split"], dataset_sizes)
    if shots is not None:
        train = min(train, int(shots) * int(suite["tasks"][task]["num_classes"]))
    test = _protocol_size(suite, task, protocol["eval_split"], dataset_sizes)
    data = suite.get("data") or {}
    if suite["kind"] == "dense":
        if data.get("max_iters"):  # iteration-based recipe (UperNet 160k): iterations x batch
            return int(data["max_iters"]) * int(training["batch_size"]), test
        return train * int(training["epochs"]) * int(data.get("repeat") or 1), test
    views = int(data.get("test_clips", 1)) * int(data.get("test_crops", 1)) if suite["kind"] == "video" else 1
    return train * int(training["epochs"]), test * views


def _input_shape(config: dict, suite: dict) -> tuple[int, ...]:
    size = config["backbones"][suite["backbone"]]["input_size"]
    data = suite.get("data") or {}
    if suite["kind"] == "video":
        return (1, 3, int(data.get("num_frames", 8)), size, size)
    if suite["kind"] == "dense":
        scale = data.get("image_scale") or ([512, 512] if suite["layout"] == "ade20k" else
                                            [1000, 600] if suite["layout"] == "voc" else [1333, 800])
        long_side, short_side = (-(-int(s) // 32) * 32 for s in scale)  # padded to Swin's stride
        return (1, 3, short_side, long_side)
    return (1, 3, size, size)


def _default_size(arch: str) -> int | None:
    import timm

    try:
        return int(timm.models.get_pretrained_cfg(arch).input_size[-1])
    except Exception:  # noqa: BLE001 - no pretrained config: timm's own default applies
        return None


@functools.lru_cache(maxsize=None)
def forward_flops(arch: str, shape: tuple[int, ...], model_kwargs: tuple = ()) -> int:
    """FLOPs of one forward pass of `arch` on one sample of `shape`, on the meta device."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import backbones  # noqa: F401  (registers the demo architectures)

    kwargs = dict(model_kwargs)
    if len(shape) == 5:
        from .video import models  # noqa: F401  (registers the video architectures)
    elif shape[2] != shape[3] or shape[2] != 224 or _default_size(arch) != 224:
        kwargs.setdefault("img_size", tuple(shape[2:]))  # e.g. DINOv2 (518 px in timm) run at 224
    with torch.device("meta"):
        model = timm.create_model(arch.split(".")[0], pretrained=False, num_classes=0, **kwargs)
        sample = torch.empty(shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(sample)
    return counter.get_total_flops()


def plan(config: dict, method_configs: dict, suites: list[str] | None = None) -> list[RunCost]:
    from .config import resolve_run
    from .dense.settings import resolve_dense_run

    resolved = resolve_suites(config)
    settings = config.get("cost_plan") or {}
    peak = float(settings["gpu"]["bf16_tflops"]) * 1e12
    mfu, factor = settings["mfu"], float(settings["train_flops_factor"])
    measured = settings.get("throughput") or {}
    dataset_sizes = settings.get("dataset_sizes") or {}
    rows = []
    for name in suites or config["default_suites"]:
        suite = resolved[name]
        backbone = config["backbones"][suite["backbone"]]
        source = "measured" if suite["backbone"] in measured else "estimated"

        def seconds_of(train_forwards: float, test: int, step: float = factor) -> float:
            """`train_forwards` training samples at `step` forwards each (factor: a full backward)."""
            if suite["backbone"] in measured:
                rate = measured[suite["backbone"]]  # measured: full fine-tuning's rate
                return train_forwards * step / factor / rate["train"] + test / rate["eval"]
            flops = forward_flops(backbone["arch"], _input_shape(config, suite),
                                  tuple(sorted((backbone.get("model_kwargs") or {}).items())))
            return train_forwards * step * flops / (peak * mfu["train"]) + test * flops / (peak * mfu["eval"])

        fewshot = suite_fewshot(name, suite)
        # (shots, seed) of each run of a task: the few-shot grid, or the config's seeds
        grid = [(k, s) for k in fewshot["shots"] for s in fewshot["seeds"]] if fewshot else [(None, s) for s in config["seeds"]]
        shift = suite_shift(resolved, name)
        for method in suite_methods(name, suite, method_configs):
            jobs, train_total, eval_total, seconds = 0, 0, 0, 0.0
            for task in suite["tasks"]:
                for shots, seed in grid:
                    resolve = resolve_dense_run if suite["kind"] == "dense" else resolve_run
                    run = resolve(config, resolved, method_configs, name, method, task, seed)
                    train, test = _work(suite, task, run["training"], run["protocol"], dataset_sizes, shots)
                    model_name = "full backward" if suite["kind"] == "dense" else training_cost(method, run)
                    train_forwards = train  # cached probe: one forward per training sample (the head is negligible)
                    if model_name == "cached features":
                        train_forwards = train / max(int(run["training"].get("epochs") or 1), 1)
                    seconds += seconds_of(train_forwards, test, factor if model_name == "full backward" else 1.0)
                    jobs += 1
                    train_total, eval_total = train_total + train, eval_total + test
            seeds = len({seed for _, seed in grid})
            rows.append(RunCost(name, method, jobs, train_total // max(jobs, 1), eval_total // max(jobs, 1),
                                seconds / 3600, source, seeds=seeds, cost_model=model_name))
            if shift:
                evaluated = _shift_eval_samples(resolved, name, method, shift, dataset_sizes, config, method_configs)
                rows.append(RunCost(name, method, jobs, 0, evaluated, jobs * seconds_of(0, evaluated) / 3600, source,
                                    stage="shift", seeds=seeds, cost_model="evaluation"))
    return rows


def _shift_eval_samples(suites: dict, name: str, method: str, shift: dict, dataset_sizes: dict, config: dict,
                        method_configs: dict) -> int:
    """Images one evaluate_shift job of `method` evaluates, averaged over the suite's tasks."""
    from .config import resolve_run
    from .methods import get_method_class

    suite = suites[name]
    points = len(set(shift["alphas"]) | {1.0}) if shift["wise"] and (
        get_method_class(method).mergeable or method == "full") else 1
    total = 0
    for task in suite["tasks"]:
        protocol = resolve_run(config, suites, method_configs, name, method, task, config["seeds"][0])["protocol"]
        images = _protocol_size(suite, task, protocol["eval_split"], dataset_sizes)
        for target in shift["targets"].values():
            tsuite = suites[target["suite"]]
            render = tsuite.get("render")
            if render:  # a rendered class subset: that share of the source's test split
                origin = suites[render["from"]]
                images += (_protocol_size(origin, task, "test", dataset_sizes) * tsuite["tasks"][task]["num_classes"]
                           // origin["tasks"][task]["num_classes"])
            else:
                images += _protocol_size(tsuite, task, "test", dataset_sizes)
        total += images * points
    return total // len(suite["tasks"])


def format_plan(rows: list[RunCost], config: dict) -> str:
    gpu = config["cost_plan"]["gpu"]["name"]
    seeds = config.get("seeds") or [None]
    lines = [f"seeds: {', '.join(str(s) for s in seeds)} (every seed is a job; GPU-h/seed is one seed's share)",
             f"{'suite':<14} {'method':<18} {'jobs':>5} {'train samples/job':>18} {'eval samples/job':>17} "
             f"{'GPU-hours':>10} {'GPU-h/seed':>10}  source, training step"]
    for suite in dict.fromkeys(r.suite for r in rows):
        part = [r for r in rows if r.suite == suite]
        for r in part:
            method = r.method if r.stage == "train" else f"{r.method} +{r.stage}"
            lines.append(f"{r.suite:<14} {method:<18} {r.jobs:>5} {r.train_samples:>18,} {r.eval_samples:>17,} "
                         f"{r.gpu_hours:>10.1f} {r.gpu_hours_per_seed:>10.1f}  {r.source}, {r.cost_model}")
        lines.append(f"{suite + ' total':<33} {sum(r.jobs for r in part):>5} {'':>18} {'':>17} "
                     f"{sum(r.gpu_hours for r in part):>10.1f}")
    total = sum(r.gpu_hours for r in rows)
    lines.append(f"{'all suites':<33} {sum(r.jobs for r in rows):>5} {'':>18} {'':>17} {total:>10.1f}  "
                 f"= {total / 24:.1f} GPU-days on {gpu}")
    return "\n".join(lines)
