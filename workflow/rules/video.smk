# Video track (issue #5): generate the embedded video suites, prepare real video datasets (SSv2,
# HMDB51, K400: convert, validate with decord, checksum), check every video task folder and write
# the index that train_run reads. The image rules stay image-only; check_task_data would match the
# same index paths, so ruleorder gives video suites to check_video_task.


include: "video_common.smk"


rule generate_embedded_video_task:
    output:
        directory(f"{RES}/data/{{suite}}/{{task}}"),
    params:
        spec=get_video_generation_params,
    log:
        "logs/data/generate/{suite}/{task}.log",
    wildcard_constraints:
        suite=_alternatives(embedded_data_suites("video")),
    conda:
        ENV
    script:
        "../scripts/generate_embedded_video_task.py"


rule prepare_video_task:
    output:
        directory(f"{RES}/data/{{suite}}/{{task}}"),
    params:
        spec=get_video_prepare_params,
    log:
        "logs/data/prepare/{suite}/{task}.log",
    wildcard_constraints:
        suite=_alternatives(prepared_video_suites()),
    threads: 32  # converts and decodes videos in parallel (~194k for SSv2)
    resources:
        mem_mb=32000,
        runtime=2880,
        cpus_per_task=32,
    conda:
        ENV
    script:
        "../scripts/prepare_video_task.py"


rule check_video_task:
    input:
        get_video_task_input,
    output:
        f"{RES}/index/{{suite}}/{{task}}.json",
    params:
        task=get_video_check_params,
    log:
        "logs/data/check/{suite}/{task}.log",
    wildcard_constraints:
        suite=_alternatives(video_data_suites()),
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    script:
        "../scripts/check_video_task.py"


ruleorder: check_video_task > check_task_data
