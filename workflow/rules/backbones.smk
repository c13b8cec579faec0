# Backbone checkpoints that live under resources/ are fetched by this rule (the shipped demo
# checkpoint in assets/ is already there).


rule download_backbone:
    output:
        f"{RES}/backbones/{{filename}}",
    params:
        backbone=get_download_params,
    log:
        "logs/backbones/{filename}.log",
    conda:
        ENV
    script:
        "../scripts/download_backbone.py"


rule pretrain_demo_backbone:
    output:
        f"{RES}/backbones/vit_demo_patch4_32.fractal.safetensors",
    params:
        recipe=config.get("pretrain_demo", {}),
    log:
        "logs/backbones/pretrain_demo.log",
    threads: workflow.cores
    conda:
        ENV
    script:
        "../scripts/pretrain_demo.py"


ruleorder: pretrain_demo_backbone > download_backbone
