"""The Python API: the CLI's stages as functions over plain objects (modules, paths, dicts).

    import detprune
    model = detprune.load("yolov8n.yaml", class_names=["Car", "Pedestrian", "Cyclist"])
    scores = detprune.score(model, "data/kitti", criterion="saliency")
    result = detprune.prune(model, scores, target_flops=0.5)
    model = detprune.finetune(result.model, "data/kitti_yolo/data.yaml", epochs=30, out_dir="runs/ft")
    metrics = detprune.evaluate(model, "data/kitti")
    detprune.export(model, "pruned.onnx")

Each function finds the model's adapter itself; pass ``adapter=`` to choose one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import nn

from detprune.adapters import get_adapter
from detprune.adapters.base import DetectorAdapter
from detprune.data.types import DetectionSet
from detprune.defaults import DEFAULT_IMGSZ
from detprune.errors import UnsupportedError
from detprune.utils.seeding import INIT_SEED


def _adapter_for(model: nn.Module, adapter: DetectorAdapter | None) -> DetectorAdapter:
    if adapter is not None:
        return adapter
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from ultralytics.nn.tasks import DetectionModel

    from detprune.adapters import adapter_class

    if isinstance(model, DetectionModel):
        return adapter_class("yolo")()
    if isinstance(model, GeneralizedRCNN):
        return adapter_class("rcnn")()
    raise UnsupportedError(f"{type(model).__name__}: no adapter knows this model; pass adapter=")


def _dataset(data: str | Path | DetectionSet, class_map=None) -> DetectionSet:
    if isinstance(data, DetectionSet):
        return data
    from detprune.data.loader import load_dataset

    return load_dataset(data, class_map=class_map)


def load(spec: str | Path, *, weights: str | Path | None = None, class_names: Sequence[str] | None = None,
         prepare: bool = True, init_seed: int = INIT_SEED) -> nn.Module:
    """A detector from a checkpoint, yaml or architecture name, prepared for pruning by default.

    Fresh weights (a yaml's layers, a class head for new classes) are drawn under ``init_seed``.
    """
    adapter = get_adapter(spec)
    model = adapter.load(spec, weights=weights, class_names=class_names, init_seed=init_seed)
    return adapter.prepare_for_pruning(model) if prepare else model


def score(model: nn.Module, data: str | Path | DetectionSet | None = None, *, criterion: str = "saliency",
          imgsz: int = DEFAULT_IMGSZ, batch_size: int = 8, adapter: DetectorAdapter | None = None, **options) -> dict:
    """{conv name: score per output channel} from a criterion (data-free ones need no ``data``)."""
    from detprune.criteria import get_criterion
    from detprune.data.batch import iter_batches

    adapter = _adapter_for(model, adapter)
    scorer = get_criterion(criterion, **options)
    batches = iter_batches(_dataset(data), imgsz, batch_size) if data is not None else iter(())
    return scorer.score(adapter, model, batches)


def prune(model: nn.Module, scores: dict, *, adapter: DetectorAdapter | None = None, **options):
    """Prune ``model`` in place; ``options`` are :func:`detprune.pruning.prune_model`'s (target_flops=...).

    ``allocation="global" | "uniform" | "cost"`` chooses how many channels each group keeps
    (``cost="flops" | "params"`` for the knapsack); ``width_scores=`` another criterion's scores
    (``detprune.score(model, data, criterion="saliency")``) allocates the widths while
    ``scores`` choose which channels of each group stay.
    """
    from detprune.pruning import prune_model

    return prune_model(_adapter_for(model, adapter), model, scores, **options)


def finetune(model: nn.Module, data, *, epochs: int, out_dir: str | Path, adapter: DetectorAdapter | None = None,
             **options) -> nn.Module:
    """Fine-tune keeping the pruned structure; returns the best model."""
    return _adapter_for(model, adapter).finetune(model, data, epochs=epochs, out_dir=out_dir, **options)


def evaluate(model: nn.Module, data: str | Path | DetectionSet, *, imgsz: int | Sequence[int] = DEFAULT_IMGSZ,
             batch_size: int = 8, adapter: DetectorAdapter | None = None, class_map=None, split: str | None = None,
             val_list: str | Path | None = None, **options) -> dict:
    """COCO metrics (and KITTI AP for KITTI data) of ``model`` on ``data``.

    ``imgsz`` defaults to the CLI's (:data:`detprune.defaults.DEFAULT_IMGSZ`). A path ``data``
    is read whole unless ``split`` is given: ``"val"`` (the split ``detprune prune`` holds out,
    or the frames of ``val_list``), ``"train"`` or ``"all"``. ``options`` are
    :meth:`DetectorAdapter.evaluate`'s: ``conf``, ``iou``, ``max_det``, ``multi_label``, ``letterbox``
    (``"square"`` or ``"rect"``), ``kitti_protocol``. The model's classes and the data's are
    matched by name (same set in another order: relabelled; different: a one-line error).
    """
    from detprune.workflow.loading import align_to_model

    adapter = _adapter_for(model, adapter)
    if isinstance(data, DetectionSet):
        dataset = data
    elif split is None and val_list is None:
        dataset = _dataset(data, class_map)
    else:
        from detprune.data.loader import load_eval_split

        dataset = load_eval_split(data, split or "val", val_list=val_list, class_map=class_map)
    dataset = align_to_model(adapter, model, dataset)
    return adapter.evaluate(model, dataset, imgsz=imgsz, batch_size=batch_size, **options)


def export(model: nn.Module, path: str | Path, *, imgsz: int = 640, batch_size: int = 1,
           adapter: DetectorAdapter | None = None, **options):
    """ONNX of the (pruned) model, checked against PyTorch on ONNX Runtime; written atomically."""
    from detprune.export.onnx import export_onnx

    adapter = _adapter_for(model, adapter)
    example = adapter.example_inputs(model, imgsz, batch_size=batch_size)
    return export_onnx(adapter.export_module(model), example, path, **options)
