"""Section `imports`: what a short training job spends importing, now and at a baseline commit.

A training job of the default run (`vtab-mini`: the vit-demo backbone, LoRA, one epoch here) runs in
a fresh process under `python -X importtime` (`run_worker.py`), once with this checkout's `src/`
and once with `src/` of `--import-baseline` (a commit before the import work), interleaved. The
import time is the sum of the self times Python reports (every import of the job, lazy ones
included); also the whole job's CPU time (which other jobs on a shared machine hardly move), its
wall time, and which heavy packages it loaded.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from cache_speedup import _task, _values
from common import REPO

#: Packages an image training job does not need; the test suite checks none of them is loaded
#: (torch._dynamo.eval_frame: the real torch._dynamo, not vpeft._lazy_dynamo's stand-in).
HEAVY = ("torch._dynamo.eval_frame", "torch._inductor", "sympy", "triton", "vpeft.video", "vpeft.dense", "pandas",
         "sklearn", "skimage", "decord", "mmcv", "matplotlib", "scipy")
BASELINE_TRAINING_KEYS = ("epochs", "warmup_epochs", "batch_size", "eval_batch_size", "lr", "weight_decay",
                          "warmup_lr_init", "lr_min", "label_smoothing", "drop_path", "train_aug", "num_workers",
                          "weight_decay_1d", "feature_cache", "feature_cache_memory_mb", "feature_cache_dir",
                          "precision", "compile", "compile_backend", "pin_memory")
_LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|")


def import_ms(stderr: str) -> float:
    """Total import time of a `-X importtime` log: the sum of the self times, in ms."""
    return sum(int(m.group(1)) for m in _LINE.finditer(stderr)) / 1000


def _source(commit: str, into: Path) -> Path:
    """`src/` of `commit`, extracted from git."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "src"], cwd=REPO, capture_output=True,
                             check=True).stdout
    into.mkdir(parents=True)
    tar = into / "src.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into / "src"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _job(src: Path, run_json: Path, out: Path) -> dict:
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    start, cpu_start = time.perf_counter(), _children_cpu()
    result = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "bench" / "run_worker.py"),
                             str(run_json), str(out), str(REPO)], env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
    if result.returncode != 0:
        errors = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))
        raise RuntimeError(f"training job with {src} failed:\n{errors[-3000:]}")
    modules = json.loads((out / "modules.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return {"import_ms": import_ms(result.stderr), "process_seconds": wall, "process_cpu_seconds": cpu, "modules": len(modules),
            "heavy_loaded": [h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules)],
            "top1": metrics["metric"]["value"], "final_loss": metrics["train"]["final_loss"]}


def run(rounds: int, baseline: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="vpeft-imports-") as tmp:
        root = Path(tmp)
        task_dir = _task(root, 20, 10)
        run_json = root / "run.json"
        values = _values(task_dir, "lora", {"rank": 2}, {"epochs": 1, "warmup_epochs": 0, "drop_path": 0.0,
                                                         "precision": "fp32"})
        # only the training keys the baseline knows (those added since leave results as they are on a CPU)
        values["training"] = {k: v for k, v in values["training"].items() if k in BASELINE_TRAINING_KEYS}
        run_json.write_text(json.dumps(values))
        sources = {"baseline": _source(baseline, root / "baseline"), "current": REPO / "src"}
        jobs: dict[str, list[dict]] = {name: [] for name in sources}
        for i in range(rounds):
            order = list(sources) if i % 2 == 0 else list(sources)[::-1]
            for name in order:
                jobs[name].append(_job(sources[name], run_json, root / f"{name}-{i}"))
    out: dict = {"baseline_commit": baseline, "rounds": rounds, "job": "vtab-mini digits, vit-demo, lora, 1 epoch"}
    for name, runs in jobs.items():
        out[name] = {"import_ms": statistics.median(r["import_ms"] for r in runs),
                     "process_seconds": statistics.median(r["process_seconds"] for r in runs),
                     "process_cpu_seconds": statistics.median(r["process_cpu_seconds"] for r in runs),
                     "modules": runs[0]["modules"], "heavy_loaded": runs[0]["heavy_loaded"],
                     "import_ms_all": [round(r["import_ms"]) for r in runs]}
    out["import_ratio_baseline_over_current"] = out["baseline"]["import_ms"] / out["current"]["import_ms"]
    out["cpu_ratio_baseline_over_current"] = (out["baseline"]["process_cpu_seconds"]
                                              / out["current"]["process_cpu_seconds"])
    out["same_result"] = all(a["top1"] == b["top1"] and a["final_loss"] == b["final_loss"]
                             for a, b in zip(jobs["baseline"], jobs["current"]))
    return out
