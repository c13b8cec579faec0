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


include: "protocols_inputs.smk"


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
