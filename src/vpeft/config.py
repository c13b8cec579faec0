"""Loading, validating and resolving the benchmark config into per-run settings.

The workflow (workflow/rules/common.smk) and the tests call these functions; nothing here imports
torch, so the Snakemake process stays light.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """The config is invalid; the message names the offending key."""


def did_you_mean(name: str, valid) -> str:
    """' (did you mean 'lora'?)' for a misspelled name, '' when nothing valid is close."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


@functools.lru_cache(maxsize=8)
def _schema_validator(schema_path: Path, stamp: tuple):
    """A validator per schema file, built once per process: parsing the schemas is most of a validation's
    cost, and the workflow validates every method's YAML at each Snakefile parse."""
    import jsonschema
    from referencing import Registry, Resource

    # Schemas in the same folder may $ref each other by file name.
    registry = Registry().with_resources(
        (p.name, Resource.from_contents(yaml.safe_load(p.read_text())))
        for p in schema_path.parent.glob("*.schema.yaml"))
    return jsonschema.Draft202012Validator(yaml.safe_load(schema_path.read_text()), registry=registry)


def coerce_command_line_strings(data: dict, schema_path: str | Path) -> list[str]:
    """Snakemake's `--config key='{a: 2, b: x}'` passes nested values as strings ('2'): each string the
    schema refuses but whose YAML reading (a number, a boolean) it accepts is replaced by that reading,
    in place. Returns the key paths changed."""
    schema_path = Path(schema_path).resolve()
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in schema_path.parent.glob("*.schema.yaml")))
    validator = _schema_validator(schema_path, stamp)
    changed = []
    for err in validator.iter_errors(data):
        path = list(err.absolute_path)
        if not path or not isinstance(err.instance, str):
            continue
        try:
            value = yaml.safe_load(err.instance)
        except yaml.YAMLError:
            continue
        if isinstance(value, (int, float, bool)) and _key_path(path) not in changed:
            parent = functools.reduce(lambda node, key: node[key], path[:-1], data)
            parent[path[-1]] = value
            changed.append(_key_path(path))
    return changed


def validate_against_schema(data: dict, schema_path: str | Path, what: str = "config") -> None:
    """Validate with JSON Schema; raise ConfigError naming the key path of the first (deepest) error."""
    schema_path = Path(schema_path).resolve()
    folder = schema_path.parent
    # keyed on the schemas' mtimes too, so an edited schema is read again
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.schema.yaml")))
    validator = _schema_validator(schema_path, stamp)
    errors = sorted(validator.iter_errors(data), key=lambda e: (-len(e.absolute_path), str(e.absolute_path)))
    if errors:
        err = errors[0]
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{what}: invalid value at '{_key_path(err.absolute_path)}': {err.message}{more}")


