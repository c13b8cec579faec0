"""Hyper-parameter search (vpeft.engine.tune, rule tune_method): search spaces, per-suite switch,
the report's sensitivity section, and one tiny search end to end through Snakemake (test images
unreadable during the trials, best val200 trial chosen, final run trained with it, a killed search
resumed without redoing its finished trials)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers.snake import run_workflow

from vpeft.config import (
    ConfigError,
    load_method_configs,
    method_search_space,
    resolve_suites,
    suite_tuning,
    validate_against_schema,
)
from vpeft.engine.tune import (
    TUNED_SCHEMA,
    TuningError,
    check_search_protocol,
    parse_space,
    with_tuned_settings,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "workflow" / "schemas"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]


@pytest.fixture(scope="module")
def shipped():
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    return config, resolve_suites(config), load_method_configs(ROOT / "config/methods", SCHEMAS / "method.schema.yaml")


# -- search spaces ------------------------------------------------------------------------------


def test_ranges_become_log_grids_and_lists_stay_choices():
    dims = {d.name: d for d in parse_space({
        "training": {"lr": {"low": 1e-4, "high": 1e-1, "points": 4}, "weight_decay": {"low": 1e-5, "high": 1e-1}},
        "hparams": {"rank": [2, 4, 8], "width": {"low": 2, "high": 32, "int": True, "points": 5}}})}
    assert dims["training.lr"].grid() == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    assert dims["training.weight_decay"].grid() == pytest.approx([1e-5, 1e-3, 1e-1])
    assert dims["hparams.rank"].grid() == [2, 4, 8]
    assert dims["hparams.width"].grid() == [2, 4, 8, 16, 32]


@pytest.mark.parametrize("space, message", [
    ({}, "empty"),
    ({"training": {"lr": {"low": 0.0, "high": 1.0}}}, "low > 0"),
    ({"training": {"lr": {"low": 1.0, "high": 0.1}}}, "low < high"),
    ({"hparams": {"rank": []}}, "empty list"),
    ({"optimizer": {"lr": [1]}}, "unknown section"),
])
def test_bad_search_spaces_are_refused(space, message):
    with pytest.raises(TuningError, match=message):
        parse_space(space)


def test_every_shipped_space_parses_and_names_real_hyper_parameters(shipped):
    config, suites, methods = shipped
    for method in suites["vtab-mini"]["methods"]:
        dims = parse_space(method_search_space(config, suites, methods, "vtab-mini-tuned", method))
        names = {d.name for d in dims}
        assert {"training.lr", "training.weight_decay"} <= names, method
    lora = {d.name: d for d in parse_space(method_search_space(config, suites, methods, "vtab", "lora"))}
    assert lora["hparams.rank"].grid() == [2, 4, 8, 16]


def test_a_method_tune_section_naming_an_unknown_hyper_parameter_is_refused(tmp_path):
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "lora.yaml").write_text("hparams: {rank: 8}\ntune:\n  hparams: {rnak: [2, 4]}\n")
    with pytest.raises(ConfigError, match="rnak"):
        load_method_configs(folder, SCHEMAS / "method.schema.yaml")


# -- the per-suite switch -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, False, "off", {"sampler": "off", "trials": 3}])
def test_tuning_off_is_the_default_and_adds_nothing(shipped, value):
    config, _, methods = shipped
    suite = dict(config["suites"]["vtab-mini"])
    if value is not None:
        suite["tuning"] = value
    suites = resolve_suites({**config, "suites": {**config["suites"], "vtab-mini": suite}})
    validate_against_schema({**config, "suites": {**config["suites"], "vtab-mini": suite}}, SCHEMAS / "config.schema.yaml")
    assert suite_tuning(config, suites, methods, "vtab-mini") is None


def test_shipped_config_tunes_only_the_demo_suite(shipped):
    config, suites, methods = shipped
    tuned = {name for name in suites if suite_tuning(config, suites, methods, name)}
    assert tuned == {"vtab-mini-tuned"} and "vtab-mini-tuned" not in config["default_suites"]
    settings = suite_tuning(config, suites, methods, "vtab-mini-tuned")
    assert settings["sampler"] == "optuna" and settings["trials"] == 4
    assert settings["methods"] == ["linear", "lora", "adapter"]


@pytest.mark.parametrize("tuning, message", [
    ({"sampler": "optuna", "methods": ["noah"]}, "search stage of its own"),
    ({"sampler": "optuna", "methods": ["ssf"]}, "not one of the suite's methods"),
])
def test_bad_tuning_settings_name_the_key(shipped, tuning, message):
    config, _, methods = shipped
    suites = resolve_suites({**config, "suites": {**config["suites"], "vtab-mini": {
        **config["suites"]["vtab-mini"], "methods": ["lora", "noah"], "tuning": tuning}}})
    with pytest.raises(ConfigError, match=message):
        suite_tuning(config, suites, methods, "vtab-mini")


def test_schema_refuses_an_unknown_sampler(shipped):
    config = shipped[0]
    bad = {**config, "suites": {**config["suites"], "vtab-mini": {**config["suites"]["vtab-mini"], "tuning": "random"}}}
    with pytest.raises(ConfigError, match="suites.vtab-mini.tuning"):
        validate_against_schema(bad, SCHEMAS / "config.schema.yaml")


def test_noah_is_left_to_its_own_search_when_a_suite_tunes_all(shipped):
    config, _, methods = shipped
    suites = resolve_suites({**config, "suites": {**config["suites"], "vtab-mini": {
        **config["suites"]["vtab-mini"], "methods": ["lora", "noah"], "tuning": "grid"}}})
    assert suite_tuning(config, suites, methods, "vtab-mini")["methods"] == ["lora"]


# -- protocol and hand-over -----------------------------------------------------------------------


def test_a_search_refuses_any_protocol_that_touches_test(shipped):
    config = shipped[0]
    check_search_protocol({"protocol": config["protocols"]["val"]})
    for name in ("vtab1k", "vpetl"):
        with pytest.raises(TuningError, match="test split"):
            check_search_protocol({"protocol": config["protocols"][name]})


def test_tuned_setting_is_laid_over_the_final_run(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"schema": TUNED_SCHEMA, "training": {"lr": 0.02}, "hparams": {"rank": 4}}))
    run = {"training": {"lr": 0.01, "epochs": 10}, "method_hparams": {"rank": 8, "alpha": 8}}
    out = with_tuned_settings(run, path)
    assert out["training"] == {"lr": 0.02, "epochs": 10} and out["method_hparams"] == {"rank": 4, "alpha": 8}
    path.write_text(json.dumps({"hparams": {"rank": 4}}))
    with pytest.raises(TuningError, match="not a search result"):
        with_tuned_settings(run, path)


# -- report section --------------------------------------------------------------------------------


def _fake_search(results: Path, suite: str, method: str, task: str, values: list[float], test: float,
                 fixed: float | None, base: str = "base") -> None:
    folder = results / suite / method / task
    folder.mkdir(parents=True)
    trials = [{"number": i, "state": "COMPLETE", "value": v, "params": {"training.lr": 10.0 ** -i}}
              for i, v in enumerate(values)] + [{"number": len(values), "state": "PRUNED", "value": None, "params": {}}]
    best = max(trials[:-1], key=lambda t: t["value"])
    (folder / "tuned.json").write_text(json.dumps({
        "schema": TUNED_SCHEMA, "suite": suite, "method": method, "task": task, "sampler": "optuna",
        "trials": trials, "best": {"trial": best["number"], "value": best["value"], "params": best["params"]},
        "training": {"lr": best["params"]["training.lr"]}, "hparams": {}, "base_training": {"lr": 0.01},
        "base_hparams": {}, "counts": {"finished": len(trials), "pruned": 1}}))
    for where, value in ((folder, test), (results / base / method / task, fixed)):
        if value is not None:
            (where / "seed-42").mkdir(parents=True, exist_ok=True)
            (where / "seed-42/metrics.json").write_text(json.dumps({"status": "ok", "metric": {"value": value}}))


def test_report_shows_spread_choice_and_tuned_next_to_fixed_test_accuracy(tmp_path):
    from vpeft.report.html import build_context, render_html
    from vpeft.report.tables import load_runs
    from vpeft.report.tuning import tuning_context

    results = tmp_path / "results"
    _fake_search(results, "t", "lora", "a", [0.5, 0.75, 0.625], test=0.8, fixed=0.7)
    _fake_search(results, "t", "lora", "b", [0.25, 0.5], test=0.6, fixed=0.65)
    _fake_search(results, "t", "linear", "a", [0.4, 0.4], test=0.5, fixed=None)
    tuned = sorted(results.glob("t/*/*/tuned.json"))
    context = tuning_context(tuned, {"t": {"title": "T", "base_suite": "base"}})
    rows = {r["method"]: r for r in context[0]["rows"]}
    assert rows["lora"]["val_min"] == "37.5" and rows["lora"]["val_best"] == "62.5"  # means of 50/25 and 75/50
    assert rows["lora"]["spread"] == "25.0" and rows["lora"]["spread_max"] == "25.0"
    assert (rows["lora"]["tuned_test"], rows["lora"]["fixed_test"], rows["lora"]["delta"]) == ("70.0", "67.5", "+2.5")
    assert rows["linear"]["fixed_test"] == "–" and rows["linear"]["delta"] == "–"  # no fixed run: no comparison
    assert rows["lora"]["trials"] == 7 and rows["lora"]["pruned"] == 2
    chosen = {(r["method"], r["task"]): r["chosen"] for r in context[0]["tasks"]}
    assert chosen[("lora", "a")] == "lr 0.1"

    html = render_html({**build_context(load_runs([]), {}), "tuning": context})
    section = html.split('<section id="tuning-t"', 1)[1].split("</section>", 1)[0]
    lora_row = section.split('<th scope="row" class="left">lora</th>', 1)[1].split("</tr>", 1)[0]
    cells = [c.split("</td>")[0] for c in lora_row.split("<td>")[1:]]
    assert cells == ["2", "7 (2)", "37.5", "50.0", "62.5", "25.0", "25.0", "70.0", "67.5", "+2.5"]
    assert "tuning-t" not in render_html(build_context(load_runs([]), {}))  # no search: no section


# -- end to end -------------------------------------------------------------------------------------


def _config(tmp_path: Path, trials: int) -> Path:
    """One task, LoRA only, 3 epochs, tiny splits; the tuned suite extends it (fixed-setting runs)."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    mini = config["suites"]["vtab-mini"]
    mini.update(methods=["lora"], sizes={"train800": 16, "val200": 8, "test": 8},
                tasks={"digits": mini["tasks"]["digits"]})
    mini["training"].update(epochs=3, warmup_epochs=0, batch_size=8)
    config["suites"]["vtab-mini-tuned"].update(methods=["lora"], tuning={"sampler": "optuna", "trials": trials})
    for backbone in config["backbones"].values():
        if str(backbone.get("checkpoint") or "").startswith("assets/"):
            backbone["checkpoint"] = str(ROOT / backbone["checkpoint"])
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _swap_bytes(files: list[Path], contents: dict[Path, bytes]) -> None:
    """Write new bytes keeping every file's mtime, so Snakemake sees no changed input."""
    for path in files:
        stat = path.stat()
        path.write_bytes(contents[path])
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _study_trials(journal: Path) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)


