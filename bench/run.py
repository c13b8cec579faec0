"""V-PEFT Bench speed benchmark: prints ratios measured side by side in one run on one machine, and
writes them (with provenance) to a JSON file. See bench/README.md.

    python bench/run.py                      # default sizes: ~25 min on a 2-core CPU (demo: ~14 of them)
    python bench/run.py --only lora,merge    # some sections
    python bench/run.py --only demo --update # re-measure one section, keep the others in the JSON
    python bench/run.py --arch vit_base_patch16_224 --img-size 224 --device cuda --precision bf16
    python bench/run.py --only vtab1k-gpu,concurrency --device cuda   # whole VTAB-1k runs on a GPU
    python bench/run.py --only input --device cuda   # DataLoader workers vs the ViT-B/16 step: cpus_per_task
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import torch
from common import REPO

SECTIONS = ("lora", "cache", "merge", "methods", "vitb", "input", "imports", "vtab1k-gpu", "concurrency", "demo")
GOALS = {
    "lora_over_peft": "<= 0.9 (never > 1.0)",
    "linear_cache_speedup": ">= 20",
    "merged_over_plain": "<= 1.02",
    "side_tuning_memory_below_lora": "all",
    "default_run_seconds": "<= 900",
    "default_run_target_seconds": "<= 720",
    "default_run_speedup": ">= 1.5x",
    "lora_overhead_over_peft": "<= 0.5",
    "vtab1k_run_seconds": "<= 60 (H200-class GPU)",
    "vtab1k_mfu": ">= 40 % (ViT-B/16 step)",
    "image_benchmark_gpu_hours": "<= 8",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"), help="JSON output file")
    p.add_argument("--update", action="store_true",
                   help="keep the other sections of an existing --out file (each section records its commit)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1, as each workflow training job; 0: torch's default)")
    g = p.add_argument_group("model of the lora / merge / methods sections")
    g.add_argument("--arch", default="vit_small_patch16_224", help="timm architecture (random init)")
    g.add_argument("--img-size", type=int, default=112)
    g.add_argument("--batch", type=int, default=16, help="training batch of the lora section")
    g.add_argument("--rank", type=int, default=8, help="LoRA rank (ours and peft's)")
    g.add_argument("--rounds", type=int, default=9, help="timed repetitions per variant (median)")
    g.add_argument("--merge-batch", type=int, default=8, help="inference batch of the merge section")
    g.add_argument("--method-batch", type=int, default=8, help="batch of the methods section")
    g.add_argument("--method-steps", type=int, default=2, help="timed steps per method (after one warm-up)")
    g.add_argument("--methods", default="", help="comma-separated methods (default: all registered)")
    g = p.add_argument_group("cache section (vtab1k protocol, vit-demo, generated task)")
    g.add_argument("--cache-train-images", type=int, default=200, help="1000 = VTAB-1k's train800val200")
    g.add_argument("--cache-test-images", type=int, default=200)
    g.add_argument("--cache-epochs", type=int, default=100, help="100 = the vtab1k protocol's epochs")
    g = p.add_argument_group("imports section (a training job's import time, now vs a baseline commit)")
    g.add_argument("--import-rounds", type=int, default=5, help="jobs per variant (median)")
    g.add_argument("--import-baseline", default="f2693f9", help="commit before the import-time work")
    g = p.add_argument_group("vtab1k-gpu section (whole VTAB-1k runs, one method per family)")
    g.add_argument("--vtab-size", choices=("auto", "gpu", "cpu"), default="auto",
                   help="gpu: ViT-B/16 224 px, 1000 train images, 100 epochs; cpu: tiny (auto: by --device)")
    g.add_argument("--vtab-methods", default="", help="comma-separated subset of the family methods")
    g.add_argument("--vtab-test-images", type=int, default=0, help="0: 21750 (SUN397's test split) at gpu size")
    g.add_argument("--vtab-epochs", type=int, default=0, help="0: 100 at gpu size")
    g.add_argument("--vtab-precision", choices=("auto", "fp32", "bf16"), default="auto")
    g.add_argument("--peak-tflops", type=float, default=0.0, help="the device's dense bf16 peak (0: look it up)")
    g = p.add_argument_group("concurrency section (K runs at once on one device)")
    g.add_argument("--concurrency-k", default="1,2,4")
    g.add_argument("--concurrency-runs", type=int, default=4, help="runs per K")
    g = p.add_argument_group("ViT-B/16 step")
    g.add_argument("--vitb-batch", type=int, default=0, help="0: 4 on CPU, 128 on GPU")
    g.add_argument("--vitb-steps", type=int, default=3)
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the ViT-B/16 step")
    g = p.add_argument_group("demo section (the default run at HEAD and at a baseline commit, side by side)")
    g.add_argument("--demo-baseline", default="7ad9f45", help="commit to compare with (before issue #25's speed work)")
    g.add_argument("--demo-mode", choices=("together", "sequential"), default="together",
                   help="together: both runs at once (same load); sequential: baseline, then HEAD")
    g.add_argument("--demo-reference", default="",
                   help="folder of reference suite tables (<suite>.csv) the HEAD run's tables must equal")
    g.add_argument("--demo-cores", default="all", help="snakemake --cores of each run")
    g = p.add_argument_group("input section (DataLoader workers against the ViT-B/16 step; ~60 s on a CPU)")
    g.add_argument("--input-seconds", type=float, default=5.0, help="timed seconds per measurement")
    g.add_argument("--input-images", type=int, default=48, help="generated JPEGs")
    g.add_argument("--input-videos", type=int, default=8, help="generated mp4s")
    g.add_argument("--input-batch", type=int, default=8, help="image batch (clips: a quarter of it)")
    return p.parse_args(argv)


def summary(results: dict) -> list[tuple[str, str, str, str]]:
    """(measure, value, goal, met) rows."""
    rows = []
    if "lora" in results:
        r = results["lora"]["ratio_ours_over_peft"]
        rows.append(("LoRA train step, ours / peft", _spread(r), GOALS["lora_over_peft"],
                     "yes" if r["median"] <= 0.9 else ("partly (<= 1.0)" if r["median"] <= 1.0 else "no")))
        rows.append(("  no-adapter floor / peft (best possible)", _spread(results["lora"]["ratio_floor_over_peft"]),
                     "-", "-"))
        over = lora_overhead(results["lora"])
        rows.append(("  overhead above the floor: ours, peft", f"{over['ours']:+.1%}, {over['peft']:+.1%}", "-", "-"))
        rows.append(("  our overhead / peft's overhead", f"{over['ratio']:.2f}", GOALS["lora_overhead_over_peft"],
                     "yes" if over["ratio"] <= 0.5 else "no"))
    if "cache" in results:
        for name, m in results["cache"]["methods"].items():
            goal = GOALS["linear_cache_speedup"] if name == "linear" else "-"
            met = ("yes" if m["speedup_train_wall"] >= 20 else "no") if name == "linear" else "-"
            rows.append((f"{name}: uncached / cached, training (incl. cache build)", f"{m['speedup_train_wall']:.1f}x",
                         goal, met))
            rows.append((f"{name}: uncached / cached, whole run CPU time", f"{m['speedup_run_cpu']:.1f}x", "-", "-"))
            rows.append((f"{name}: uncached / cached, whole run wall time", f"{m['speedup_run_wall']:.1f}x", "-", "-"))
            rows.append((f"{name}: identical metric and loss history", str(m["identical_metric_and_loss_history"]),
                         "True", "yes" if m["identical_metric_and_loss_history"] else "no"))
    if "merge" in results:
        worst = results["merge"].get("worst_merged_over_plain", float("nan"))
        noise = results["merge"].get("worst_noise_floor", float("nan"))
        met = "yes" if worst <= 1.02 else (f"within noise (+-{noise:.3f})" if worst <= 1 + noise else "no")
        rows.append(("merged / plain inference (worst method)", f"{worst:.3f}", GOALS["merged_over_plain"], met))
        rows.append(("  identical copy / plain (noise floor, worst)", f"+-{noise:.3f}", "-", "-"))
        for name, m in results["merge"]["methods"].items():
            if "error" not in m:
                rows.append((f"  {name}: merged / plain; unmerged / merged",
                             f"{m['merged_over_plain']['median']:.3f}; {m['unmerged_over_merged']['median']:.3f}",
                             "-", "-"))
    if "methods" in results:
        check = results["methods"]["side_tuning_vs_lora"]
        # the per-run measurement (vpeft.efficiency); saved activations are recorded on a CPU only
        for key, label in (("saved_activations_below_lora", "side-tuning saved activations < LoRA (exact)"),
                           ("train_memory_below_lora", "side-tuning training memory < LoRA (per-run measure)")):
            shown = {k: v[key] for k, v in check.items() if key in v}
            if not shown:
                continue
            ok = all(shown.values())
            rows.append((label, ", ".join(f"{k}: {v}" for k, v in shown.items()),
                         GOALS["side_tuning_memory_below_lora"], "yes" if ok else "no"))
    if "vitb" in results:
        v = results["vitb"]
        mfu = f", MFU {v['mfu']:.1%}" if v["mfu"] is not None else ", MFU n/a (no GPU peak known)"
        value = f"{v['images_per_second']:.2f} img/s, {v['achieved_tflops'] * 1000:.0f} GFLOP/s{mfu}"
        rows.append(("ViT-B/16 full-FT step", value, "-", "-"))
    if "input" in results:
        i = results["input"]
        for kind, unit in (("images", "img"), ("clips", "clips")):
            r = i[kind]
            rates = ", ".join(f"{w}: {v['per_second_per_worker']:.1f}" for w, v in r["by_workers"].items())
            rows.append((f"input: {kind}/s per DataLoader worker (by workers)", f"{rates} (scaling {r['scaling']:.2f})",
                         "-", "-"))
            rows.append((f"  ViT-B/16 step {unit}/s / one worker's",
                         f"{r['step_per_second']:.1f} / {r['per_second_per_worker']:.1f} = "
                         f"{r['step_over_one_worker']:.2f}: {r['workers_to_feed_step']} worker(s) per "
                         f"{i.get('step', {}).get('device', 'device')} process", "-", "-"))
    if "imports" in results:
        i = results["imports"]
        rows.append((f"training job imports, baseline {i['baseline_commit'][:7]} / now",
                     f"{i['baseline']['import_ms']:.0f} / {i['current']['import_ms']:.0f} ms = "
                     f"{i['import_ratio_baseline_over_current']:.2f}x", "-", "-"))
        rows.append(("  whole job CPU time, baseline / now", f"{i['cpu_ratio_baseline_over_current']:.2f}x", "-", "-"))
        rows.append(("  same result; heavy modules now", f"{i['same_result']}; {i['current']['heavy_loaded'] or 'none'}",
                     "True; none", "yes" if i["same_result"] and not i["current"]["heavy_loaded"] else "no"))
    if "vtab1k-gpu" in results:
        v = results["vtab1k-gpu"]
        gpu = v["size"] == "gpu"
        for method, r in v["runs"].items():
            mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
            rows.append((f"VTAB-1k run ({v['size']} size, {v['device_name']}): {method}",
                         f"{r['wall_seconds']:.1f} s, {r['train_images_per_second']:.0f} img/s{mfu}, "
                         f"{r['train_memory_mb']:.0f} MiB", GOALS["vtab1k_run_seconds"] if gpu else "-",
                         ("yes" if r["wall_seconds"] <= 60 else "no") if gpu else "n/a (CPU size)"))
        b = v["full_image_benchmark"]
        if b:
            rows.append((f"VTAB-1k x {b['methods']} methods x 1 seed ({b['runs']} runs), device-hours",
                         f"{b['gpu_hours']:.2f} h", GOALS["image_benchmark_gpu_hours"] if gpu else "-",
                         ("yes" if b["gpu_hours"] <= 8 else "no") if gpu else "n/a (CPU size)"))
    if "concurrency" in results:
        c = results["concurrency"]
        value = ", ".join(f"K={k}: {e['runs_per_hour']:.0f}/h ({e['speedup_over_k1']:.2f}x)" for k, e in c["k"].items())
        rows.append((f"concurrent runs on one {c['device']} ({c['size']} size)", value, "-", "-"))
    if "demo" in results:
        d = results["demo"]
        rows.append((f"default `snakemake --cores {d['cores']}` from nothing ({d['jobs']} jobs)",
                     f"{d['wall_seconds'] / 60:.1f} min ({d['cpu_seconds'] / 60:.1f} CPU-min)",
                     GOALS["default_run_seconds"] + " s", "yes" if d["wall_seconds"] <= d["budget_seconds"] else "no"))
        rows.append(("  with margin for slower machines", f"{d['wall_seconds']:.0f} s", GOALS["default_run_target_seconds"]
                     + " s", "yes" if d["wall_seconds"] <= 720 else "no"))
        if "baseline" in d:
            b = d["baseline"]
            load = d.get("load_average_at_start", [None])[0]
            rows.append((f"  baseline {b['commit'][:7]} / HEAD, wall ({d['mode']}"
                         + (f", load {load:.0f} on {d.get('cpu_count')} CPUs)" if load is not None else ")"),
                         f"{b['wall_seconds']:.0f} / {d['wall_seconds']:.0f} s = {d['wall_ratio_baseline_over_head']:.2f}x",
                         GOALS["default_run_speedup"], "yes" if d["wall_ratio_baseline_over_head"] >= 1.5 else "no"))
            rows.append((f"  baseline {b['commit'][:7]} / HEAD, CPU of the process trees",
                         f"{b['cpu_seconds']:.0f} / {d['cpu_seconds']:.0f} s = {d['cpu_ratio_baseline_over_head']:.2f}x",
                         GOALS["default_run_speedup"], "yes" if d["cpu_ratio_baseline_over_head"] >= 1.5 else "no"))
            rows.append(("  suite tables identical to the baseline's (same machine)", str(d["tables_identical"]), "True",
                         "yes" if d["tables_identical"] else "no"))
            if d.get("reference"):
                differ = ", ".join(d.get("reference_differences") or []) or "-"
                rows.append((f"  ... and to {Path(d['reference']).name} (differ: {differ})",
                             str(d["identical_to_reference"]), "True", "yes" if d["identical_to_reference"] else "no"))
    return rows


def lora_overhead(lora: dict) -> dict:
    """Time above the no-adapter floor, ours and peft's (medians of the per-round values), and ours /
    peft's: what a LoRA implementation adds to the step it cannot avoid."""
    import statistics

    kind = "cpu" if str(lora.get("device", "cpu")).startswith("cpu") else "wall"
    rounds = {k: v["rounds"][kind] for k, v in lora["seconds_per_step"].items()}
    ours = statistics.median(o / f - 1 for o, f in zip(rounds["ours"], rounds["floor"]))
    peft = statistics.median(p / f - 1 for p, f in zip(rounds["peft"], rounds["floor"]))
    return {"ours": ours, "peft": peft, "ratio": ours / peft if peft > 0 else float("nan")}


