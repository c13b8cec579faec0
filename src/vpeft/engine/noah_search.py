"""NOAH's one-shot neural architecture search: supernet training and evolutionary subnet search.

NOAH (see `vpeft.methods.noah`) runs in three stages:

1. `train_supernet`: the method in supernet mode, trained on the protocol's *training* split with a
   new random subnet active at every step (weight entanglement: all subnets share the leading
   rows/columns of the largest tensors). Writes the trainable tensors (method + head) as safetensors
   and a json record beside them.
2. `search_subnet`: evolutionary search (random initial population, then per generation mutation and
   crossover of the top-k, topped up with random subnets) over subnets within `param_budget`
   parameters, each scored by top-1 on the protocol's *eval* split with the weights it inherits from
   the supernet (no retraining). Writes the best subnet as `{"hparams": {...}}` json.
3. the final run: `vpeft.engine.train.run_training` with those hyper-parameters laid over the
   method's (`with_searched_hparams`; mode "subnet"), trained from scratch like any other method.

Stages 1 and 2 are meant for the `val` protocol (train800 -> val200), so the test split never
influences which subnet is chosen. NOAH itself trains its supernet on all 1,000 training images and
scores the candidates on those same training images; we hold val200 out instead.

Search settings default to the method's hyper-parameters (`search_*`, `param_budget`); the keyword
arguments override them. Everything draws from generators seeded by the run's seed (or `seed`), so a
rerun gives the same supernet and the same subnet on the same machine.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data.layouts import get_layout
from ..data.vtab import materialize_small
from ..io import atomic_write_bytes, atomic_write_json
from ..methods import apply_method, build_method
from ..methods.base import MethodError
from ..methods.noah import (
    SUBNET_KEYS,
    NoahConfig,
    noah_controller,
    resolve_depth_choices,
    sample_module_dims,
    subnet_key,
)
from ..provenance import provenance

# NOAH's stages build data and models exactly as a normal run does, and train with its epoch loop.
from .build import (
    RunConfig,
    TrainingConfig,
    autocast_context,
    build_run_model,
    optimizer_and_schedule,
    run_datasets,
    run_fingerprint,
    seed_everything,
    set_up_torch,
)
from .train import train_epoch

log = logging.getLogger(__name__)

SUPERNET_SCHEMA = "vpeft.noah-supernet/1"
SEARCH_SCHEMA = "vpeft.noah-search/1"


def _record_path(path: Path, given, suffix: str) -> Path:
    return Path(given) if given else path.with_name(path.stem + suffix)


def _build(run: RunConfig, tc: TrainingConfig, hparams: dict, base_dir):
    """Backbone + NOAH in supernet mode, as `run_training` builds a run's model."""
    if run.method != "noah":
        raise MethodError(f"NOAH's search stages need method 'noah', got '{run.method}'")
    spec, model, checkpoint_sha = build_run_model(run, tc, base_dir)
    method = build_method("noah", {**hparams, "mode": "supernet"})
    applied = apply_method(model, method)
    return spec, model, applied, checkpoint_sha


