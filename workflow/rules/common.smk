# Config validation and the input functions every rule uses. The logic lives in the library
# (vpeft.config); this file only wires it to Snakemake.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from vpeft.methods import get_method_class  # noqa: E402
from vpeft.config import (  # noqa: E402
    ConfigError,
    data_root,
    load_method_configs,
    resolve_run,
    resolve_suites,
    suite_methods,
    validate_against_schema,
)

SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"
ENV = "../../envs/vpeft.yaml"

try:
    validate_against_schema(config, SCHEMAS / "config.schema.yaml")
    SUITES = resolve_suites(config)
    METHOD_CONFIGS = load_method_configs(Path(workflow.basedir) / "config" / "methods",
                                         SCHEMAS / "method.schema.yaml")
    for _suite in config["default_suites"]:
        if _suite not in SUITES:
            raise ConfigError(f"default_suites: unknown suite '{_suite}'; valid: {', '.join(sorted(SUITES))}")
    SUITE_METHODS = {name: suite_methods(name, suite, METHOD_CONFIGS) for name, suite in SUITES.items()}
except ConfigError as _err:
    raise WorkflowError(f"invalid configuration: {_err}") from None

RES = config["resources_dir"]
SEEDS = config["seeds"]
# Methods whose runs need a data-dependent selection stage first (rule select_parameters).
SELECTION_METHODS = sorted(m for m in METHOD_CONFIGS if get_method_class(m).needs_selection)
# Methods whose final run retrains a searched configuration (rules in search.smk).
SEARCHED_METHODS = sorted(m for m in METHOD_CONFIGS if get_method_class(m).needs_search)


def _alternatives(names):
    # "(?!)" matches nothing: a constraint over an empty list must not match every name
    return "|".join(sorted(names, key=len, reverse=True)) or "(?!)"


wildcard_constraints:
    suite=_alternatives(SUITES),
    method=_alternatives(METHOD_CONFIGS),
    task="[a-z0-9_]+",
    seed=r"\d+",


# -- data --------------------------------------------------------------------------------------
def embedded_data_suites():
    return sorted({s["data_suite"] for s in SUITES.values() if s["source"] == "embedded"})


def get_generation_params(wildcards):
    suite = SUITES[wildcards.suite]
    return {"task": wildcards.task, "seed": suite.get("seed", 0), "sizes": suite["sizes"],
            "image_size": suite.get("image_size", 32)}


def get_task_data_input(wildcards):
    """Embedded suites need their generated folder; external suites have nothing to build."""
    suite = SUITES[wildcards.suite]
    if suite["source"] == "embedded":
        return [f"{data_root(config, SUITES, wildcards.suite)}/{wildcards.task}"]
    return []


def get_task_check_params(wildcards):
    suite = SUITES[wildcards.suite]
    return {"task_dir": f"{data_root(config, SUITES, wildcards.suite)}/{wildcards.task}",
            "num_classes": suite["tasks"][wildcards.task]["num_classes"],
            "source": suite["source"], "suite": wildcards.suite, "task": wildcards.task}


def get_task_index(wildcards):
    data_suite = SUITES[wildcards.suite]["data_suite"]
    return f"{RES}/index/{data_suite}/{wildcards.task}.json"


# -- backbones -----------------------------------------------------------------------------------
def downloadable_checkpoints():
    return {b["checkpoint"]: dict(b, name=n) for n, b in config["backbones"].items()
            if b.get("checkpoint") and b["checkpoint"].startswith(f"{RES}/")}


def get_backbone_checkpoint(wildcards):
    backbone = config["backbones"][SUITES[wildcards.suite]["backbone"]]
    return [backbone["checkpoint"]] if backbone.get("checkpoint") else []


def get_download_params(wildcards):
    path = f"{RES}/backbones/{wildcards.filename}"
    entry = downloadable_checkpoints().get(path)
    if entry is None:
        raise WorkflowError(f"no backbone in the config has checkpoint {path}")
    return {"name": entry["name"], "url": entry.get("url"), "sha256": entry.get("sha256")}


# -- runs ----------------------------------------------------------------------------------------
def get_run_config(wildcards):
    try:
        return resolve_run(config, SUITES, METHOD_CONFIGS, wildcards.suite, wildcards.method,
                           wildcards.task, int(wildcards.seed))
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


def get_search_run_config(wildcards):
    """The run's settings under the `val` protocol, for search stages that must not see the test split."""
    run = get_run_config(wildcards)
    return {**run, "protocol": {**config["protocols"]["val"], "name": "val"}}


