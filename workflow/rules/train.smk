# One training run = one method on one task with one seed. The only declared output is the small
# metrics.json; the run writes it atomically at the very end.


rule train_run:
    input:
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
    conda:
        ENV
    script:
        "../scripts/train.py"


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
