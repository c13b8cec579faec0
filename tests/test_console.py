"""The console of a pipeline run is short (the logger plugin `vpeft`, vpeft.console): the plan, one line per
finished run, a progress line with an ETA, every failed job's rule, log path and message, and a closing
summary; third-party logs (mmengine's per-iteration lines, timm, torch warnings) go to the jobs' logs only."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

import pytest
import yaml
from snakemake_logger_plugin_vpeft.console import Console, format_duration, log_tail
from helpers.configs import smoke_config
from helpers.snake import job_counts, run_workflow

from vpeft.artifacts import read_trained_tensors
from vpeft.export import load_run
from vpeft.logs import eta, finished_run_line, tuned_line

ROOT = Path(__file__).resolve().parents[1]
RUN_LINE = re.compile(r"^done (?P<suite>\S+) / (?P<method>\S+) / (?P<task>\S+) \(seed (?P<seed>\d+)\): "
                      r"(?P<metric>[\w -]+) (?P<value>\d+\.\d\d)%, (?P<params>[\d,]+) trainable params, "
                      r"(?P<wall>\d+\.\d) s$")


def small_config(tmp_path: Path) -> Path:
    """One image suite (2 methods x 1 task, 1 epoch) and one dense suite (1 run, a few iterations)."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for backbone in config["backbones"].values():  # shipped checkpoints, from a run in another folder
        if str(backbone.get("checkpoint") or "").startswith("assets/"):
            backbone["checkpoint"] = str(ROOT / backbone["checkpoint"])
    mini = config["suites"]["vtab-mini"]
    mini.update(methods=["linear", "lora"], sizes={"train800": 12, "val200": 4, "test": 16},
                tasks={"digits": mini["tasks"]["digits"]})
    mini["training"].update(epochs=2, warmup_epochs=0, batch_size=8)
    ade = config["suites"]["ade-mini"]
    ade.update(methods=["lora"], sizes={"train800": 8, "val200": 4, "test": 8})
    ade["data"].update(max_iters=6, warmup_iters=2)
    config["default_suites"] = ["vtab-mini", "ade-mini"]
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_finished_run_line_and_eta():
    metrics = {"suite": "s", "method": "lora", "task": "t", "seed": 1, "metric": {"name": "top1", "value": 0.5625},
               "params": {"trainable": 8192}, "train": {"wall_seconds": 10.0}, "eval": {"wall_seconds": 2.25}}
    assert finished_run_line(metrics) == "done s / lora / t (seed 1): top-1 56.25%, 8,192 trainable params, 12.2 s"
    assert format_duration(3725) == "1h02m05s" and format_duration(65.4) == "1m05s"  # the console's copy
    assert eta(1, 4, 30.0) == "ETA 1m30s" and eta(4, 4, 30.0) == "ETA 0s" and eta(10, 100, 400.0) == "ETA 1h00m00s"


@pytest.mark.slow
def test_pipeline_console_shows_progress_and_one_line_per_run_only(tmp_path):
    result = run_workflow(tmp_path, small_config(tmp_path), "--cores", "2", timeout=1200)
    lines = (result.stdout + result.stderr).splitlines()
    (tmp_path / "console.txt").write_text("\n".join(lines))

    runs = sorted(tmp_path.glob("results/*/*/*/seed-*/metrics.json"))
    assert len(runs) == 3
    summaries = [RUN_LINE.match(line) for line in lines if line.startswith("done ")]
    assert all(summaries), [line for line in lines if line.startswith("done ")]
    by_run = {(m["suite"], m["method"], m["task"]): m for m in summaries}
    assert len(summaries) == len(by_run) == 3
    for path in runs:
        metrics = json.loads(path.read_text())
        line = by_run[(metrics["suite"], metrics["method"], metrics["task"])]
        assert int(line["seed"]) == metrics["seed"]
        assert float(line["value"]) == pytest.approx(100 * metrics["metric"]["value"], abs=0.005)
        assert int(line["params"].replace(",", "")) == metrics["params"]["trainable"]
        wall = metrics["train"]["wall_seconds"] + metrics["eval"]["wall_seconds"]
        assert float(line["wall"]) == pytest.approx(wall, abs=0.05)
        assert {"ade-mini": "mIoU", "vtab-mini": "top-1"}[metrics["suite"]] == line["metric"]

    console = "\n".join(lines)
    # our progress and summary are there, Snakemake's bookkeeping is not ...
    assert re.search(r"^\[\d+/\d+ jobs, \S+, ETA \S+\]$", console, re.M), console
    assert "vtab-mini: 2 runs ok, 0 failed; best by mean: " in console and "ade-mini: 1 runs ok, 0 failed" in console
    assert "report: reports/index.html" in console
    for bookkeeping in ("Select jobs to execute", "Finished jobid", "steps (", "Execute 1 jobs"):
        assert bookkeeping not in console, bookkeeping
    # ... third-party logs are not: they are in the jobs' logs
    for noise in ("mmengine", "Iter(train)", "requires_grad=False", "Warning", "epoch 1/2", "loss"):
        assert noise not in console, f"{noise!r} reached the console"
    dense_log = (tmp_path / "logs/train/ade-mini/lora/scenes/seed-42.log").read_text()
    assert "Iter(train)" in dense_log and "ETA" in dense_log  # mmengine's own lines, and ours with an ETA
    image_log = (tmp_path / "logs/train/vtab-mini/lora/digits/seed-42.log").read_text()
    assert re.search(r"epoch 1/2 .* ETA \d", image_log)

    # every run kept its trained tensors, and the image run rebuilds with its recorded accuracy
    for path in runs:
        meta = read_trained_tensors(path.with_name("trained.safetensors")).meta
        assert meta["fingerprint"] == json.loads(path.read_text())["config"]["fingerprint"]
    lora = tmp_path / "results/vtab-mini/lora/digits/seed-42"
    recorded = json.loads((lora / "metrics.json").read_text())["metric"]["value"]
    assert load_run(lora, base_dir=tmp_path).evaluate() == recorded

    jobs = sum(job_counts(console).values())
    assert len(lines) <= jobs + 20, f"{len(lines)} console lines for {jobs} jobs:\n{console[-3000:]}"