def get_stage_inputs(wildcards):
    """Earlier stages a run reads: the cached selection of data-dependent methods, NOAH's searched subnet."""
    folder = f"results/{wildcards.suite}/{wildcards.method}/{wildcards.task}/seed-{wildcards.seed}"
    if wildcards.method in SELECTION_METHODS:
        return {"selection": f"{folder}/selection.safetensors"}
    if wildcards.method in SEARCHED_METHODS:
        return {"subnet": f"{folder}/search/subnet.json"}
    return {}


def run_path(suite, method, task, seed):
    return f"results/{suite}/{method}/{task}/seed-{seed}/metrics.json"


def get_method_runs(wildcards):
    suite = SUITES[wildcards.suite]
    if wildcards.method not in SUITE_METHODS[wildcards.suite]:
        raise WorkflowError(f"method '{wildcards.method}' is not part of suite '{wildcards.suite}'; "
                            f"its methods: {', '.join(SUITE_METHODS[wildcards.suite])}")
    return [run_path(wildcards.suite, wildcards.method, t, s) for t in suite["tasks"] for s in SEEDS]


def suite_runs(name):
    return [run_path(name, m, t, s) for m in SUITE_METHODS[name] for t in SUITES[name]["tasks"] for s in SEEDS]


def get_suite_runs(wildcards):
    return suite_runs(wildcards.suite)


def get_report_runs(wildcards):
    return [run for name in config["default_suites"] for run in suite_runs(name)]


def get_suite_report_info(wildcards):
    return suite_report_info(wildcards.suite)


def suite_report_info(name):
    suite = SUITES[name]
    backbone = config["backbones"][suite["backbone"]]
    return {"title": suite.get("title", name), "kind": suite["kind"], "protocol": suite["protocol"],
            "backbone": f"{suite['backbone']} ({backbone['arch']})", "methods": SUITE_METHODS[name],
            "tasks": list(suite["tasks"]), "groups": {t: e["group"] for t, e in suite["tasks"].items()},
            "published": suite.get("published"), "data_suite": suite["data_suite"], "notes": [],
            "families": method_families(SUITE_METHODS[name])}


def method_families(methods):
    """Family, mergeability and reference of each method, for the report's grouped table."""
    out = {}
    for method in methods:
        cls = get_method_class(method)
        out[method] = {"family": cls.category, "mergeable": cls.mergeable, "paper": cls.paper}
    return out


def get_final_output():
    return ["reports/index.html"]


def unknown_target_pattern():
    """Regex for results/ paths that name an unknown suite, method or task (and nothing else), so the
    catch-all rule never competes with the real ones."""
    known = "|".join(
        f"{name}/(?:(?:{_alternatives(SUITE_METHODS[name])})"
        f"(?:/(?:{_alternatives(list(suite['tasks']) + ['summary.json'])})(?:/.*)?)?|table\\.csv)"
        for name, suite in SUITES.items())
    known = f"(?:{known})$"
    return f"(?!{known}).+"


def explain_unknown_target(wildcards):
    """Input function of the catch-all rule: a results/ path naming an unknown suite, method or task
    becomes an error listing the valid names. Known names pass (the real rule wins by ruleorder)."""
    parts = Path(wildcards.path).parts
    suite = parts[0]
    if suite not in SUITES:
        raise WorkflowError(f"unknown suite '{suite}' in results/{wildcards.path}; valid suites: "
                            f"{', '.join(sorted(SUITES))}")
    if len(parts) > 1 and parts[1] not in SUITE_METHODS[suite] and parts[1] != "table.csv":
        raise WorkflowError(f"unknown method '{parts[1]}' for suite '{suite}'; valid methods: "
                            f"{', '.join(SUITE_METHODS[suite])}")
    if len(parts) > 2 and parts[2] not in SUITES[suite]["tasks"] and parts[2] != "summary.json":
        raise WorkflowError(f"unknown task '{parts[2]}' in suite '{suite}'; valid tasks: "
                            f"{', '.join(SUITES[suite]['tasks'])}")
    raise WorkflowError(f"no rule builds results/{wildcards.path}")


def report_suites():
    return {s: suite_report_info(s) for s in config["default_suites"]}


def build_report_after_failure():
    """`onerror`: when the default target failed (e.g. under --keep-going), still write the report,
    with every missing or failed run marked and its error shown."""
    targets = set(workflow.dag_settings.targets or [])
    if targets and not targets & {"all", "reports/index.html"}:
        return
    from vpeft.report.build import build_report

    build_report(get_report_runs(None), report_suites(), "reports/index.html")
    print("reports/index.html rebuilt: failed and missing runs are marked in it", file=sys.stderr)
