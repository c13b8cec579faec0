# Dense prediction track (issue #6): Swin + PEFT method inside mmdet (COCO, VOC) and mmseg (ADE20K).
#
#   generate_embedded_dense_task   seed -> <resources>/data/<suite>/<task>/  (COCO json / ADE format)
#   check_dense_task               <root>/<task>/ -> <resources>/index/dense/<suite>/<task>.json + .manifest.csv
#   train_dense_run                -> results/<suite>/<method>/<task>/seed-<s>/metrics.json (+ config.py)
#
# Downloaded dense suites (coco, voc, ade20k) get their task folders from the shared download rules
# (download_data_archive, prepare_task_folder); summaries, tables and the report are the shared rules.
include: "dense_inputs.smk"


rule generate_embedded_dense_task:
    output:
        directory(f"{RES}/data/{{suite}}/{{task}}"),
    params:
        spec=get_dense_generation_params,
    log:
        "logs/data/generate/{suite}/{task}.log",
    wildcard_constraints:
        suite=_alternatives(embedded_data_suites("dense")),
    conda:
        ENV
    script:
        "../scripts/generate_embedded_dense_task.py"


rule check_dense_task:
    input:
        get_dense_task_folder,
    output:
        index=f"{RES}/index/dense/{{suite}}/{{task}}.json",
        manifest=f"{RES}/index/dense/{{suite}}/{{task}}.manifest.csv",
    params:
        task=get_dense_check_params,
    log:
        "logs/data/check/dense/{suite}/{task}.log",
    wildcard_constraints:
        suite=_alternatives(DENSE_DATA_SUITES),
    resources:
        mem_mb=16000,  # COCO's train json is ~450 MB
        runtime=240,
    conda:
        DENSE_ENV
    script:
        "../scripts/check_dense_task.py"


rule train_dense_run:
    input:
        index=get_dense_task_index,
        checkpoint=get_backbone_checkpoint,
    output:
        metrics="results/{suite}/{method}/{task}/seed-{seed}/metrics.json",
    params:
        run=get_dense_run_config,
    log:
        "logs/train/{suite}/{method}/{task}/seed-{seed}.log",
    wildcard_constraints:
        suite=_alternatives(DENSE_SUITES),
    threads: get_training_threads
    resources:
        **TRAINING_RESOURCES,
    conda:
        DENSE_ENV
    script:
        "../scripts/train_dense.py"


# The image track's train_run writes the same path pattern; for dense suites this rule is the one.
ruleorder: train_dense_run > train_run


# The dense demo backbone's weights (shipped in assets/ with their sha256): the image demo backbone's
# fractal pretraining recipe on the tiny Swin (vpeft.dense.demo_swin.PRETRAIN_RECIPE).
rule pretrain_dense_demo_backbone:
    output:
        f"{RES}/backbones/swin_demo_patch4_window4.fractal.safetensors",
    log:
        "logs/backbones/pretrain_dense_demo.log",
    threads: 1
    conda:
        ENV
    script:
        "../scripts/pretrain_dense_demo.py"


ruleorder: pretrain_dense_demo_backbone > download_backbone