def deep_merge(base: dict, override: dict | None) -> dict:
    """Recursive dict merge; `override` wins, lists are replaced, `base` is not modified."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def resolve_suites(config: dict) -> dict[str, dict]:
    """Suites with `extends:` expanded (one level of inheritance is enough and stays readable)."""
    suites = config["suites"]
    resolved = {}
    for name, suite in suites.items():
        parent = suite.get("extends")
        if parent is None:
            resolved[name] = copy.deepcopy(suite)
            continue
        if parent not in suites:
            raise ConfigError(f"suites.{name}.extends: unknown suite '{parent}'; valid: {', '.join(sorted(suites))}")
        if "extends" in suites[parent]:
            raise ConfigError(f"suites.{name}.extends: '{parent}' itself extends another suite; chains are not allowed")
        merged = {k: v for k, v in deep_merge(suites[parent], suite).items() if k != "extends"}
        merged["data_suite"] = suites[parent].get("data_suite", parent)
        merged["base_suite"] = parent
        resolved[name] = merged
    for name, suite in resolved.items():
        suite.setdefault("data_suite", name)
    return {name: _complete_own_data(name, suite) for name, suite in resolved.items()}


def _complete_own_data(name: str, suite: dict) -> dict:
    """A suite of the user's own images (layouts imagefolder, csv): its task, classes and split sizes
    read from the folder (vpeft.data.owndata); other suites as they are."""
    from .data.owndata import LAYOUTS, complete_suite
    from .data.splits import DataError

    if suite.get("layout") not in LAYOUTS:
        return suite
    try:
        return complete_suite(name, suite)
    except DataError as err:
        raise ConfigError(str(err)) from None


def load_method_configs(methods_dir: str | Path, schema_path: str | Path | None = None) -> dict[str, dict]:
    """config/methods/<name>.yaml for every method, validated (schema, registry, typed hparams)."""
    from .methods import available_methods, get_method_class
    from .methods.base import MethodError

    registered = set(available_methods())
    out = {}
    for path in sorted(Path(methods_dir).glob("*.yaml")):
        name = path.stem
        data = load_yaml(path) or {}
        if schema_path:
            validate_against_schema(data, schema_path, what=str(path))
        if name not in registered:
            raise ConfigError(f"{path}: no method named '{name}' is registered; valid: {', '.join(sorted(registered))}")
        cls = get_method_class(name)
        for where, hparams in _all_hparams(data):
            try:
                cls.config_cls.from_dict(hparams, method=name)
            except MethodError as err:
                raise ConfigError(f"{path}: {where}: {err}") from None
        unknown = sorted(set(((data.get("tune") or {}).get("hparams") or {})) - set(cls.config_cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"{path}: tune.hparams: {unknown} are not hyper-parameters of '{name}'; "
                              f"valid: {', '.join(sorted(cls.config_cls.__dataclass_fields__))}")
        out[name] = data
    return out


def _all_hparams(method_yaml: dict):
    yield "hparams", method_yaml.get("hparams") or {}
    for suite, entry in (method_yaml.get("suites") or {}).items():
        base = deep_merge(method_yaml.get("hparams") or {}, entry.get("hparams"))
        yield f"suites.{suite}.hparams", base
        for task, t_entry in (entry.get("tasks") or {}).items():
            yield f"suites.{suite}.tasks.{task}.hparams", deep_merge(base, (t_entry or {}).get("hparams"))


def data_root(config: dict, suites: dict[str, dict], suite_name: str) -> str:
    """Folder holding the suite's task folders: generated ones under resources, external ones at `root`."""
    suite = suites[suite_name]
    if suite["source"] == "embedded":
        return str(Path(config["resources_dir"]) / "data" / suite["data_suite"])
    if not suite.get("root"):
        raise ConfigError(f"suites.{suite_name}.root: an external suite needs the folder of its data")
    return suite["root"]


def task_folder(config: dict, suites: dict[str, dict], suite_name: str, task: str) -> str:
    """A task's folder: <data root>/<task>, or the dataset folder itself for an own-data suite."""
    path = (suites[suite_name]["tasks"][task] or {}).get("path")
    return str(path) if path else str(Path(data_root(config, suites, suite_name)) / task)


def suite_methods(suite_name: str, suite: dict, method_configs: dict[str, dict]) -> list[str]:
    methods = suite.get("methods", "all")
    if methods == "all":
        from .methods.registry import in_table_order

        return in_table_order(method_configs)
    unknown = [m for m in methods if m not in method_configs]
    if unknown:
        hint = "".join(did_you_mean(m, method_configs) for m in unknown)
        raise ConfigError(f"suites.{suite_name}.methods: unknown method(s) {unknown}{hint}; "
                          f"valid: {', '.join(sorted(method_configs))}")
    return list(methods)


def job_resources(config: dict, suite: dict) -> dict[str, int]:
    """What a training job of `suite` asks for: its track's `job_resources`, then the suite's keys."""
    return {**config["job_resources"][suite["kind"]], **suite.get("job_resources", {})}


def check_known(kind: str, name: str, valid) -> None:
    """Raise a ConfigError listing the valid names when `name` is not one of them."""
    if name not in valid:
        raise ConfigError(f"unknown {kind} '{name}'{did_you_mean(name, valid)}; valid {kind}s: {', '.join(sorted(valid))}")


def _method_layers(m_yaml: dict, suite: dict, suite_name: str, task: str) -> tuple[dict, dict]:
    """The method config's entry for the suite and for the task in it. A suite that extends another
    inherits the method's settings for its parent, then its own."""
    m_suites = m_yaml.get("suites") or {}
    m_suite: dict = {}
    for name in (suite.get("base_suite"), suite_name):
        if name:
            m_suite = deep_merge(m_suite, m_suites.get(name) or {})
    return m_suite, (m_suite.get("tasks") or {}).get(task) or {}


