# Evaluation protocols beyond a task's own splits (README "Few-shot protocol", "Distribution shift and
# WiSE-FT"); a suite without `fewshot` / `shift_targets` adds nothing to the DAG.
#
#   fewshot_split          checked index -> <resources>/index/fewshot/<suite>/<task>/shots-K-seed-S.json
#                          (K images per class of the protocol's training split, + the eval split as is)
#   train_fewshot_run      that index -> results/<suite>/<method>/<task>/shots-K/seed-S/metrics.json
#   render_shift_target    an embedded task re-rendered (style, class subset) = a shift target's data
#   evaluate_shift         a finished run -> shift.json beside its metrics.json: source and target top-1,
#                          and the WiSE-FT curve (alpha grid) for plain-architecture final models
#   protocol_report        reports/protocols/<suite>.html: the suite's few-shot / shift sections
from vpeft.data.layouts import manifest_splits  # noqa: E402
from vpeft.data.synthetic.shift_mini import kept_classes  # noqa: E402

FEWSHOT_SUITES = sorted(n for n in SUITES if SUITE_FEWSHOT.get(n))
SHIFT_SUITES = sorted(n for n in SUITES if SUITE_SHIFT.get(n))
RENDERED_SUITES = sorted(n for n, s in SUITES.items() if s.get("render"))


def _check_protocol_config():
    """Fail at load time, naming the key, for what these protocols cannot run."""
    for name in FEWSHOT_SUITES:
        for method in SUITE_METHODS[name]:
            if any(runs_search(SUITES, METHOD_CONFIGS, name, method, t) for t in SUITES[name]["tasks"]):
                raise WorkflowError(f"invalid configuration: suites.{name}.methods: '{method}' searches its "
                                    f"configuration on val200, which a few-shot suite does not have; remove it")
    for name in RENDERED_SUITES:
        render = SUITES[name]["render"]
        source = SUITES.get(render["from"])
        if source is None or source["source"] != "embedded" or source.get("render"):
            raise WorkflowError(f"invalid configuration: suites.{name}.render.from: '{render['from']}' must be a "
                                f"generated embedded suite")
        for task, entry in SUITES[name]["tasks"].items():
            if task not in source["tasks"]:
                raise WorkflowError(f"invalid configuration: suites.{name}.tasks.{task}: suite '{render['from']}' "
                                    f"has no such task to render")
            kept = len(kept_classes(source["tasks"][task]["num_classes"], render.get("classes", "all")))
            if entry["num_classes"] != kept:
                raise WorkflowError(f"invalid configuration: suites.{name}.tasks.{task}.num_classes: "
                                    f"{entry['num_classes']}, but rendering {render.get('classes', 'all')} classes of "
                                    f"'{render['from']}' keeps {kept}")


_check_protocol_config()


# -- few-shot ------------------------------------------------------------------------------------
def fewshot_index_path(suite, task, shots, seed):
    return f"{RES}/index/fewshot/{suite}/{task}/shots-{shots}-seed-{seed}.json"


def fewshot_run_path(suite, method, task, shots, seed):
    return f"results/{suite}/{method}/{task}/shots-{shots}/seed-{seed}/metrics.json"


def fewshot_runs(name, methods):
    settings = SUITE_FEWSHOT[name]
    return [fewshot_run_path(name, m, t, k, s) for m in methods for t in SUITES[name]["tasks"]
            for k in settings["shots"] for s in settings["seeds"]]


def get_fewshot_split_params(wildcards):
    run = resolve_run(config, SUITES, METHOD_CONFIGS, wildcards.suite, SUITE_METHODS[wildcards.suite][0],
                      wildcards.task, int(wildcards.seed))
    layout, protocol = SUITES[wildcards.suite]["layout"], run["protocol"]
    return {"train_splits": manifest_splits(layout, protocol["train_split"]),
            "eval_splits": manifest_splits(layout, protocol["eval_split"]),
            "shots": int(wildcards.shots), "seed": int(wildcards.seed)}


def get_fewshot_index(wildcards):
    return fewshot_index_path(wildcards.suite, wildcards.task, wildcards.shots, wildcards.seed)


def get_fewshot_run_config(wildcards):
    run = get_run_config(wildcards)
    run["data"] = {**run["data"], "index": get_fewshot_index(wildcards)}
    run["protocol"] = {**run["protocol"], "fewshot": {"shots": int(wildcards.shots), "seed": int(wildcards.seed)}}
    return run


rule fewshot_split:
    input:
        get_task_index,
    output:
        index=f"{RES}/index/fewshot/{{suite}}/{{task}}/shots-{{shots}}-seed-{{seed}}.json",
        manifest=f"{RES}/index/fewshot/{{suite}}/{{task}}/shots-{{shots}}-seed-{{seed}}.manifest.csv",
    params:
        spec=get_fewshot_split_params,
    log:
        "logs/fewshot/{suite}/{task}/shots-{shots}-seed-{seed}.log",
    wildcard_constraints:
        suite=_alternatives(FEWSHOT_SUITES),
        shots=r"\d+",
    conda:
        ENV
    script:
        "../scripts/fewshot_split.py"


