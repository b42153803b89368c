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