@pytest.mark.slow
def test_tiny_search_end_to_end_val_only_best_trial_used_and_resumed_after_a_kill(tmp_path):
    from vpeft.data.splits import DataError
    from vpeft.engine.train import RunConfig
    from vpeft.data.vtab import eval_dataset

    trials = 3
    config = _config(tmp_path, trials)
    suite, task_dir = "vtab-mini-tuned", tmp_path / "resources/data/vtab-mini/digits"
    tuned_file = tmp_path / f"results/{suite}/lora/digits/tuned.json"
    run_workflow(tmp_path, config, "--cores", "1", "resources/index/vtab-mini/digits.json")

    # Make every test image unreadable for the manifest check (its bytes no longer match), and prove it.
    test_images = sorted((task_dir / "images/test").iterdir())
    original = {p: p.read_bytes() for p in test_images}
    _swap_bytes(test_images, {p: b"not the checked image" for p in test_images})
    probe = RunConfig(suite=suite, task="digits", method="lora", seed=42, task_dir=str(task_dir), num_classes=10,
                      backbone={}, protocol={"train_split": "train800val200", "eval_split": "test"},
                      data={"index": str(tmp_path / "resources/index/vtab-mini/digits.json")})
    spec = type("Spec", (), {"input_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"})
    with pytest.raises(DataError):
        eval_dataset(probe, spec, None)[0]

    # Start the search, kill the whole Snakemake process group once a trial has finished training.
    # --nolock: Snakemake's own lock would outlive the kill (test_workflow covers `--unlock`)
    command = [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(config), "--cores", "1", "--nolock",
               str(tuned_file.relative_to(tmp_path))]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    trial_dir = tuned_file.parent / "tune/trials"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not list(trial_dir.glob("*/metrics.json")):
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not tuned_file.exists(), "the search finished before it could be killed"
    before = {t.number: t for t in _study_trials(tuned_file.parent / "tune/study.journal")}
    finished_before = {n: t for n, t in before.items() if t.state.name in ("COMPLETE", "PRUNED")}
    assert 1 <= len(finished_before) < trials

    rerun = subprocess.run([*command, "--rerun-incomplete"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    # The test images were unreadable all along, so no trial opened them; they are still the broken bytes.
    assert all(p.read_bytes() == b"not the checked image" for p in test_images)
    tuned = json.loads(tuned_file.read_text())
    assert tuned["protocol"] == {"name": "val", "train_split": "train800", "eval_split": "val200"}
    states = [t["state"] for t in tuned["trials"]]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == trials
    # resumed, not redone: the trials finished before the kill are the same trials, same timestamps
    for number, old in finished_before.items():
        new = tuned["trials"][number]
        assert (new["state"], new["value"], new["started"]) == (old.state.name, old.value,
                                                               old.datetime_start.isoformat())
    restarted = [t for t in tuned["trials"] if t["number"] not in finished_before]
    assert len([t for t in restarted if t["state"] in ("COMPLETE", "PRUNED")]) == trials - len(finished_before)
    # the chosen setting is the best val200 trial (the earliest of equal ones)
    complete = [t for t in tuned["trials"] if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: (t["value"], -t["number"]))
    assert tuned["best"]["trial"] == best["number"] and tuned["best"]["params"] == best["params"]
    assert tuned["training"]["lr"] == best["params"]["training.lr"]
    assert tuned["hparams"]["rank"] == best["params"]["hparams.rank"]

    # Restore the test images; the final run and the fixed-setting run train, the search does not rerun.
    _swap_bytes(test_images, original)
    stamp = tuned_file.stat().st_mtime_ns
    result = run_workflow(tmp_path, config, "--cores", "1", f"reports/tuning/{suite}.html")
    assert "rule tune_method" not in result.stdout + result.stderr
    assert tuned_file.stat().st_mtime_ns == stamp
    final = json.loads((tuned_file.parent / "seed-42/metrics.json").read_text())
    assert final["protocol"]["train_split"] == "train800val200" and final["eval"]["split"] == "test"
    assert final["config"]["training"]["lr"] == tuned["training"]["lr"]
    assert final["config"]["training"]["weight_decay"] == tuned["training"]["weight_decay"]
    assert final["config"]["method_hparams"]["rank"] == tuned["hparams"]["rank"]
    fixed = json.loads((tmp_path / "results/vtab-mini/lora/digits/seed-42/metrics.json").read_text())
    assert fixed["config"]["training"]["lr"] == 1.0e-2 and fixed["config"]["method_hparams"]["rank"] == 8

    html = (tmp_path / f"reports/tuning/{suite}.html").read_text()
    row = html.split(f'<section id="tuning-{suite}"', 1)[1].split('<th scope="row" class="left">lora</th>', 1)[1]
    cells = [c.split("</td>")[0] for c in row.split("</tr>", 1)[0].split("<td>")[1:]]
    assert cells[-3:] == [f"{100 * final['metric']['value']:.1f}", f"{100 * fixed['metric']['value']:.1f}",
                          f"{100 * (final['metric']['value'] - fixed['metric']['value']):+.1f}"]
