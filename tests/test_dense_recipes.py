"""The generated mmdet / mmseg configs: the shipped real suites reproduce the dense papers' recipes
(catalog 3.4), the embedded ones are the same recipes at CPU size, and the files mmengine writes load
back and build real toolbox models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vpeft.config import ConfigError, load_method_configs, resolve_suites
from vpeft.dense.recipes import RecipeOptions, batch_plan, build_config, write_config
from vpeft.dense.settings import resolve_dense_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    methods = load_method_configs(ROOT / "config/methods", ROOT / "workflow/schemas/method.schema.yaml")
    return config, resolve_suites(config), methods


def run_of(shipped, suite, method, task):
    config, suites, methods = shipped
    return resolve_dense_run(config, suites, methods, suite, method, task, 42)


def test_coco_cascade_mask_rcnn_3x(shipped, tmp_path):
    run = run_of(shipped, "coco", "mona", "coco2017")
    assert run["protocol"]["train_split"] == "train2017" and run["protocol"]["eval_split"] == "val2017"
    cfg = build_config(run, [f"c{i}" for i in range(80)], work_dir=tmp_path)
    model = cfg["model"]
    assert model["type"] == "CascadeRCNN"
    assert model["backbone"]["type"] == "VPeftSwin" and model["backbone"]["method"] == "mona"
    assert model["backbone"]["drop_path_rate"] == 0.3 and model["backbone"]["out_indices"] == [0, 1, 2, 3]
    assert model["neck"]["in_channels"] == [128, 256, 512, 1024] and model["neck"]["out_channels"] == 256
    heads = model["roi_head"]["bbox_head"]
    assert len(heads) == 3 and all(h["num_shared_convs"] == 4 and h["fc_out_channels"] == 1024 for h in heads)
    assert [h["bbox_coder"]["target_stds"][0] for h in heads] == [0.1, 0.05, 0.033]
    assert all(h["loss_bbox"]["type"] == "GIoULoss" and h["num_classes"] == 80 for h in heads)
    assert model["roi_head"]["mask_head"]["num_convs"] == 4
    optim = cfg["optim_wrapper"]
    assert optim["optimizer"] == {"type": "AdamW", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.05}
    assert optim["paramwise_cfg"]["custom_keys"]["relative_position_bias_table"] == {"decay_mult": 0.0}
    assert cfg["train_cfg"]["max_epochs"] == 36
    assert cfg["param_scheduler"][1]["milestones"] == [27, 33] and cfg["param_scheduler"][0]["end"] == 500
    pipeline = cfg["train_dataloader"]["dataset"]["pipeline"]
    assert [t["type"] for t in pipeline] == ["LoadImageFromFile", "LoadAnnotations", "RandomFlip", "RandomChoice",
                                             "PackDetInputs"]
    assert pipeline[3]["transforms"][1][1]["crop_size"] == (384, 600)
    assert cfg["train_dataloader"]["batch_size"] == 2  # per process: the papers' 2 images per GPU
    assert cfg["auto_scale_lr"] == {"enable": True, "base_batch_size": 16}  # the lr is given for 8 x 2
    assert cfg["train_dataloader"]["dataset"]["ann_file"] == "annotations/instances_train2017.json"
    assert cfg["test_evaluator"]["type"] == "CocoMetric" and cfg["test_evaluator"]["metric"] == ["bbox", "segm"]
    assert cfg["test_evaluator"]["ann_file"].endswith("coco2017/annotations/instances_val2017.json")
    assert cfg["resume"] and cfg["default_hooks"]["checkpoint"]["interval"] == 1


def test_voc_retinanet(shipped, tmp_path):
    run = run_of(shipped, "voc", "lora", "voc0712")
    cfg = build_config(run, [f"c{i}" for i in range(20)], work_dir=tmp_path)
    model = cfg["model"]
    assert model["type"] == "RetinaNet" and model["backbone"]["out_indices"] == [1, 2, 3]
    assert model["neck"]["in_channels"] == [384, 768, 1536]  # Swin-L stages 2-4
    assert model["neck"]["add_extra_convs"] == "on_input" and model["neck"]["start_level"] == 0
    assert model["bbox_head"]["loss_cls"]["type"] == "FocalLoss" and model["bbox_head"]["num_classes"] == 20
    train = cfg["train_dataloader"]["dataset"]
    assert train["type"] == "RepeatDataset" and train["times"] == 3
    assert [d["ann_file"] for d in train["dataset"]["datasets"]] == ["VOC2007/ImageSets/Main/trainval.txt",
                                                                     "VOC2012/ImageSets/Main/trainval.txt"]
    assert cfg["test_dataloader"]["dataset"]["ann_file"] == "VOC2007/ImageSets/Main/test.txt"
    assert cfg["test_evaluator"] == {"type": "VOCMetric", "metric": "mAP", "eval_mode": "11points"}
    assert cfg["train_cfg"]["max_epochs"] == 4 and cfg["param_scheduler"][1]["milestones"] == [3]


def test_ade20k_upernet_160k(shipped, tmp_path):
    run = run_of(shipped, "ade20k", "mona", "ade20k")
    assert run["training"]["lr"] == 3.0e-4  # Mona's ADE20K learning rate (config/methods/mona.yaml)
    cfg = build_config(run, [f"c{i}" for i in range(150)], work_dir=tmp_path)
    model = cfg["model"]
    assert model["type"] == "EncoderDecoder" and model["decode_head"]["type"] == "UPerHead"
    assert model["decode_head"]["in_channels"] == [192, 384, 768, 1536] and model["decode_head"]["channels"] == 512
    assert model["auxiliary_head"]["in_channels"] == 768 and model["auxiliary_head"]["loss_decode"]["loss_weight"] == 0.4
    assert cfg["train_cfg"] == {"type": "IterBasedTrainLoop", "max_iters": 160_000, "val_interval": 160_001}
    assert [s["type"] for s in cfg["param_scheduler"]] == ["LinearLR", "PolyLR"]
    assert cfg["param_scheduler"][1]["begin"] == 1500
    assert cfg["optim_wrapper"]["optimizer"]["weight_decay"] == 0.01
    crop = [t for t in cfg["train_dataloader"]["dataset"]["pipeline"] if t["type"] == "RandomCrop"][0]
    assert crop["crop_size"] == (512, 512)
    assert cfg["train_dataloader"]["dataset"]["type"] == "ADE20KDataset"
    assert cfg["test_evaluator"] == {"type": "IoUMetric", "iou_metrics": ["mIoU"]}


def test_real_backbones_are_the_catalog_ones(shipped):
    assert run_of(shipped, "coco", "bitfit", "coco2017")["backbone"]["name"] == "swin-b-in22k"
    assert run_of(shipped, "voc", "bitfit", "voc0712")["backbone"]["name"] == "swin-l-in22k"
    assert run_of(shipped, "ade20k", "bitfit", "ade20k")["backbone"]["name"] == "swin-l-in22k"


def test_embedded_config_writes_loads_and_builds(shipped, tmp_path):
    """The embedded COCO recipe: same detector, CPU size; the dumped file builds a real mmdet model."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    run = run_of(shipped, "coco-mini", "lora", "shapes")
    run["pretrained"] = False  # random init: the test does not read the shipped weights
    cfg = build_config(run, ["circle", "square", "triangle"], work_dir=tmp_path)
    assert cfg["model"]["neck"]["in_channels"] == [32, 64, 128, 256]
    assert cfg["model"]["rpn_head"]["anchor_generator"]["scales"] == [2]
    assert cfg["default_hooks"]["checkpoint"] is None and not cfg["resume"]
    path = write_config(cfg, tmp_path / "config.py")
    loaded = Config.fromfile(str(path))
    assert loaded.model.roi_head.num_stages == 3
    register_all_modules(init_default_scope=False)
    import vpeft.dense.backbone  # noqa: F401

    with DefaultScope.overwrite_default_scope("mmdet"):
        detector = MODELS.build(loaded.model)
    assert type(detector).__name__ == "CascadeRCNN"
    assert detector.backbone.applied.parameter_counts()["trainable"] == 4 * 8 * sum(
        d * 2 for d in (32, 64, 128, 256))  # LoRA r=8 on q, v of the 8 blocks


