# Hyper-parameter search (suites.<s>.tuning: grid | optuna; off adds nothing to the DAG). One job per
# (suite, method, task) runs its trials in sequence (TPE and pruning learn from the finished trials):
# train800 -> val200 under the `val` protocol, never the test split. Its study is a journal file under
# results/<suite>/<method>/<task>/tune/ (not a declared output, so a killed search keeps it and
# resumes); its declared output tuned.json is what the final train_run reads (get_stage_inputs).


rule tune_method:
    input:
        data=get_task_index,
        checkpoint=get_backbone_checkpoint,
    output:
        tuned="results/{suite}/{method}/{task}/tuned.json",
    params:
        run=get_tune_run_config,
        settings=get_tune_settings,
        study_dir=lambda wc: f"results/{wc.suite}/{wc.method}/{wc.task}/tune",
    log:
        "logs/tune/{suite}/{method}/{task}.log",
    wildcard_constraints:
        suite=_alternatives(tuned_suites(SUITES)),
    threads: get_training_threads
    resources:
        gpu=TRAINING_RESOURCES["gpu"],
        cpus_per_task=TRAINING_RESOURCES["cpus_per_task"],
        mem_mb=TRAINING_RESOURCES["mem_mb"],
        # one run's runtime (config job_resources) per trial
        runtime=lambda wc: TRAINING_RESOURCES["runtime"](wc) * SUITE_TUNING[wc.suite]["trials"],
    conda:
        ENV
    script:
        "../scripts/tune.py"


# The search's own report: the suite's table and the sensitivity section, beside the fixed-setting
# runs of the suite it extends (trained here if missing), e.g. `snakemake reports/tuning/vtab-mini-tuned.html`.
rule tuning_report:
    input:
        runs=get_suite_runs,
        tuned=lambda wc: suite_tuned_files(wc.suite),
        fixed=get_fixed_setting_runs,
    output:
        "reports/tuning/{suite}.html",
    params:
        suites=lambda wc: {wc.suite: suite_report_info(wc.suite)},
    log:
        "logs/report/tuning_{suite}.log",
    wildcard_constraints:
        suite=_alternatives(tuned_suites(SUITES)),
    conda:
        ENV
    script:
        "../scripts/report.py"


# `snakemake --cores all tune_demo`: a small search (4 trials of 3 methods on the six vtab-mini tasks).
rule tune_demo:
    input:
        "reports/tuning/vtab-mini-tuned.html",
    default_target: False
