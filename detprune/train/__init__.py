"""Family-neutral fine-tuning helpers: structure checks (:mod:`~detprune.train.structure`) and the
distillation rules every family shares (:mod:`~detprune.train.distill`).

Each family's trainer lives in its own package (``detprune.adapters.yolo.trainer``,
``detprune.adapters.rcnn.trainer``) and is reached through ``DetectorAdapter.finetune``.
"""
