# Input and parameter functions of the dense rules (dense.smk): pure wiring over the config; the logic
# lives in vpeft.dense.
from vpeft.dense.settings import resolve_dense_run  # noqa: E402

DENSE_SUITES = sorted(name for name, suite in SUITES.items() if suite["kind"] == "dense")
DENSE_DATA_SUITES = sorted({SUITES[name]["data_suite"] for name in DENSE_SUITES})


def get_dense_generation_params(wildcards):
    suite = SUITES[wildcards.suite]
    return {"layout": suite["layout"], "seed": suite.get("seed", 0), "sizes": suite["sizes"],
            "image_size": suite.get("image_size", 64)}


def get_dense_task_folder(wildcards):
    """Embedded suites need their generated folder, downloaded ones their prepared folder; a user's own
    copy (external) has nothing to build."""
    suite = SUITES[wildcards.suite]
    if suite["source"] in ("embedded", "download"):
        return [f"{data_root(config, SUITES, wildcards.suite)}/{wildcards.task}"]
    return []


def get_dense_check_params(wildcards):
    suite = SUITES[wildcards.suite]
    protocols = [resolve_dense_run(config, SUITES, METHOD_CONFIGS, name, SUITE_METHODS[name][0], wildcards.task,
                                   SEEDS[0])["protocol"] for name in DENSE_SUITES
                 if SUITES[name]["data_suite"] == wildcards.suite and wildcards.task in SUITES[name]["tasks"]]
    splits = sorted({split for p in protocols for split in (p["train_split"], p["eval_split"])})
    return {"layout": suite["layout"], "task_dir": f"{data_root(config, SUITES, wildcards.suite)}/{wildcards.task}",
            "num_classes": suite["tasks"][wildcards.task]["num_classes"], "splits": splits,
            "suite": wildcards.suite, "task": wildcards.task, "source": suite["source"]}


def get_dense_task_index(wildcards):
    return f"{RES}/index/dense/{SUITES[wildcards.suite]['data_suite']}/{wildcards.task}.json"


def get_dense_run_config(wildcards):
    try:
        return resolve_dense_run(config, SUITES, METHOD_CONFIGS, wildcards.suite, wildcards.method, wildcards.task,
                                 int(wildcards.seed))
    except ConfigError as err:
        raise WorkflowError(str(err)) from None
