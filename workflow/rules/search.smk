# Methods whose final configuration is searched (NOAH, `needs_search`): one-shot NAS in three
# stages. The first two use the `val` protocol (train800 -> val200), so the test split is never
# looked at; the third is the ordinary train_run, which retrains the searched subnet on the suite's
# protocol (see get_stage_inputs). A task whose method config gives a subnet (NOAH's released ones on
# vtab) skips both stages unless the config says `search: always` (vpeft.config.runs_search).


rule noah_supernet:
    input:
        data=get_task_index,
        checkpoint=get_backbone_checkpoint,
    output:
        supernet="results/{suite}/{method}/{task}/seed-{seed}/search/supernet.safetensors",
        record="results/{suite}/{method}/{task}/seed-{seed}/search/supernet.json",
    params:
        run=get_search_run_config,
    log:
        "logs/search/{suite}/{method}/{task}/seed-{seed}_supernet.log",
    wildcard_constraints:
        method="noah",
    threads: get_training_threads
    resources:
        **TRAINING_RESOURCES,
    conda:
        ENV
    script:
        "../scripts/noah_supernet.py"


rule noah_search:
    input:
        data=get_task_index,
        checkpoint=get_backbone_checkpoint,
        supernet="results/{suite}/{method}/{task}/seed-{seed}/search/supernet.safetensors",
    output:
        subnet="results/{suite}/{method}/{task}/seed-{seed}/search/subnet.json",
        record="results/{suite}/{method}/{task}/seed-{seed}/search/search.json",
    params:
        run=get_search_run_config,
    log:
        "logs/search/{suite}/{method}/{task}/seed-{seed}_search.log",
    wildcard_constraints:
        method="noah",
    threads: get_training_threads
    resources:
        **TRAINING_RESOURCES,
    conda:
        ENV
    script:
        "../scripts/noah_search.py"