@torch.no_grad()
def _top1(model, loader, device) -> float:
    """Exact fraction of correct predictions (integer counts: ties compare exactly)."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        pred = model(images.to(device)).argmax(dim=-1).cpu()
        correct += int((pred == labels).sum())
        total += labels.numel()
    return correct / max(total, 1)


def _largest(controller) -> dict:
    return {k: tuple(controller.sizes[k]) for k in SUBNET_KEYS}


# -- stage 1 ------------------------------------------------------------------------------------------

def train_supernet(run_values: dict, out_path: str | Path, threads: int = 1, base_dir: str | Path = ".", *,
                   device: str | None = None, record_path: str | Path | None = None) -> dict:
    """Train NOAH's supernet on the protocol's training split; write its trainable tensors to
    `out_path` (safetensors) and a record to `record_path` (default: `<out_path stem>.json`).

    Training follows the run's training config except `epochs` and `lr`, which come from the
    method's `supernet_epochs` / `supernet_lr`. Returns the record.
    """
    from safetensors.torch import save

    out_path = Path(out_path)
    record_path = _record_path(out_path, record_path, ".json")
    run = RunConfig.from_dict(run_values)
    config = NoahConfig.from_dict({**run.method_hparams, "mode": "supernet"}, method="noah")
    tc = TrainingConfig.from_dict({**run.training, "epochs": config.supernet_epochs, "lr": config.supernet_lr})
    tc.warmup_epochs = min(tc.warmup_epochs, tc.epochs)
    dev = set_up_torch(threads, device)
    seed_everything(run.seed)

    spec, model, applied, checkpoint_sha = _build(run, tc, run.method_hparams, base_dir)
    controller = noah_controller(model)
    controller.reseed(run.seed)
    counts = applied.parameter_counts()
    log.info("NOAH supernet %s/%s seed %d: %d blocks, tensor widths %s; %d supernet parameters (+head %d)",
             run.suite, run.task, run.seed, controller.depth,
             {k: max(v) for k, v in controller.sizes.items()}, counts["trainable"], counts["head"])
    model.to(dev)

    train_set, eval_set = run_datasets(run, spec, tc)
    shuffle_rng = torch.Generator().manual_seed(run.seed)
    train_loader = DataLoader(train_set, batch_size=tc.batch_size, shuffle=True, generator=shuffle_rng,
                              num_workers=tc.loader_workers_on(dev, threads))
    # NOAH trains every trainable tensor with weight decay, one group (whatever weight_decay_1d says).
    optimizer, scheduler = optimizer_and_schedule([{"params": [p for p in model.parameters() if p.requires_grad]}],
                                                  tc, dev)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    autocast = autocast_context(dev, "fp32")  # the supernet trains in fp32, as it always has

    def where():
        return f"NOAH supernet {run.suite}/{run.task}, seed {run.seed}, subnet {controller.active}"

    history, seen, train_seconds = [], 0, 0.0
    for epoch in range(tc.epochs):
        scheduler.step(epoch)
        # the model's forward pre-hook draws a new active subnet before every step
        done = train_epoch(model, model, train_loader, optimizer, criterion, device=dev, autocast=autocast,
                           epoch=epoch + 1, where=where)
        train_seconds += done["seconds"]
        seen += done["images"]
        entry = {"epoch": epoch + 1, "loss": done["loss"], "lr": optimizer.param_groups[0]["lr"],
                 "train_top1": done["train_top1"], "seconds": round(done["seconds"], 3)}
        history.append(entry)
        log.info("supernet epoch %d/%d  loss %.4f  train top-1 %.3f  lr %.2e", epoch + 1, tc.epochs,
                 entry["loss"], entry["train_top1"], entry["lr"])

    # A sanity number for the record: the largest subnet on the eval split (not used for anything).
    controller.set_active(_largest(controller))
    eval_loader = DataLoader(eval_set, batch_size=tc.eval_batch_size, shuffle=False)
    largest_top1 = _top1(model, eval_loader, dev)
    log.info("supernet: largest subnet top-1 %.4f on %s", largest_top1, run.protocol["eval_split"])

    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    hparams = config.to_dict()
    atomic_write_bytes(out_path, save(state, metadata={
        "schema": SUPERNET_SCHEMA, "method_hparams": json.dumps(hparams, sort_keys=True),
        "num_classes": str(run.num_classes)}))
    record = {
        "schema": SUPERNET_SCHEMA, "status": "ok",
        "suite": run.suite, "task": run.task, "method": run.method, "seed": run.seed,
        "protocol": run.protocol, "supernet": str(out_path.name),
        "tensor_widths": {k: list(v) for k, v in controller.sizes.items()},
        "params": {"supernet": counts["trainable"], "head": counts["head"],
                   "largest_subnet": controller.subnet_parameter_count(_largest(controller))},
        "largest_subnet_eval_top1": largest_top1,
        "train": {"epochs": tc.epochs, "images": int(seen), "wall_seconds": train_seconds,
                  "final_loss": history[-1]["loss"] if history else math.nan, "history": history},
        "config": {**asdict(run), "training": asdict(tc), "method_hparams": hparams,
                   "checkpoint_sha256": checkpoint_sha, "fingerprint": run_fingerprint(run_values)},
        "provenance": {**provenance(threads), "device": str(dev)},
    }
    atomic_write_json(record_path, record)
    return record


# -- stage 2 ------------------------------------------------------------------------------------------

class _Evolution:
    """NOAH's evolutionary search over subnets (own implementation of the procedure in its
    `evolution.py`, with AutoFormer's per-block dim mutation added)."""

    def __init__(self, config: NoahConfig, depth: int, count, score, budget: int, generator: torch.Generator):
        self.config = config
        self.depth = depth
        self.depths = resolve_depth_choices(config.depth_choices, depth)
        self.count = count
        self.score = score
        self.budget = budget
        self.g = generator
        self.seen: dict[tuple, dict] = {}  # every candidate tried, legal or not: never scored twice

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.g))

    def _pick(self, seq):
        return seq[int(torch.randint(len(seq), (1,), generator=self.g))]

    def random(self) -> dict:
        return {k: sample_module_dims(self.config.choices(k), self.depths, self.depth, self.g) for k in SUBNET_KEYS}

    def mutate(self, parent: dict) -> dict:
        """Per module, with probability m: (NOAH) with probability s draw a new depth, keeping the dims of
        the blocks that stay and drawing dims for new ones; (AutoFormer) redraw each kept block's dim
        with probability m."""
        m, s = self.config.search_mutation_prob, self.config.search_depth_prob
        child = {}
        for key in SUBNET_KEYS:
            dims = list(parent[key])
            if self._uniform() < m:
                depth = next((i for i, v in enumerate(dims) if v == 0), self.depth)
                new_depth = self._pick(self.depths) if self._uniform() < s else depth
                choices = self.config.choices(key)
                dims = [v if i < min(depth, new_depth) else (self._pick(choices) if i < new_depth else 0)
                        for i, v in enumerate(dims)]
                dims = [self._pick(choices) if v and self._uniform() < m else v for v in dims]
            child[key] = tuple(dims)
        return child

    def crossover(self, a: dict, b: dict) -> dict:
        """Each module's whole per-block list from one parent or the other (NOAH)."""
        return {key: tuple((a if self._uniform() < 0.5 else b)[key]) for key in SUBNET_KEYS}

    def consider(self, subnet: dict) -> bool:
        """Score `subnet` if it is new and within the budget; True when it joined the pool."""
        key = subnet_key(subnet)
        if key in self.seen:
            return False
        params = self.count(subnet)
        entry = {"subnet": {k: list(v) for k, v in subnet.items()}, "params": params, "top1": None}
        self.seen[key] = entry
        if params > self.budget:
            return False
        entry["top1"] = self.score(subnet)
        return True

    def scored(self) -> list[dict]:
        """Legal candidates, best first: higher top-1, then fewer parameters, then the subnet itself."""
        ranked = [(k, e) for k, e in self.seen.items() if e["top1"] is not None]
        ranked.sort(key=lambda ke: (-ke[1]["top1"], ke[1]["params"], ke[0]))
        return [e for _, e in ranked]

    def _fill(self, make, wanted: int, tries: int) -> int:
        added = 0
        while added < wanted and tries > 0:
            tries -= 1
            added += self.consider(make())
        return added

    def run(self, population: int, generations: int, select: int) -> list[dict]:
        added = self._fill(self.random, population, tries=50 * population)
        if added == 0:
            raise MethodError(f"NOAH search: no random subnet fits param_budget={self.budget} "
                              f"(tried {50 * population})")
        log.info("search: initial population of %d, best top-1 %.4f", added, self.scored()[0]["top1"])
        for generation in range(1, generations + 1):
            top = [self._as_subnet(e) for e in self.scored()[:select]]
            n_mut = population // 2
            made = self._fill(lambda top=top: self.mutate(self._pick(top)), n_mut, tries=10 * n_mut)
            made += self._fill(lambda top=top: self.crossover(self._pick(top), self._pick(top)),
                               population - n_mut, tries=10 * (population - n_mut))
            made += self._fill(self.random, population - made, tries=10 * population)
            best = self.scored()[0]
            log.info("search: generation %d/%d scored %d new subnets; best top-1 %.4f with %d parameters",
                     generation, generations, made, best["top1"], best["params"])
        return self.scored()

    @staticmethod
    def _as_subnet(entry: dict) -> dict:
        return {k: tuple(v) for k, v in entry["subnet"].items()}


