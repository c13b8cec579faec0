"""Config validation names the bad key; resolution follows the documented precedence."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from vpeft.config import (
    ConfigError,
    check_run_settings,
    load_method_configs,
    load_yaml,
    resolve_run,
    resolve_suites,
    validate_against_schema,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
METHOD_SCHEMA = ROOT / "workflow/schemas/method.schema.yaml"


@pytest.fixture(scope="module")
def config():
    return load_yaml(ROOT / "config/config.yaml")


@pytest.fixture(scope="module")
def methods():
    return load_method_configs(ROOT / "config/methods", METHOD_SCHEMA)


def test_shipped_config_is_valid(config, methods):
    validate_against_schema(config, SCHEMA)
    from vpeft.methods import available_methods

    assert set(methods) == set(available_methods()), "every registered method has one config/methods/<name>.yaml"
    assert len(methods) >= 25


@pytest.mark.parametrize("path, value, message", [
    (("suites", "vtab-mini", "training", "epochs"), "ten", r"'suites\.vtab-mini\.training\.epochs'.*not of type 'integer'"),
    (("training", "lr"), -1, r"'training\.lr'"),
    (("suites", "vtab", "tasks", "dtd", "group"), "nature", r"'suites\.vtab\.tasks\.dtd\.group'"),
    (("backbones", "vit-demo", "sha256"), "xyz", r"'backbones\.vit-demo\.sha256'"),
    (("training", "learning_rate"), 0.1, r"'training'.*learning_rate"),
    (("distributed", "processes"), 0, r"'distributed\.processes'"),
    (("distributed", "backend"), "mpi", r"'distributed\.backend'"),
    (("training", "num_workers"), "many", r"'training\.num_workers'"),
])
def test_schema_errors_name_the_key(config, path, value, message):
    bad = copy.deepcopy(config)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        validate_against_schema(bad, SCHEMA)


def test_precedence_global_suite_task_method(config, methods):
    suites = resolve_suites(config)
    run = resolve_run(config, suites, methods, "vtab", "lora", "cifar", 1)
    assert run["training"]["lr"] == 5e-3  # lora.yaml suites.vtab.tasks.cifar beats the task's shared-list value
    assert resolve_run(config, suites, methods, "vtab", "adapter", "cifar", 1)["training"]["lr"] == 0.01
    # the real suite trains with V-PETL's recipe: its per-task train_aug flag holds (on for dtd, off for cifar)
    assert resolve_run(config, suites, methods, "vtab", "adapter", "dtd", 1)["training"]["train_aug"] is True
    assert resolve_run(config, suites, methods, "vtab", "adapter", "cifar", 1)["training"]["train_aug"] is False
    # vtab1k is "direct resize, no augmentation": the protocol overrides the task's V-PETL train_aug flag
    plain = copy.deepcopy(config)
    plain["suites"]["vtab"]["protocol"] = "vtab1k"
    assert resolve_run(plain, resolve_suites(plain), methods, "vtab", "adapter", "dtd", 1)["training"]["train_aug"] is False
    mini = resolve_run(config, suites, methods, "vtab-mini", "vpt-shallow", "digits", 1)
    assert mini["method_hparams"] == {"num_tokens": 8}
    assert mini["training"]["epochs"] == config["suites"]["vtab-mini"]["training"]["epochs"]
    assert mini["task_dir"] == "resources/data/vtab-mini/digits"


def test_extended_suite_shares_data_and_changes_backbone(config, methods):
    suites = resolve_suites(config)
    scratch = resolve_run(config, suites, methods, "vtab-mini-scratch", "linear", "digits", 1)
    assert scratch["task_dir"] == "resources/data/vtab-mini/digits"
    assert scratch["backbone"]["name"] == "vit-demo-random" and scratch["pretrained"] is False
    # the control is trained exactly like the pretrained probe: method settings of the parent apply
    pretrained = resolve_run(config, suites, methods, "vtab-mini", "linear", "digits", 1)
    assert scratch["training"] == pretrained["training"]


@pytest.mark.parametrize("suite, method, task, message", [
    ("vtab-mini", "loraa", "digits", r"unknown method 'loraa' \(did you mean 'lora'\?\); valid methods: adapter, bitfit"),
    ("vtab-mini", "lora", "cifar", "unknown task 'cifar'; valid tasks: clevr_count, digits"),
    ("vtab-maxi", "lora", "digits", r"unknown suite 'vtab-maxi' \(did you mean 'vtab-mini'.*\?\); valid suites: .*vtab, vtab-mini"),
])
def test_unknown_names_list_the_valid_ones(config, methods, suite, method, task, message):
    with pytest.raises(ConfigError, match=message):
        resolve_run(config, resolve_suites(config), methods, suite, method, task, 1)


def test_method_yaml_with_unknown_hparam_is_rejected(tmp_path):
    (tmp_path / "lora.yaml").write_text("hparams: {rank: 8, rnak: 2}\n")
    with pytest.raises(ConfigError, match=r"lora\.yaml: hparams: unknown hyper-parameter\(s\) \['rnak'\]"):
        load_method_configs(tmp_path, METHOD_SCHEMA)


def test_method_yaml_for_unregistered_method_is_rejected(tmp_path):
    (tmp_path / "magic.yaml").write_text("hparams: {}\n")
    with pytest.raises(ConfigError, match="no method named 'magic' is registered; valid: adapter"):
        load_method_configs(tmp_path, METHOD_SCHEMA)


def test_shipped_settings_pass_the_load_time_checks(config, methods):
    check_run_settings(config, resolve_suites(config), methods)


@pytest.mark.parametrize("path, value, message", [
    (("protocols", "vtab1k", "train_split"), "test", r"^protocols\.vtab1k\.train_split: 'test' holds the evaluation"),
    (("protocols", "val", "train_split"), "train800val200",
     r"^protocols\.val\.train_split: 'train800val200' holds the evaluation split 'val200'"),
    (("protocols", "val", "eval_split"), "train800", r"^protocols\.val\.train_split: 'train800' holds the evaluation"),
    (("protocols", "vpetl", "layouts", "fgvc", "train_split"), "test",
     r"^protocols\.vpetl\.layouts\.fgvc\.train_split: 'test'"),
    (("training", "warmup_epochs"), 101, r"^training\.warmup_epochs: warmup_epochs 101 is longer than the 100 epochs"),
    (("suites", "vtab-mini", "training", "warmup_epochs"), 50,
     r"^suites\.vtab-mini\.training\.warmup_epochs: warmup_epochs 50 is longer than the \d+ epochs"),
    (("suites", "coco-mini", "data", "milestones"), [99], r"^suites\.coco-mini\.data\.milestones: \[99\] must lie inside"),
    (("suites", "ade-mini", "data", "warmup_iters"), 10_000, r"^suites\.ade-mini\.data\.warmup_iters: 10000 must be below"),
])
def test_settings_that_cannot_be_meant_are_refused_when_the_workflow_loads(config, methods, path, value, message):
    bad = copy.deepcopy(config)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    validate_against_schema(bad, SCHEMA)  # each value is valid on its own
    with pytest.raises(ConfigError, match=message):
        check_run_settings(bad, resolve_suites(bad), methods)