#: `search:` of a searched method's config (NOAH): `released` trains the subnet the config gives for a
#: task (NOAH's released per-task subnets on vtab) and searches only tasks without one; `always`
#: searches every task, overriding a configured subnet.
SEARCH_MODES = ("released", "always")


def runs_search(suites: dict[str, dict], method_configs: dict[str, dict], suite_name: str, method: str,
                task: str) -> bool:
    """Whether the run of a searched method (`needs_search`) on this task trains a subnet found by the
    search stages (rules in search.smk) rather than the one its config gives."""
    from .methods import get_method_class

    if not get_method_class(method).needs_search:
        return False
    m_yaml = method_configs[method]
    m_suite, m_task = _method_layers(m_yaml, suites[suite_name], suite_name, task)
    mode = m_suite.get("search", m_yaml.get("search", "released"))
    if mode not in SEARCH_MODES:
        raise ConfigError(f"config/methods/{method}.yaml: search: {mode!r}; valid: {', '.join(SEARCH_MODES)}")
    return mode == "always" or not m_task.get("hparams")


def resolve_run(config: dict, suites: dict[str, dict], method_configs: dict[str, dict],
                suite_name: str, method: str, task: str, seed: int) -> dict:
    """The complete settings of one run, as `vpeft.engine.train.RunConfig` takes them."""
    check_known("suite", suite_name, suites)
    suite = suites[suite_name]
    check_known("method", method, suite_methods(suite_name, suite, method_configs))
    check_known("task", task, suite["tasks"])
    task_entry = suite["tasks"][task] or {}
    m_yaml = method_configs[method]
    m_suite, m_task = _method_layers(m_yaml, suite, suite_name, task)

    training = config["training"]
    for layer in (suite.get("training"), task_entry.get("training"), m_yaml.get("training"),
                  m_suite.get("training"), m_task.get("training")):
        training = deep_merge(training, layer)
    hparams = {}
    for layer in (m_yaml.get("hparams"), m_suite.get("hparams"), m_task.get("hparams")):
        hparams = deep_merge(hparams, layer)

    backbone_name = suite["backbone"]
    check_known("backbone", backbone_name, config["backbones"])
    backbone = dict(config["backbones"][backbone_name], name=backbone_name)
    protocol_name = suite["protocol"]
    check_known("protocol", protocol_name, config["protocols"])
    protocol = dict(config["protocols"][protocol_name], name=protocol_name)
    protocol.update((protocol.pop("layouts", None) or {}).get(suite["layout"], {}))  # e.g. FGVC's split names
    if protocol.get("augmentation") == "none":  # the protocol, not a task's V-PETL flag, decides
        training = dict(training, train_aug=False)
    return {
        "suite": suite_name,
        "task": task,
        "method": method,
        "seed": int(seed),
        "task_dir": task_folder(config, suites, suite_name, task),
        "num_classes": int(task_entry["num_classes"]),
        "backbone": backbone,
        "protocol": protocol,
        "method_hparams": hparams,
        "training": training,
        "pretrained": bool(backbone.get("checkpoint")),
        "layout": suite["layout"],
        "data": dict(suite.get("data") or {}),
    }


TUNING_SAMPLERS = ("grid", "optuna")