def search_subnet(run_values: dict, supernet_path: str | Path, out_json: str | Path, *,
                  population: int | None = None, generations: int | None = None,
                  param_budget: int | None = None, seed: int | None = None, select: int | None = None,
                  threads: int = 1, base_dir: str | Path = ".", device: str | None = None,
                  record_path: str | Path | None = None) -> dict:
    """Search the trained supernet for the best subnet within the parameter budget, scoring subnets on
    the protocol's eval split. Writes `out_json` = {"hparams": {mode "subnet" + the three per-block
    lists}, ...summary} (what `vpeft.engine.train.with_searched_hparams` lays over the method's
    hparams for the final run) and a record of the search to `record_path` (default:
    `<out_json stem>.record.json`). Returns the contents of `out_json`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    out_json = Path(out_json)
    record_path = _record_path(out_json, record_path, ".record.json")
    run = RunConfig.from_dict(run_values)
    config = NoahConfig.from_dict({**run.method_hparams, "mode": "supernet"}, method="noah")
    population = config.search_population if population is None else int(population)
    generations = config.search_generations if generations is None else int(generations)
    select = config.search_select if select is None else int(select)
    budget = config.param_budget if param_budget is None else int(param_budget)
    seed = run.seed if seed is None else int(seed)
    if population < 2 or not 1 <= select <= population or generations < 0 or budget < 1:
        raise MethodError(f"NOAH search: bad settings population={population} select={select} "
                          f"generations={generations} param_budget={budget}")
    tc = TrainingConfig.from_dict(run.training)
    dev = set_up_torch(threads, device)
    seed_everything(run.seed)  # as in train_supernet: a random-init backbone must come out identical

    spec, model, _applied, checkpoint_sha = _build(run, tc, run.method_hparams, base_dir)
    controller = noah_controller(model)
    with safe_open(str(supernet_path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("schema") != SUPERNET_SCHEMA:
        raise MethodError(f"{supernet_path} is not a NOAH supernet ({SUPERNET_SCHEMA})")
    state = load_file(str(supernet_path))
    expected = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    found = {n: tuple(t.shape) for n, t in state.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:4]
        raise MethodError(f"{supernet_path} does not match this run's supernet (search space, model or classes "
                          f"differ), e.g. {diff}; retrain the supernet")
    model.load_state_dict(state, strict=False)
    model.to(dev).eval()

    eval_split = run.protocol["eval_split"]
    eval_set = materialize_small(get_layout(run.layout).eval_dataset(run, spec, tc))
    loader = DataLoader(eval_set, batch_size=tc.eval_batch_size, shuffle=False)

    def score(subnet):
        controller.set_active(subnet)
        return _top1(model, loader, dev)

    log.info("NOAH search %s/%s: population %d, top-%d, %d generations, param budget %d, seed %d, "
             "scored on %s (%d images)", run.suite, run.task, population, select, generations, budget, seed,
             eval_split, len(eval_set))
    start = time.perf_counter()
    evolution = _Evolution(config, controller.depth, controller.subnet_parameter_count, score, budget,
                           torch.Generator().manual_seed(seed))
    ranked = evolution.run(population, generations, select)
    best = ranked[0]
    hparams = {"mode": "subnet", **{k: list(best["subnet"][k]) for k in SUBNET_KEYS}}
    log.info("search: best subnet top-1 %.4f with %d parameters: %s", best["top1"], best["params"], hparams)
    result = {"schema": SEARCH_SCHEMA, "hparams": hparams, "params": best["params"], "eval_top1": best["top1"],
              "eval_split": eval_split, "param_budget": budget}
    atomic_write_json(out_json, result)
    atomic_write_json(record_path, {
        "schema": SEARCH_SCHEMA, "status": "ok",
        "suite": run.suite, "task": run.task, "method": run.method, "seed": run.seed, "search_seed": seed,
        "protocol": run.protocol, "supernet": str(supernet_path),
        "settings": {"population": population, "generations": generations, "select": select,
                     "param_budget": budget, "mutation_prob": config.search_mutation_prob,
                     "depth_prob": config.search_depth_prob},
        "best": best, "top": ranked[:select], "evaluated": len(ranked),
        "over_budget": sum(1 for e in evolution.seen.values() if e["top1"] is None),
        "wall_seconds": time.perf_counter() - start,
        "config": {"backbone": run.backbone, "checkpoint_sha256": checkpoint_sha,
                   "method_hparams": config.to_dict()},
        "provenance": {**provenance(threads), "device": str(dev)},
    })
    return result
