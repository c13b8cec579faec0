# Tables (pandas, PPT) per suite, then the Jinja2 HTML report over the default suites.


rule suite_table:
    input:
        get_suite_runs,
    output:
        "results/{suite}/table.csv",
    params:
        suite=get_suite_report_info,
    log:
        "logs/report/{suite}_table.log",
    conda:
        ENV
    script:
        "../scripts/suite_table.py"


rule report:
    input:
        tables=expand("results/{suite}/table.csv", suite=config["default_suites"]),
        runs=get_report_runs,
        speed=get_speed_benchmark,
        tuned=get_report_tuned,
        shift=get_report_shift,
    output:
        "reports/index.html",
    params:
        suites=report_suites(),
    log:
        "logs/report/index.log",
    conda:
        ENV
    script:
        "../scripts/report.py"


onerror:
    build_report_after_failure()