def suite_tuning(config: dict, suites: dict[str, dict], method_configs: dict[str, dict], suite_name: str) -> dict | None:
    """The suite's hyper-parameter search settings (`suites.<s>.tuning`), or None when tuning is off.

    `tuning: off | grid | optuna` (a bare YAML `off` reads as false) or a mapping
    `{sampler, trials, methods, pruning, report_every, seed, space}`; unset keys come from the
    top-level `tuning:` section. Methods with a search stage of their own (NOAH) are never tuned.
    """
    from .methods import get_method_class

    suite = suites[suite_name]
    raw = suite.get("tuning", "off")
    if raw is None or raw is False:
        raw = "off"
    if isinstance(raw, str):
        raw = {"sampler": raw}
    sampler = raw.get("sampler", "off")
    if sampler in ("off", False, None):
        return None
    where = f"suites.{suite_name}.tuning"
    if sampler not in TUNING_SAMPLERS:
        raise ConfigError(f"{where}.sampler: unknown sampler '{sampler}'; valid: off, {', '.join(TUNING_SAMPLERS)}")
    if suite["kind"] == "dense":
        raise ConfigError(f"{where}: tuning runs through the image/video engine; the dense track has no val split")
    defaults = config.get("tuning") or {}
    all_methods = suite_methods(suite_name, suite, method_configs)
    methods = raw.get("methods", "all")
    if methods == "all":
        methods = [m for m in all_methods if not get_method_class(m).needs_search]
    else:
        for m in methods:
            if m not in all_methods:
                raise ConfigError(f"{where}.methods: '{m}' is not one of the suite's methods ({', '.join(all_methods)})")
            if get_method_class(m).needs_search:
                raise ConfigError(f"{where}.methods: '{m}' has a search stage of its own and is not tuned")
    seeds = config["seeds"]
    return {"sampler": sampler, "methods": list(methods),
            "trials": int(raw.get("trials", defaults.get("trials", 20))),
            "pruning": bool(raw.get("pruning", defaults.get("pruning", True))),
            "report_every": int(raw.get("report_every", defaults.get("report_every", 1))),
            # the search's own seed; its trials train with the suite's first seed
            "seed": int(raw.get("seed", seeds[0])), "run_seed": int(seeds[0])}


def method_search_space(config: dict, suites: dict[str, dict], method_configs: dict[str, dict], suite_name: str,
                        method: str) -> dict:
    """Search space of one method on one suite (later wins): top-level `tuning.space` < the method's
    `tune:` (its own size hyper-parameter, or other ranges) < `suites.<s>.tuning.space`.
    A dimension set to null is removed."""
    space = deep_merge((config.get("tuning") or {}).get("space") or {}, method_configs[method].get("tune"))
    raw = suites[suite_name].get("tuning")
    if isinstance(raw, dict):
        space = deep_merge(space, raw.get("space"))
    return {section: {k: v for k, v in (entries or {}).items() if v is not None}
            for section, entries in space.items()}


#: Splits that hold other splits' images (VTAB's train800val200 = train800 + val200).
CONTAINED_SPLITS = {"train800val200": ("train800", "val200")}


def check_run_settings(config: dict, suites: dict[str, dict], method_configs: dict[str, dict]) -> None:
    """Refuse, when the workflow loads, settings that are accepted one by one but cannot be meant: a
    protocol that trains on the split it evaluates (or on a test split), a warm-up longer than the
    schedule, a dense recipe whose milestones or warm-up do not fit it. The error names the key."""
    for name, protocol in (config.get("protocols") or {}).items():
        for layout, override in [(None, protocol), *((protocol.get("layouts") or {}).items())]:
            merged = {**protocol, **(override or {})}
            where = f"protocols.{name}" + (f".layouts.{layout}" if layout else "")
            _check_protocol_splits(merged, where)
    for suite_name, suite in suites.items():
        methods = suite_methods(suite_name, suite, method_configs)
        dense = suite.get("kind") == "dense"
        for task in suite.get("tasks") or {}:
            for method in methods:
                if dense:
                    from .dense.recipes import check_schedule
                    from .dense.settings import resolve_dense_run

                    run = resolve_dense_run(config, suites, method_configs, suite_name, method, task, 0)
                    _check_protocol_splits(run["protocol"], f"protocols.{suite['protocol']}")
                    check_schedule(run)
                    continue
                training = resolve_run(config, suites, method_configs, suite_name, method, task, 0)["training"]
                epochs, warmup = training.get("epochs"), training.get("warmup_epochs")
                if isinstance(epochs, int) and isinstance(warmup, int) and warmup > epochs:
                    where = _training_key(config, suite, suite_name, task, method_configs[method], method,
                                          "warmup_epochs")
                    raise ConfigError(f"{where}: warmup_epochs {warmup} is longer than the {epochs} epochs of "
                                      f"{suite_name}/{method}/{task}; the learning rate would never reach lr")


def _check_protocol_splits(protocol: dict, where: str) -> None:
    train, held_out = protocol.get("train_split"), protocol.get("eval_split")
    if train is None or held_out is None:
        return
    if train == held_out or held_out in CONTAINED_SPLITS.get(train, ()):
        raise ConfigError(f"{where}.train_split: {train!r} holds the evaluation split {held_out!r}: the score "
                          f"would be measured on training images; train on a split without it")
    if str(train).startswith("test"):
        raise ConfigError(f"{where}.train_split: {train!r} is a test split; nothing may be trained on it")


