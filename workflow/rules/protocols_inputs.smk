# Input and parameter functions of the protocol rules (protocols.smk): which runs a few-shot suite has,
# where its sampled splits and a shift target's data and class map are. Pure wiring over the config; the
# logic lives in vpeft.data.fewshot, vpeft.data.synthetic.shift_mini and vpeft.engine.shift.
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
            if task not in source["tasks"]:  # a shrunk source (tests, --config): refused when it is asked for
                continue
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


# -- distribution shift and WiSE-FT ------------------------------------------------------------
def get_render_input(wildcards):
    origin = SUITES[wildcards.suite]["render"]["from"]
    source = SUITES[origin]
    if wildcards.task not in source["tasks"]:
        raise WorkflowError(f"suites.{wildcards.suite}.render.from: suite '{origin}' has no task "
                            f"'{wildcards.task}' to render; its tasks: {', '.join(source['tasks'])}")
    return f"{data_root(config, SUITES, source['data_suite'])}/{wildcards.task}"


def get_render_params(wildcards):
    suite = SUITES[wildcards.suite]
    source = SUITES[suite["render"]["from"]]
    return {"style": suite["render"]["style"], "classes": suite["render"].get("classes", "all"),
            "seed": int(source.get("seed", 0)), "num_classes": source["tasks"][wildcards.task]["num_classes"]}


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


def get_report_shift(wildcards):
    return [path for name in config["default_suites"] for path in shift_paths(name)]
