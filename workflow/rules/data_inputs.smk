# Input and parameter functions of the data rules (data.smk): which archives a task folder is built
# from, where it lands, and what its check expects. Pure wiring over the config; the logic lives in
# vpeft.download, vpeft.data.prepare and the layouts' checkers.
import re

from vpeft.data.owndata import LAYOUTS as OWN_DATA_LAYOUTS, check_options as own_check_options

DOWNLOAD_LOCK = config.get("download_lock")
# What a manual copy of each layout is called in messages (and where to read about its format).
LAYOUT_COPIES = {"vtab": "VTAB-1k copy in the NOAH layout", "fgvc": "FGVC copy in the VPT json layout"}


# Suites of the user's own images: checked by rule check_own_data.
OWN_DATA_SUITES = sorted({s["data_suite"] for s in SUITES.values() if s["layout"] in OWN_DATA_LAYOUTS})


def downloaded_data_suites():
    return sorted({s["data_suite"] for s in SUITES.values() if s["source"] == "download"})


def suite_data_root(data_suite):
    return str(Path(data_root(config, SUITES, data_suite)))


def task_folder_names(data_suite, task):
    """The task's folder name and its alternatives (e.g. cifar, cifar100)."""
    folder = SUITES[data_suite]["tasks"][task].get("folder") or []
    return [task] + [f for f in ([folder] if isinstance(folder, str) else folder) if f != task]


def task_pieces(data_suite, task):
    suite = SUITES[data_suite]
    return suite["tasks"][task].get("download") or suite["download"].get("task_folder") or []


def archive_file(data_suite, name):
    return f"{RES}/downloads/{data_suite}/{name}"


def _check_download_config():
    """Fail at load time, naming the key, when a downloaded suite's pieces name unknown archives."""
    for name in downloaded_data_suites():
        archives = SUITES[name]["download"]["archives"]
        for task in SUITES[name]["tasks"]:
            pieces = task_pieces(name, task)
            if not pieces:
                raise WorkflowError(f"invalid configuration: suites.{name}.tasks.{task}: source is download but "
                                    f"neither the task's `download` nor suites.{name}.download.task_folder says "
                                    f"how to build its folder")
            for piece in pieces:
                if piece["archive"] not in archives:
                    raise WorkflowError(f"invalid configuration: suites.{name}.tasks.{task}: archive "
                                        f"'{piece['archive']}' is not in suites.{name}.download.archives "
                                        f"({', '.join(archives)})")


_check_download_config()
DOWNLOAD_ROOTS = {suite_data_root(s): s for s in downloaded_data_suites()}


def _regex_alternatives(strings):
    return "|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)) or "(?!)"


def manual_copy_hint(data_suite):
    suite = SUITES[data_suite]
    copy = LAYOUT_COPIES.get(suite["layout"], f"copy in the '{suite['layout']}' layout")
    return (f"Put an extracted {copy} at {suite_data_root(data_suite)} and set suites.{data_suite}.source: "
            f"external (or point suites.{data_suite}.root at your copy); or download the archive elsewhere and "
            f"place it at the path above (it is checked and extracted from there).")


def get_archive_download_params(wildcards):
    entry = SUITES[wildcards.dsuite]["download"]["archives"][wildcards.archive]
    hint = entry.get("note") or manual_copy_hint(wildcards.dsuite)
    return {"url": entry.get("url"), "sha256": entry.get("sha256"), "lock": DOWNLOAD_LOCK,
            "what": f"archive {wildcards.archive} of suite '{wildcards.dsuite}'", "hint": " ".join(hint.split())}


def get_prepare_inputs(wildcards):
    data_suite = DOWNLOAD_ROOTS[wildcards.droot]
    return sorted({archive_file(data_suite, p["archive"]) for p in task_pieces(data_suite, wildcards.task)})


def get_prepare_params(wildcards):
    data_suite = DOWNLOAD_ROOTS[wildcards.droot]
    archives = SUITES[data_suite]["download"]["archives"]
    pieces = [dict(piece, archive=archive_file(data_suite, piece["archive"]),
                   url=archives[piece["archive"]].get("url"), sha256=archives[piece["archive"]].get("sha256"))
              for piece in task_pieces(data_suite, wildcards.task)]
    return {"pieces": pieces, "names": task_folder_names(data_suite, wildcards.task), "lock": DOWNLOAD_LOCK,
            "what": f"task '{wildcards.task}' of suite '{data_suite}'"}


def get_check_input(wildcards):
    """Embedded suites need their generated folder, downloaded ones their prepared folder; a user's
    own folder (external) has nothing to build."""
    source = SUITES[wildcards.suite]["source"]
    if source in ("embedded", "download"):
        return [f"{suite_data_root(wildcards.suite)}/{wildcards.task}"]
    return []


def get_check_params(wildcards):
    suite = SUITES[wildcards.suite]
    entry = suite["tasks"][wildcards.task]
    options = {"layout": suite["layout"], "task_dir": task_folder(config, SUITES, wildcards.suite, wildcards.task),
               "num_classes": entry["num_classes"], "suite": wildcards.suite, "task": wildcards.task,
               "source": suite["source"], "sizes": {**(suite.get("sizes") or {}), **(entry.get("sizes") or {})},
               # a downloaded folder is always <root>/<task>; other copies may use another name
               "folders": [] if suite["source"] == "download" else task_folder_names(wildcards.suite, wildcards.task)[1:]}
    if "image_dir" in entry:
        options["image_dir"] = entry["image_dir"]
    if wildcards.suite in OWN_DATA_SUITES:
        options.update(own_check_options(suite))
    return options
