# Data: generate embedded suites; check every task folder (embedded or external) before training.


rule generate_embedded_task:
    output:
        directory(f"{RES}/data/{{suite}}/{{task}}"),
    params:
        spec=get_generation_params,
    log:
        "logs/data/generate/{suite}/{task}.log",
    wildcard_constraints:
        suite=_alternatives(embedded_data_suites()) if embedded_data_suites() else "$^",
    conda:
        ENV
    script:
        "../scripts/generate_embedded_task.py"


rule check_task_data:
    input:
        get_task_data_input,
    output:
        f"{RES}/index/{{suite}}/{{task}}.json",
    params:
        task=get_task_check_params,
    log:
        "logs/data/check/{suite}/{task}.log",
    conda:
        ENV
    script:
        "../scripts/check_task_data.py"
