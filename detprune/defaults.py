"""Defaults the commands, the Python API and the benchmarks share, in one light module.

Imports nothing, so a command's ``--help`` can show them without loading torch.
"""

# The input size used unless told otherwise: small enough for CPU scoring and evaluation,
# and what the recorded benchmark figures used.
DEFAULT_IMGSZ = 320

# How an image becomes network input. square: padded into imgsz x imgsz. rect: ultralytics'
# val batches, the long side to imgsz and the canvas only as large as the batch's aspect
# ratio needs (a KITTI frame at 640 is 672 x 224 instead of 640 x 640).
LETTERBOX_MODES = ("square", "rect")

# Post-processing of an evaluation, as ultralytics' val: every detection down to 0.001
# confidence counts towards AP (a higher threshold cuts the precision-recall curve short), and
# at most 300 per image.
EVAL_CONF = 0.001
EVAL_MAX_DET = 300
# ultralytics' NMS IoU of val and predict (cfg/default.yaml). Faster R-CNN keeps its box head's
# own (torchvision builds 0.5). This alone does not make a YOLO score 'yolo val''s: by default
# detprune's NMS keeps one class a box (val's keeps every class above conf: EVAL_MULTI_LABEL,
# --multi-label), its letterbox is square (val's is rect: --letterbox rect), and its AP is
# pycocotools' with KITTI's ignore regions as crowd boxes. docs/benchmarks.md ("Agreement with
# ultralytics' validator") measures each of these differences.
YOLO_NMS_IOU = 0.7
# One detection per box (its best class), as ultralytics' predict; True is ultralytics' val.
EVAL_MULTI_LABEL = False

# What an evaluation may run on (``detprune eval --split``).
EVAL_SPLITS = ("val", "train", "all")

# --- the prune run's choices (detprune.workflow.config reads them; nothing else should) ---------
# The criterion when images are given (--data / a dataset): the best measured data-driven
# configuration, docs/benchmarks.md's headline (2,000 KITTI frames, 1,000 of them val, 50% of the
# FLOPs, 10 fine-tuning epochs, two runs: taylor / cost 68.0 and 67.2 mAP50, saliency / cost 66.9
# and 65.0; paired saliency - taylor -1.1 [-3.0, +0.5] and -2.2 [-3.9, -0.7]). The accuracy
# benchmark (benchmarks/kitti_accuracy.py) decides it: change this line, and the allocation below follows.
DATA_CRITERION = "taylor"
# Without images only a data-free criterion can run.
DATA_FREE_CRITERION = "magnitude"
# Criteria whose widths the FLOPs/params knapsack ("cost") allocates by default; the others
# rank globally. Measured (docs/benchmarks.md, the headline): Taylor's default; saliency / cost
# against saliency / global +3.0 mAP50 [+0.8, +5.0], Cyclist +5.4 [+2.0, +8.8].
COST_ALLOCATION_CRITERIA = ("taylor", "saliency")
# Criteria that score without images (needs_data False): a cut by one of them is known to collapse at every depth
# the benchmarks measured (the headline, 2,000 KITTI frames: l1 / cost 47.5 mAP50 against 71.6 at 50% of the
# FLOPs, random channels 48.6; compare_criteria: L1 kept 5.1 of 22.5 at 70%). No data-free depth measured was safe.
DATA_FREE_WARNING = (
    "a data-free cut ({criterion}) is known to collapse: on 2,000 KITTI frames L1 kept 47.5 of 71.6 mAP50 at 50% "
    "of the FLOPs after fine-tuning, no better than random channels (48.6), and no data-free depth measured was "
    "safe (docs/benchmarks.md); give --data to score on images (default then: {data_criterion}, "
    "{data_allocation} allocation)"
)
