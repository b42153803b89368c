"""``prune.json``: what a prune run did, for machines (the result, the settings that chose it, versions)."""

from __future__ import annotations

from detprune.workflow.config import allocation_record, imgsz_text
from detprune.workflow.run import PruneRun

FLOPS_UNIT = "FLOPs = 2 x MACs, MACs counted by torch_pruning.utils.count_ops_and_params"


def prune_record(state: PruneRun) -> dict:
    import platform

    import torch
    import torch_pruning

    from detprune import __version__

    c, result = state.config, state.result
    report = result.as_dict()
    report.pop("channels")  # channels.json holds them
    report["model"] = str(c.model)
    report["criterion"] = c.criterion_name
    report["scores"] = "scores.pt"
    report["allocation"] = allocation_record(c, result)
    if getattr(state.criterion, "class_weights", None) and not c.scores:
        report["class_weights"] = dict(state.criterion.class_weights)
    if state.width_scores is not None:
        report["width_scores"] = "width_scores.pt"
    report["imgsz"] = list(c.imgsz) if isinstance(c.imgsz, tuple) else c.imgsz
    report["input_shape"] = imgsz_text(c.imgsz)  # height x width the FLOPs are counted at
    report["letterbox"] = c.letterbox
    if state.latency is not None:
        report["latency_target"] = state.latency.as_dict()
    report["flops_unit"] = FLOPS_UNIT
    report["versions"] = {
        "detprune": __version__,
        "torch": torch.__version__,
        "torch_pruning": torch_pruning.__version__,
        "python": platform.python_version(),
    }
    return report
