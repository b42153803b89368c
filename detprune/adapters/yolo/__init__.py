"""The ultralytics YOLO family: adapter, rewrites, objective, checkpoint format, trainer, distillation.

The whole family lives in this package; the rest of detprune reaches it through
:class:`detprune.adapters.base.DetectorAdapter` and the registry line in ``adapters/base.py``.
"""

from detprune.adapters.yolo.adapter import YoloAdapter
from detprune.adapters.yolo.checkpoint import WeightsReport, load_state_dict_file, read_checkpoint

__all__ = ["WeightsReport", "YoloAdapter", "load_state_dict_file", "read_checkpoint"]
