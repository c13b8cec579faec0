# Input functions of the video track's rules (workflow/rules/video.smk).


def video_data_suites():
    return sorted({s["data_suite"] for s in SUITES.values() if s["kind"] == "video"})


def prepared_video_suites():
    """External video suites whose data the workflow prepares from a download (data.prepare set)."""
    return sorted({s["data_suite"] for s in SUITES.values()
                   if s["kind"] == "video" and s["source"] == "external" and (s.get("data") or {}).get("prepare")})


def _video_task_dir(name, task):
    return f"{data_root(config, SUITES, name)}/{task}"


def _video_split_files(suite):
    """Annotation files the suite's protocol reads, plus every file the suite maps a split to."""
    data = suite.get("data") or {}
    splits = data.get("splits") or {}
    protocol = config["protocols"][suite["protocol"]]
    protocol = {**protocol, **(protocol.get("layouts") or {}).get(suite["layout"], {})}
    names = {splits.get(protocol[k], f"{protocol[k]}.csv") for k in ("train_split", "eval_split")}
    return sorted(names | set(splits.values()))


def get_video_generation_params(wildcards):
    suite = SUITES[wildcards.suite]
    generate = (suite.get("data") or {}).get("generate") or {}
    return {"task": wildcards.task, "seed": suite.get("seed", 0), "sizes": suite["sizes"],
            "frame_size": suite.get("image_size", 32), "frames": generate.get("frames", 16),
            "fps": generate.get("fps", 8)}


def get_video_prepare_params(wildcards):
    suite = SUITES[wildcards.suite]
    prepare = dict((suite.get("data") or {})["prepare"])
    expected = f"{RES}/data/{wildcards.suite}"
    if str(Path(suite["root"])) != str(Path(expected)):
        raise WorkflowError(f"suites.{wildcards.suite}: data.prepare writes the task folders under {expected}; "
                            f"set root: {expected} (or remove data.prepare and point root at your prepared copy)")
    return {"format": prepare.pop("format"), "source": prepare.pop("source"),
            "num_classes": suite["tasks"][wildcards.task]["num_classes"], **prepare}


def get_video_task_input(wildcards):
    suite = SUITES[wildcards.suite]
    if suite["source"] == "embedded" or (suite.get("data") or {}).get("prepare"):
        return [_video_task_dir(wildcards.suite, wildcards.task)]
    return []  # a folder you prepared yourself, at root/<task>


def get_video_check_params(wildcards):
    suite = SUITES[wildcards.suite]
    data = suite.get("data") or {}
    return {"task_dir": _video_task_dir(wildcards.suite, wildcards.task), "suite": wildcards.suite,
            "task": wildcards.task, "num_classes": suite["tasks"][wildcards.task]["num_classes"],
            "source": suite["source"], "split_files": _video_split_files(suite),
            "decode": bool(data.get("check_decode", suite["source"] == "embedded"))}
