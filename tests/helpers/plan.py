"""The jobs a config's default target needs, per rule, counted from the config (the suites, their
methods, tasks and seeds) with the library's resolution of suites and method lists, for comparison
with the job table of `snakemake -n` in a folder where nothing was made yet."""

from __future__ import annotations

from collections import Counter

from vpeft.config import load_method_configs, resolve_suites, runs_search, suite_methods
from vpeft.methods import get_method_class

from .snake import ROOT

GENERATE = {"image": "generate_embedded_task", "video": "generate_embedded_video_task",
            "dense": "generate_embedded_dense_task"}
CHECK = {"image": "check_task_data", "video": "check_video_task", "dense": "check_dense_task"}


def expected_jobs(config: dict) -> dict[str, int]:
    """{rule: jobs} of the default target `all` in a fresh folder. Data rules run once per data suite
    and task (a control suite such as vtab-mini-scratch reads its parent's data); training once per
    method, task and seed; the selection and NOAH's two search stages before the runs of the methods
    that need them; a shipped checkpoint (assets/) needs no job, a downloaded one a download."""
    suites = resolve_suites(config)
    methods = load_method_configs(ROOT / "config/methods")
    jobs: Counter[str] = Counter(all=1, report=1)
    data_tasks, checkpoints = set(), set()
    for name in config["default_suites"]:
        suite = suites[name]
        jobs["suite_table"] += 1
        for task in suite["tasks"]:
            data_tasks.add((suite["data_suite"], task, suite["kind"], suite["source"]))
        checkpoint = config["backbones"][suite["backbone"]].get("checkpoint")
        if checkpoint and not (ROOT / checkpoint).exists():
            checkpoints.add(checkpoint)
        for method in suite_methods(name, suite, methods):
            runs = len(suite["tasks"]) * len(config["seeds"])
            jobs["train_dense_run" if suite["kind"] == "dense" else "train_run"] += runs
            if get_method_class(method).needs_selection:
                jobs["select_parameters"] += runs
            searched = sum(runs_search(suites, methods, name, method, task) for task in suite["tasks"])
            if searched:  # NOAH: the tasks without a released subnet
                jobs["noah_supernet"] += searched * len(config["seeds"])
                jobs["noah_search"] += searched * len(config["seeds"])
    for _, _, kind, source in data_tasks:
        jobs[CHECK[kind]] += 1
        if source == "embedded":
            jobs[GENERATE[kind]] += 1
        elif source == "download":
            jobs["prepare_task_folder"] += 1
    if checkpoints:
        jobs["download_backbone"] = len(checkpoints)
    return dict(jobs)