def test_recipe_options_are_validated(shipped, tmp_path):
    with pytest.raises(ConfigError, match=r"suites.coco-mini.data: unknown dense recipe option\(s\) \['widht'\]"):
        RecipeOptions.from_dict({"widht": 3}, "suites.coco-mini.data")
    run = run_of(shipped, "coco-mini", "lora", "shapes")
    run["data"] = dict(run["data"], milestones=[50])
    with pytest.raises(ConfigError, match="milestones"):
        build_config(run, ["a", "b", "c"], work_dir=tmp_path)
    with pytest.raises(ConfigError, match="the data has 2 classes, the config says num_classes 3"):
        build_config(run_of(shipped, "coco-mini", "lora", "shapes"), ["a", "b"], work_dir=tmp_path)


@pytest.mark.parametrize("processes, device", [(4, "cuda"), (2, "cpu"), (1, "cpu")])
def test_processes_get_the_papers_per_gpu_batch_and_a_scaled_lr(shipped, tmp_path, processes, device):
    """N processes: mmengine's pytorch launcher (more than one), 2 images per process, the lr given for 16
    images scaled by mmengine's auto_scale_lr; NCCL and SyncBN on GPUs, gloo and BN on CPUs."""
    run = run_of(shipped, "coco", "lora", "coco2017")
    cfg = build_config(run, [f"c{i}" for i in range(80)], work_dir=tmp_path, device=device, processes=processes)
    assert cfg["launcher"] == ("pytorch" if processes > 1 else "none")
    assert cfg["train_dataloader"]["batch_size"] == 2
    assert cfg["auto_scale_lr"] == {"enable": True, "base_batch_size": 16}
    assert cfg["env_cfg"]["dist_cfg"]["backend"] == ("nccl" if device == "cuda" else "gloo")
    norms = {h["norm_cfg"]["type"] for h in cfg["model"]["roi_head"]["bbox_head"]}
    assert norms == {"SyncBN" if processes > 1 and device == "cuda" else "BN"}
    wrapper = cfg.get("model_wrapper_cfg")
    if processes == 1:
        assert wrapper is None
    else:  # a CPU module takes no device_ids; on GPUs mmengine passes LOCAL_RANK
        assert wrapper["type"] == "MMDistributedDataParallel" and ("device_ids" in wrapper) == (device == "cpu")
    plan = batch_plan(run, processes)
    assert plan["global_batch"] == 2 * processes and plan["lr_scale"] == pytest.approx(2 * processes / 16)
    assert plan["lr"] == pytest.approx(run["training"]["lr"] * 2 * processes / 16)