def _spread(r: dict) -> str:
    return f"{r['median']:.3f} [{r['q1']:.3f}, {r['q3']:.3f}]"


def print_methods(results: dict) -> None:
    rows = results["methods"]["methods"]
    measure = "img/CPU-s" if results["methods"]["device"] == "cpu" else "img/s"
    print(f"\n{'method':14s} {'category':18s} {measure:>9s} {'vs full':>8s} {'train MiB':>9s} {'vs full':>8s} "
          f"{'saved-act MiB':>13s} {'vs full':>8s}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:14s} error: {r['error'][:90]}")
            continue
        print(f"{name:14s} {r['category']:18s} {r['images_per_second']:9.1f} {r.get('speed_vs_full', 1):8.2f} "
              f"{r['train_memory_mb']:9.1f} {r.get('memory_vs_full', 1):8.2f} {r.get('saved_activations_mb') or 0:13.1f} "
              f"{r.get('saved_activations_vs_full', 1):8.2f}")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the method workers): on a loaded machine
    it tells what the wall time would be on a quiet one (between CPU / threads and CPU)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    results: dict = {}
    timings: dict = {}
    cpu: dict = {}
    for section in only:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        print(f"[{section}] ...", flush=True)
        if section == "lora":
            import lora_vs_peft
            results[section] = lora_vs_peft.run(args.arch, args.img_size, args.batch, args.rank, args.rounds,
                                                args.device)
        elif section == "cache":
            import cache_speedup
            results[section] = cache_speedup.run(args.cache_train_images, args.cache_test_images,
                                                 args.cache_epochs, threads)
        elif section == "merge":
            import merged_inference
            results[section] = merged_inference.run(args.arch, args.img_size, args.merge_batch, args.rounds,
                                                    args.device)
        elif section == "methods":
            import method_costs
            methods = [m.strip() for m in args.methods.split(",") if m.strip()] or None
            results[section] = method_costs.run(args.arch, args.img_size, args.method_batch, args.method_steps, threads,
                                                args.device, methods)
        elif section == "demo":
            import default_run
            results[section] = default_run.run(cores=args.demo_cores, baseline=args.demo_baseline,
                                               mode=args.demo_mode, reference=args.demo_reference or None)
        elif section == "imports":
            import import_cost
            results[section] = import_cost.run(args.import_rounds, args.import_baseline)
        elif section == "vtab1k-gpu":
            import vtab1k_run
            results[section] = vtab1k_run.run(
                args.device, size=None if args.vtab_size == "auto" else args.vtab_size,
                methods=[m.strip() for m in args.vtab_methods.split(",") if m.strip()] or None,
                test_images=args.vtab_test_images or None, epochs=args.vtab_epochs or None,
                precision=args.vtab_precision, peak=args.peak_tflops or None,
                threads=threads)
        elif section == "concurrency":
            import concurrency
            results[section] = concurrency.run(args.device, ks=tuple(int(k) for k in args.concurrency_k.split(",")),
                                               runs=args.concurrency_runs)
        elif section == "vitb":
            import vitb_step
            batch = args.vitb_batch or (128 if args.device.startswith("cuda") else 4)
            results[section] = vitb_step.run(batch, args.vitb_steps, args.precision, args.compile, args.device)
        elif section == "input":
            import input_pipeline
            step = results.get("vitb")
            if step is None:  # the step rate on this machine (on a CPU: the smallest measurement)
                import vitb_step
                gpu = args.device.startswith("cuda")
                step = vitb_step.run(args.vitb_batch or (128 if gpu else 2), args.vitb_steps if gpu else 1,
                                     args.precision, args.compile, args.device)
            results[section] = input_pipeline.run(step["images_per_second"], seconds=args.input_seconds,
                                                  images=args.input_images, videos=args.input_videos,
                                                  batch=args.input_batch)
            results[section]["step"] = {k: step[k] for k in ("batch", "precision", "device", "device_name",
                                                             "images_per_second")}
        timings[section] = round(time.perf_counter() - start, 1)
        cpu[section] = round(_cpu_seconds() - cpu_start, 1)
        print(f"[{section}] {timings[section]:.0f} s wall, {cpu[section]:.0f} s CPU", flush=True)

    from vpeft.io import atomic_write_json
    from vpeft.provenance import provenance

    here = provenance(threads)
    section_provenance = {s: {"git_commit": here.get("git_commit"), "git_dirty": here.get("git_dirty"),
                              "created": here.get("created")} for s in results}
    out = Path(args.out)
    if args.update and out.is_file():
        import json

        previous = json.loads(out.read_text())
        kept = {s: v for s, v in previous.get("results", {}).items() if s not in results}
        for s in kept:
            timings.setdefault(s, previous.get("section_seconds", {}).get(s))
            cpu.setdefault(s, previous.get("section_cpu_seconds", {}).get(s))
            section_provenance[s] = previous.get("section_provenance", {}).get(s) or {
                k: previous.get("provenance", {}).get(k) for k in ("git_commit", "git_dirty", "created")}
        results = {**kept, **results}
        results = {s: results[s] for s in SECTIONS if s in results}

    if "methods" in results:
        print_methods(results)
    print(f"\n{'measure':52s} {'value':34s} {'goal':22s} met")
    for measure, value, goal, met in summary(results):
        print(f"{measure:52s} {value:34s} {goal:22s} {met}")

    record = {"schema": "vpeft.bench/1", "args": vars(args), "section_seconds": timings,
              "section_cpu_seconds": cpu, "results": results,
              "summary": [dict(zip(("measure", "value", "goal", "met"), row)) for row in summary(results)],
              "provenance": here, "section_provenance": section_provenance}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, record)
    print(f"\nwritten: {out}")
    if out.resolve() == (REPO / "bench/results/latest.json").resolve():  # the committed record: its docs page too
        from vpeft.report.speed import speed_markdown

        (REPO / "docs/speed.md").write_text(speed_markdown(out))
        print(f"written: {REPO / 'docs/speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
