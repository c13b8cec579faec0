# Data: generate embedded suites; download, verify and extract downloaded ones; check every task
# folder (embedded, downloaded or the user's own) and write its checksummed manifest before training.
#
#   download_data_archive   url -> <resources>/downloads/<suite>/<file>   (resumable, sha256 checked)
#   prepare_task_folder     archives -> <root>/<task>/                    (sha256 checked again, safe
#                                                                          extraction, atomic rename)
#   check_task_data         <root>/<task>/ -> <resources>/index/<suite>/<task>.json + .manifest.csv
#   check_own_data          your folder or csv -> the same index and manifest, + .splits.csv (the
#                                                 derived train / val / test assignment)
include: "data_inputs.smk"


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


# Downloads run where Snakemake runs (on a cluster: the login node, which has the network that
# compute nodes often lack); everything after them runs as ordinary jobs.
localrules:
    download_data_archive,


rule download_data_archive:
    output:
        f"{RES}/downloads/{{dsuite}}/{{archive}}",
    params:
        spec=get_archive_download_params,
    log:
        "logs/data/download/{dsuite}/{archive}.log",
    wildcard_constraints:
        dsuite=_regex_alternatives(downloaded_data_suites()),
        archive=_regex_alternatives({a for s in downloaded_data_suites() for a in SUITES[s]["download"]["archives"]}),
    conda:
        ENV
    script:
        "../scripts/download_archive.py"


rule prepare_task_folder:
    input:
        get_prepare_inputs,
    output:
        directory("{droot}/{task}"),
    params:
        spec=get_prepare_params,
    log:
        "logs/data/prepare/{droot}/{task}.log",
    wildcard_constraints:
        droot=_regex_alternatives(DOWNLOAD_ROOTS),
    resources:
        mem_mb=4000,
        runtime=240,  # extraction is disk-bound
    conda:
        ENV
    script:
        "../scripts/prepare_task_folder.py"


rule check_task_data:
    input:
        get_check_input,
    output:
        index=f"{RES}/index/{{suite}}/{{task}}.json",
        manifest=f"{RES}/index/{{suite}}/{{task}}.manifest.csv",
    params:
        task=get_check_params,
    log:
        "logs/data/check/{suite}/{task}.log",
    wildcard_constraints:
        suite=_regex_alternatives({n for n, s in SUITES.items() if s["kind"] == "image"} - set(OWN_DATA_SUITES)),
    threads: get_data_check_threads  # decodes and hashes every image once, in parallel
    resources:
        mem_mb=8000,
        runtime=240,
        cpus_per_task=get_data_check_threads,
    conda:
        ENV
    script:
        "../scripts/check_task_data.py"


# The user's own images (layouts imagefolder, csv): the same check and outputs, plus the split file
# that records how the splits the data lacks were derived (vpeft.data.owndata).
rule check_own_data:
    output:
        index=f"{RES}/index/{{suite}}/{{task}}.json",
        manifest=f"{RES}/index/{{suite}}/{{task}}.manifest.csv",
        splits=f"{RES}/index/{{suite}}/{{task}}.splits.csv",
    params:
        task=get_check_params,
    log:
        "logs/data/check/{suite}/{task}.log",
    wildcard_constraints:
        suite=_regex_alternatives(OWN_DATA_SUITES),
    threads: get_data_check_threads
    resources:
        mem_mb=8000,
        runtime=240,
        cpus_per_task=get_data_check_threads,
    conda:
        ENV
    script:
        "../scripts/check_task_data.py"