def test_processes_follow_the_jobs_gpus(shipped, monkeypatch):
    import torch

    from vpeft.dense.launch import process_count

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    run = run_of(shipped, "coco", "lora", "coco2017")
    assert process_count(run, "cuda", gpus=4) == 4  # what the job asked for, of the visible ones
    assert process_count(run, "cuda", gpus=None) == 8 and process_count(run, "cuda", gpus=0) == 1
    assert process_count(run, "cpu", gpus=4) == 1  # no GPU: one process unless data.processes says more
    # config `distributed.processes` (shared with image and video runs) when it is a number
    assert process_count(run, "cpu", gpus=4, setting=3) == 3 and process_count(run, "cuda", 4, "auto") == 4
    run["data"] = dict(run["data"], processes=2)
    assert process_count(run, "cpu", setting=3) == 2  # the suite's own setting wins
    assert process_count(run, "cpu") == 2 and process_count(run, "cuda", gpus=8) == 2
    run["data"]["processes"] = 9
    with pytest.raises(ConfigError, match="data.processes = 9 but only 8 GPU"):
        process_count(run, "cuda")


def test_process_options_are_validated(shipped, tmp_path):
    with pytest.raises(ConfigError, match="processes must be a positive integer"):
        RecipeOptions.from_dict({"processes": 0})
    with pytest.raises(ConfigError, match="images_per_process must be a positive integer"):
        RecipeOptions.from_dict({"images_per_process": 1.5})
    run = run_of(shipped, "coco-mini", "lora", "shapes")
    run["data"] = dict(run["data"], norm="SyncBN")
    with pytest.raises(ConfigError, match="SyncBN needs GPUs"):
        build_config(run, ["a", "b", "c"], work_dir=tmp_path, processes=2)


