"""Old home of :mod:`detprune.adapters.yolo.rewrites`, kept for pickles only.

Pruned YOLO checkpoints written before the family became a package name their rewritten
blocks as ``detprune.adapters.yolo_rewrites.SplitC2f`` (etc.); unpickling them imports this
module path (and :data:`detprune.utils.checkpoints.MODULE_TREES` allows it). New code imports
:mod:`detprune.adapters.yolo.rewrites`.
"""

from detprune.adapters.yolo.rewrites import *  # noqa: F401,F403
