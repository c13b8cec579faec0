# V-PEFT Bench: data -> frozen backbone + PEFT method -> train -> evaluate -> PPT tables -> report.
# `snakemake --cores all` runs the embedded suites (config: default_suites) and writes
# reports/index.html; `snakemake --cores all results/<suite>/<method>/` runs one method on one suite.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/backbones.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/protocols.smk"
include: "workflow/rules/report.smk"
# -- track includes (video.smk, dense.smk) go here --
include: "workflow/rules/dense.smk"
include: "workflow/rules/video.smk"
include: "workflow/rules/targets.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