def record(event: str | None, level: int = 20, msg: str = "", **fields) -> logging.LogRecord:
    rec = logging.LogRecord("snakemake", level, __file__, 1, msg, None, None)
    rec.__dict__.update(fields, **({"event": event} if event else {}))
    return rec


def feed(records, **kwargs) -> list[str]:
    stream = io.StringIO()
    times = iter(range(0, 10_000, 30))  # 30 s per record
    console = Console(stream=stream, quiet=["rules", "host"], clock=lambda: next(times), **kwargs)
    for rec in records:
        console.handle(rec)
    console.close()
    return stream.getvalue().splitlines()


def test_a_failed_job_shows_its_rule_log_and_message(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("12:00 INFO vpeft: checking\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "    raise X\nvpeft.data.DataError: put the data at resources/data/x\n")
    lines = feed([record("job_info", jobid=3, rule_name="check_task_data", wildcards={"suite": "s", "task": "t"},
                         output=["resources/index/s/t.json"]),
                  record("job_error", 40, jobid=3, rule_name="check_task_data", log=[str(log)], rule_msg=None,
                         shellcmd=None)])
    assert lines[0] == "FAILED check_task_data (suite=s, task=t)"
    assert f"  log: {log}" in lines and "  | vpeft.data.DataError: put the data at resources/data/x" in lines
    assert "  | 12:00 INFO vpeft: checking" in lines and not any("File" in line for line in lines)  # no frames


def test_log_tail_without_a_traceback_is_the_last_lines(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("".join(f"line {i}\n" for i in range(40)))
    assert log_tail(log, 3) == ["line 37", "line 38", "line 39"]
    assert "not readable" in log_tail(tmp_path / "missing.log")[0]


def test_progress_eta_summary_and_no_bookkeeping(tmp_path):
    (tmp_path / "results/s").mkdir(parents=True)
    (tmp_path / "results/s/table.csv").write_text("method,mean,status\nlinear,50,ok\nlora,56.25,ok\nbad,99,failed\n")
    events = [record(None, msg="Select jobs to execute..."), record(None, msg="Execute 1 jobs...")]
    for jobid in range(10):
        rule = "train_run" if jobid < 4 else "report" if jobid == 9 else "check_task_data"
        events.append(record("job_info", jobid=jobid, rule_name=rule, wildcards={"suite": "s"} if jobid < 4 else {},
                             output=["reports/index.html"] if rule == "report" else []))
        events.append(record("job_finished", msg=f"Finished jobid: {jobid}", job_id=jobid))
        events.append(record("progress", done=jobid + 1, total=10))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        lines = feed(events)
    finally:
        os.chdir(cwd)
    progress = [line for line in lines if line.startswith("[")]
    assert progress and all(re.fullmatch(r"\[\d+/10 jobs, \S+, ETA \S+\]", line) for line in progress)
    assert len(progress) <= 9  # about every tenth of the jobs, never after the last
    assert "s: 4 runs ok, 0 failed; best by mean: lora (56.25)" in lines and "report: reports/index.html" in lines
    assert not any("Select jobs" in line or "Finished jobid" in line or "Execute" in line for line in lines)


def test_tuned_line_names_score_and_setting():
    result = {"suite": "s", "method": "lora", "task": "t", "protocol": {"eval_split": "val200"},
              "best": {"trial": 2, "value": 0.5625, "params": {"training.lr": 0.00312, "hparams.rank": 4}},
              "counts": {"finished": 4, "pruned": 1}}
    assert tuned_line(result) == ("tuned s / lora / t: best val200 top-1 56.25% (rank=4, lr=0.00312), "
                                  "trial 2 of 4 (1 pruned)")


@pytest.mark.slow
def test_a_run_without_its_data_says_on_the_console_what_to_do(tmp_path):
    """The first failure of every new user: a real suite without its data. The console (not only the job's
    log) names the failed rule and its log, and shows the message saying where to put the data."""
    result = run_workflow(tmp_path, smoke_config(tmp_path), "--cores", "1", "results/vtab/lora/", check=False,
                          timeout=600)
    console = result.stdout + result.stderr
    assert result.returncode != 0
    failed = re.search(r"^FAILED (\S+) .*\n  log: (\S+)$", console, re.M)
    assert failed, console[-3000:]
    log = tmp_path / failed.group(2)
    message = log_tail(log)[-1]
    assert "by hand" in message or "place it at" in message, message  # the where-to-put-it message ...
    assert f"  | {message}" in console  # ... on the console
    assert "CalledProcessError" not in console and "Select jobs" not in console