rule train_fewshot_run:
    input:
        data=get_fewshot_index,
        checkpoint=get_backbone_checkpoint,
    output:
        metrics="results/{suite}/{method}/{task}/shots-{shots}/seed-{seed}/metrics.json",
    params:
        run=get_fewshot_run_config,
    log:
        "logs/train/{suite}/{method}/{task}/shots-{shots}/seed-{seed}.log",
    wildcard_constraints:
        suite=_alternatives(FEWSHOT_SUITES),
        shots=r"\d+",
    threads: get_training_threads
    resources:
        **TRAINING_RESOURCES,
    conda:
        ENV
    script:
        "../scripts/train.py"


# -- distribution shift and WiSE-FT ------------------------------------------------------------
def get_render_input(wildcards):
    source = SUITES[SUITES[wildcards.suite]["render"]["from"]]
    return f"{data_root(config, SUITES, source['data_suite'])}/{wildcards.task}"


def get_render_params(wildcards):
    suite = SUITES[wildcards.suite]
    source = SUITES[suite["render"]["from"]]
    return {"style": suite["render"]["style"], "classes": suite["render"].get("classes", "all"),
            "seed": int(source.get("seed", 0)), "num_classes": source["tasks"][wildcards.task]["num_classes"]}


rule render_shift_target:
    input:
        get_render_input,
    output:
        directory(f"{RES}/data/{{suite}}/{{task}}"),
    params:
        spec=get_render_params,
    log:
        "logs/data/render/{suite}/{task}.log",
    wildcard_constraints:
        suite=_alternatives(RENDERED_SUITES),
    conda:
        ENV
    script:
        "../scripts/render_shift_target.py"


def shift_targets(suite, task):
    """{target: {suite, index, layout, num_classes, class_map}} of one source task."""
    out = {}
    for name, target in SUITE_SHIFT[suite]["targets"].items():
        tsuite = SUITES[target["suite"]]
        classes = target.get("classes")
        if classes:
            classes = classes.format(task=task, data=f"{data_root(config, SUITES, target['suite'])}/{task}")
        out[name] = {"suite": target["suite"], "index": f"{RES}/index/{tsuite['data_suite']}/{task}.json",
                     "layout": tsuite["layout"], "num_classes": tsuite["tasks"][task]["num_classes"],
                     "class_map": classes}
    return out


def get_shift_inputs(wildcards):
    folder = f"results/{wildcards.suite}/{wildcards.method}/{wildcards.task}/{wildcards.run}"
    return {"run": f"{folder}/metrics.json",
            "targets": [t["index"] for t in shift_targets(wildcards.suite, wildcards.task).values()]}


def get_shift_params(wildcards):
    settings = SUITE_SHIFT[wildcards.suite]
    return {"targets": shift_targets(wildcards.suite, wildcards.task), "wise": settings["wise"],
            "alphas": settings["alphas"]}


def shift_paths(name):
    return [path.removesuffix("metrics.json") + "shift.json" for path in suite_runs(name)] if SUITE_SHIFT.get(name) else []


rule evaluate_shift:
    input:
        unpack(get_shift_inputs),
        checkpoint=get_backbone_checkpoint,
    output:
        "results/{suite}/{method}/{task}/{run}/shift.json",
    params:
        shift=get_shift_params,
    log:
        "logs/shift/{suite}/{method}/{task}/{run}.log",
    wildcard_constraints:
        suite=_alternatives(SHIFT_SUITES),
        run=r"(shots-\d+/)?seed-\d+",
    threads: get_training_threads
    resources:
        **TRAINING_RESOURCES,
    conda:
        ENV
    script:
        "../scripts/evaluate_shift.py"


def get_report_shift(wildcards):
    return [path for name in config["default_suites"] for path in shift_paths(name)]


rule protocol_report:
    input:
        runs=get_suite_runs,
        shift=lambda wc: shift_paths(wc.suite),
    output:
        "reports/protocols/{suite}.html",
    params:
        suites=lambda wc: {wc.suite: suite_report_info(wc.suite)},
    log:
        "logs/report/protocols_{suite}.log",
    wildcard_constraints:
        suite=_alternatives(sorted(set(FEWSHOT_SUITES) | set(SHIFT_SUITES))),
    conda:
        ENV
    script:
        "../scripts/report.py"


# `snakemake --cores all protocols_demo`: the embedded few-shot and shift suites (README for their cost).
rule protocols_demo:
    input:
        "reports/protocols/vtab-mini-fewshot.html",
        "reports/protocols/vtab-mini-shift.html",
    default_target: False