def _training_key(config, suite, suite_name, task, m_yaml, method, key) -> str:
    """The key path of the layer that set `training.<key>` last (as resolve_run merges them)."""
    m_suite, m_task = _method_layers(m_yaml, suite, suite_name, task)
    task_entry = (suite.get("tasks") or {}).get(task) or {}
    layers = [("training", config.get("training")), (f"suites.{suite_name}.training", suite.get("training")),
              (f"suites.{suite_name}.tasks.{task}.training", task_entry.get("training")),
              (f"config/methods/{method}.yaml: training", m_yaml.get("training")),
              (f"config/methods/{method}.yaml: suites.{suite_name}.training", m_suite.get("training")),
              (f"config/methods/{method}.yaml: suites.{suite_name}.tasks.{task}.training", m_task.get("training"))]
    return next(f"{path}.{key}" for path, layer in reversed(layers) if key in (layer or {}))


def suite_fewshot(suite_name: str, suite: dict) -> dict | None:
    """The suite's few-shot protocol `{shots, seeds}` (`suites.<s>.fewshot`; NOAH's defaults for unset
    keys), or None for a suite trained on its full training split."""
    from .data.fewshot import DEFAULT_SEEDS, DEFAULT_SHOTS

    raw = suite.get("fewshot")
    if raw is None:
        return None
    where = f"suites.{suite_name}.fewshot"
    if suite["kind"] != "image":
        raise ConfigError(f"{where}: the few-shot protocol samples image suites' training splits; '{suite_name}' "
                          f"is a {suite['kind']} suite")
    if suite.get("tuning") not in (None, False, "off"):
        raise ConfigError(f"{where}: a few-shot suite cannot also be tuned (suites.{suite_name}.tuning): the "
                          f"search would need a validation split drawn from the k shots")
    return {"shots": [int(k) for k in raw.get("shots", DEFAULT_SHOTS)],
            "seeds": [int(s) for s in raw.get("seeds", DEFAULT_SEEDS)]}


#: WiSE-FT's mixing coefficients (Mai et al., CVPR 2025: alpha in 0, 0.25, 0.5, 0.75, 1).
DEFAULT_WISE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def suite_shift(suites: dict[str, dict], suite_name: str) -> dict | None:
    """The suite's distribution-shift targets and WiSE-FT settings, or None without `shift_targets`:
    `{targets: {name: {suite, title, classes}}, wise: bool, alphas: [...]}`. Every target suite must be an
    image suite holding each of the source's tasks."""
    suite = suites[suite_name]
    raw = suite.get("shift_targets")
    wise_raw = suite.get("wise")
    if not raw:
        if wise_raw:
            raise ConfigError(f"suites.{suite_name}.wise: WiSE-FT is evaluated by the shift stage; give the suite "
                              f"shift_targets (the source test split is always evaluated too)")
        return None
    targets = {}
    for name, entry in raw.items():
        where = f"suites.{suite_name}.shift_targets.{name}"
        target = entry["suite"]
        if target not in suites:
            raise ConfigError(f"{where}.suite: unknown suite '{target}'; valid: {', '.join(sorted(suites))}")
        if suites[target]["kind"] != "image" or suite["kind"] != "image":
            raise ConfigError(f"{where}: shift targets are image suites evaluated with an image suite's model")
        missing = [t for t in suite["tasks"] if t not in suites[target]["tasks"]]
        if missing:
            raise ConfigError(f"{where}: suite '{target}' has no task {missing[0]!r} (it needs every task of "
                              f"'{suite_name}': {', '.join(suite['tasks'])})")
        targets[name] = {"suite": target, "title": entry.get("title", suites[target].get("title", target)),
                         "classes": entry.get("classes")}
    wise = wise_raw is not False
    alphas = (wise_raw or {}).get("alphas", DEFAULT_WISE_ALPHAS) if isinstance(wise_raw, dict) else DEFAULT_WISE_ALPHAS
    return {"targets": targets, "wise": wise, "alphas": [float(a) for a in alphas]}
