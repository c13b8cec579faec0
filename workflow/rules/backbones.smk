# Backbone checkpoints that live under resources/ are fetched by this rule (the shipped demo
# checkpoint in assets/ is already there): resumable, and checked against the config's sha256 or,
# where the config has none, the download lock file (the first download records it). Offline, place
# the file at its `checkpoint` path by hand; it is checked when a run loads it.


# Runs where Snakemake runs (a cluster's login node has the network compute nodes often lack).
localrules:
    download_backbone,


rule download_backbone:
    output:
        f"{RES}/backbones/{{filename}}",
    params:
        backbone=get_download_params,
        lock=config.get("download_lock"),
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


# A checkpoint whose sha256 the config does not pin, downloaded or placed by hand, is checked against the
# lock file (its first check records it there), before any run loads it.
rule check_backbone:
    input:
        get_backbone_check_input,
    output:
        f"{RES}/index/backbones/{{backbone}}.sha256.json",
    params:
        backbone=get_backbone_check_params,
    log:
        "logs/backbones/check_{backbone}.log",
    wildcard_constraints:
        backbone=_alternatives(config["backbones"]),
    conda:
        ENV
    script:
        "../scripts/check_backbone.py"
