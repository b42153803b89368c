"""The torchvision Faster R-CNN family: adapter, rewrites, coupling, objective, checkpoint format,
trainer, distillation.

The whole family lives in this package; the rest of detprune reaches it through
:class:`detprune.adapters.base.DetectorAdapter` and the registry line in ``adapters/base.py``.
"""

from detprune.adapters.rcnn.adapter import RcnnAdapter

__all__ = ["RcnnAdapter"]
