# Folder targets: `snakemake results/<suite>/<method>/` builds that method's runs on that suite and
# its summary. Snakemake strips the trailing slash of a file target and cannot make a folder that
# holds other rules' outputs, so each folder is a named target rule (both spellings).

for _suite, _methods in SUITE_METHODS.items():
    for _method in _methods:
        for _name in (f"results/{_suite}/{_method}/", f"results/{_suite}/{_method}"):

            rule:
                name:
                    _name
                input:
                    f"results/{_suite}/{_method}/summary.json",
                default_target: False


# Anything else under results/ is a typo: say which suite, method or task names are valid.
rule explain_unknown_target:
    input:
        explain_unknown_target,
    output:
        "results/{path}",
    log:
        "logs/unknown_target/{path}.log",
    wildcard_constraints:
        path=unknown_target_pattern(),
    conda:
        ENV
    shell:
        "false"
