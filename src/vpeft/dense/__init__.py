"""Dense prediction track: Swin backbones with PEFT methods inside mmdet (COCO, PASCAL VOC) and mmseg
(ADE20K), plus an embedded, generated COCO-format / ADE-format suite.

Modules (import what you need; nothing here imports mmdet at package import time):

* `backbone`   -- `DenseSwin`: timm Swin + our method + per-stage output norms, registered as
                  `VPeftSwin` in mmdet's and mmseg's model registries.
* `demo_swin`  -- the tiny demo Swin architecture (timm registration).
* `recipes`    -- the detector / segmentor recipes of the dense papers as generated mmengine configs.
* `settings`   -- one dense run's resolved settings (suite, method, task, seed) from our config.
* `synthetic`  -- the embedded suites' generators (COCO json instances, ADE-format segmentation).
* `datasets`   -- layout checks of COCO 2017, PASCAL VOC 2007+2012, ADE20K and the generated sets.
* `train`      -- train + evaluate one run with mmengine's Runner, write metrics.json.
* `export`     -- `python -m vpeft.dense.export SUITE METHOD TASK -o cfg.py`: the generated config for
                  OpenMMLab's own tools/train.py.
"""
