# One training run = one method on one task with one seed. The only declared output is the small
# metrics.json; the run writes it atomically at the very end.


rule train_run:
    input:
        unpack(get_stage_inputs),
        data=get_task_index,
        checkpoint=get_backbone_checkpoint,
    output:
        metrics="results/{suite}/{method}/{task}/seed-{seed}/metrics.json",
    params:
        run=get_run_config,
    log:
        "logs/train/{suite}/{method}/{task}/seed-{seed}.log",
    threads: 1
    resources:
        mem_mb=4000,
        gpu_slots=1,
    conda:
        ENV
    script:
        "../scripts/train.py"


# Data-dependent methods (GPS, SCT, ...) look at the training split once, before training; the
# result is cached here so that retraining (other settings of the optimiser, a resume) reuses it.
rule select_parameters:
    input:
        data=get_task_index,
        checkpoint=get_backbone_checkpoint,
    output:
        "results/{suite}/{method}/{task}/seed-{seed}/selection.safetensors",
    params:
        run=get_run_config,
    log:
        "logs/select/{suite}/{method}/{task}/seed-{seed}.log",
    wildcard_constraints:
        method=_alternatives(SELECTION_METHODS),
    threads: 1
    resources:
        mem_mb=4000,
        gpu_slots=1,
    conda:
        ENV
    script:
        "../scripts/select_parameters.py"


rule method_summary:
    input:
        get_method_runs,
    output:
        "results/{suite}/{method}/summary.json",
    log:
        "logs/summary/{suite}/{method}.log",
    conda:
        ENV
    script:
        "../scripts/summarize_method.py"
