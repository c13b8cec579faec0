"""The full benchmark as `snakemake --profile slurm -n` plans it: every real suite of the three tracks,
its runs counted from the config, and the resources Snakemake itself resolves for each job."""

from __future__ import annotations

import os
import subprocess
from collections import Counter

import pytest
from helpers.snake import ROOT, SNAKEMAKE, job_blocks

from vpeft.config import deep_merge, load_method_configs, load_yaml, resolve_suites, suite_methods

TRAINING_RULES = {"train_run", "train_dense_run", "select_parameters", "noah_supernet", "noah_search"}
ALL_REAL_SUITES = {"vtab", "fgvc", "ssv2", "ssv2-vswin", "hmdb51", "hmdb51-vswin", "coco", "voc", "ade20k"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster_plan():
    # `--profile slurm`: the top-level link to profiles/slurm, as the README spells it
    assert os.path.islink(ROOT / "slurm") and (ROOT / "slurm").resolve() == (ROOT / "profiles/slurm").resolve()
    # without the workflow profile's `quiet: rules`, so the dry run prints every job's block
    result = subprocess.run([*SNAKEMAKE, "--profile", "slurm", "--workflow-profile", "none", "-n",
                             "--set-resources", "train_run:runtime=123"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    config = deep_merge(load_yaml(ROOT / "config/config.yaml"), load_yaml(ROOT / "config/benchmark.yaml"))
    return job_blocks(result.stdout), config


def test_the_full_plan_runs_every_method_of_every_real_suite(cluster_plan):
    jobs, config = cluster_plan
    assert set(config["default_suites"]) == ALL_REAL_SUITES  # k400 is opt-in
    suites = resolve_suites(config)
    methods = load_method_configs(ROOT / "config/methods")
    planned = Counter((j["wildcards"]["suite"], j["wildcards"]["method"]) for j in jobs
                      if j["rule"] in ("train_run", "train_dense_run"))
    expected = Counter({(s, m): len(suites[s]["tasks"]) * len(config["seeds"])
                        for s in config["default_suites"] for m in suite_methods(s, suites[s], methods)})
    assert planned == expected
    # every suite reaches the report through its table
    tables = {j["wildcards"]["suite"] for j in jobs if j["rule"] == "suite_table"}
    assert tables == ALL_REAL_SUITES
    # the dense suites train with the dense rule, the others with train_run
    dense = {j["wildcards"]["suite"] for j in jobs if j["rule"] == "train_dense_run"}
    assert dense == {"coco", "voc", "ade20k"}


def test_every_training_job_asks_for_a_gpu_and_its_suites_resources(cluster_plan):
    jobs, config = cluster_plan
    suites = resolve_suites(config)
    training = [j for j in jobs if j["rule"] in TRAINING_RULES]
    assert {j["rule"] for j in training} == TRAINING_RULES
    for job in training:
        suite = suites[job["wildcards"]["suite"]]
        wanted = {**config["job_resources"][suite["kind"]], **suite.get("job_resources", {})}
        res = job["resources"]
        assert int(res["gpu"]) >= 1, job
        assert int(res["gpu"]) == wanted["gpus"] and int(res["cpus_per_task"]) == wanted["cpus"], job
        assert int(res["mem_mb"]) == wanted["mem_mb"], job
        # the command line wins over the config (--set-resources train_run:runtime=123)
        assert int(res["runtime"]) == (123 if job["rule"] == "train_run" else wanted["runtime"]), job
    # data preparation that decodes every video runs on many CPUs
    prepare = [j for j in jobs if j["rule"] == "prepare_video_task"]
    assert prepare and all(int(j["resources"]["cpus_per_task"]) >= 8 for j in prepare)