def test_image_suites_are_not_dense_runs(shipped):
    config, suites, methods = shipped
    with pytest.raises(ConfigError, match="not a dense suite"):
        resolve_dense_run(config, suites, methods, "vtab-mini", "lora", "digits", 42)


def test_export_writes_a_toolbox_config(tmp_path):
    from mmengine.config import Config

    from vpeft.dense.export import main

    out = main(["ade20k", "lora", "ade20k", "-o", str(tmp_path / "ade_lora.py"), "--config",
                str(ROOT / "config/config.yaml"), "--methods-dir", str(ROOT / "config/methods")])
    cfg = Config.fromfile(str(out))
    assert cfg.custom_imports["imports"] == ["vpeft.dense.backbone"]
    assert cfg.model.backbone.method == "lora" and cfg.model.decode_head.num_classes == 150
    assert cfg.optim_wrapper.type == "AmpOptimWrapper"  # the papers' fp16 on a GPU


def test_only_the_runs_own_checkpoint_folder_loads_without_pickle_restrictions(tmp_path):
    """vpeft-run:// loads a pickled runner state (torch's weights_only default refuses it) from a folder
    stamped as a run's own, refuses any other folder, and names a damaged checkpoint in one line."""
    import torch
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import CheckpointLoader

    from vpeft.dense.checkpoints import SCHEME, STAMP, DenseCheckpointError, own_checkpoint

    state = {"meta": {"epoch": 1}, "message_hub": {"x": HistoryBuffer([1.0, 3.0], [1, 1])}}  # as mmengine saves it
    foreign = tmp_path / "downloaded" / "epoch_1.pth"
    foreign.parent.mkdir()
    torch.save(state, foreign)
    with pytest.raises(Exception, match="Unsupported global|weights_only"):
        torch.load(foreign)  # what mmengine's own loader does
    with pytest.raises(DenseCheckpointError, match=f"{foreign}: not in a vpeft run's checkpoint folder"):
        CheckpointLoader.load_checkpoint(SCHEME + str(foreign))

    own = tmp_path / "checkpoint"
    own.mkdir()
    (own / STAMP).write_text("abc")
    assert own_checkpoint(own) is None
    torch.save(state, own / "epoch_1.pth")
    (own / "last_checkpoint").write_text(str(own / "epoch_1.pth"))
    uri = own_checkpoint(own)
    assert uri == SCHEME + str((own / "epoch_1.pth").resolve())
    assert CheckpointLoader.load_checkpoint(uri)["message_hub"]["x"].mean() == 2.0
    (own / "epoch_1.pth").write_bytes((own / "epoch_1.pth").read_bytes()[:40])
    with pytest.raises(DenseCheckpointError, match=r"epoch_1\.pth: unreadable checkpoint") as caught:
        CheckpointLoader.load_checkpoint(uri)
    assert "\n" not in str(caught.value)
    (own / "last_checkpoint").write_text(str(own / "epoch_2.pth"))  # an older vpeft deleted it first
    assert own_checkpoint(own) is None
