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
from detprune.errors import UnsupportedError
from detprune.utils.seeding import INIT_SEED


def _adapter_for(model: nn.Module, adapter: DetectorAdapter | None) -> DetectorAdapter:
    if adapter is not None:
        return adapter
    from detprune.adapters import adapter_for_model

    found = adapter_for_model(model)
    if found is None:
        raise UnsupportedError(f"{type(model).__name__}: no adapter knows this model; pass adapter=")
    return found


def _dataset(data: str | Path | DetectionSet, class_map=None) -> DetectionSet:
    if isinstance(data, DetectionSet):
        return data
    from detprune.data.loader import load_dataset

    return load_dataset(data, class_map=class_map)


def load(
    spec: str | Path,
    *,
    weights: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    prepare: bool = True,
    init_seed: int = INIT_SEED,
) -> nn.Module:
    """A detector from a checkpoint, yaml or architecture name, prepared for pruning by default.

    Fresh weights (a yaml's layers, a class head for new classes) are drawn under ``init_seed``.
    """
    adapter = get_adapter(spec)
    model = adapter.load(spec, weights=weights, class_names=class_names, init_seed=init_seed)
    return adapter.prepare_for_pruning(model) if prepare else model


def score(
    model: nn.Module,
    data: str | Path | DetectionSet | None = None,
    *,
    criterion: str | None = None,
    imgsz: int | Sequence[int] | None = None,
    batch_size: int = 8,
    letterbox: str = "square",
    adapter: DetectorAdapter | None = None,
    **options,
) -> dict:
    """{conv name: score per output channel} from a criterion (data-free ones need no ``data``).

    ``criterion`` defaults as the prune run's: the library's data-driven one with ``data``, the
    data-free one without (:func:`detprune.workflow.config.default_criterion`). The scores
    remember their criterion, so that :func:`prune` picks the allocation the CLI does.
    """
    from detprune.criteria import get_criterion
    from detprune.data.batch import iter_batches
    from detprune.workflow.config import default_criterion, normalise_imgsz
    from detprune.workflow.cut import ChannelScores
    from detprune.workflow.imgsz import resolve_imgsz

    adapter = _adapter_for(model, adapter)
    name = criterion or default_criterion(data is not None)
    scorer = get_criterion(name, **options)
    imgsz = normalise_imgsz(resolve_imgsz(imgsz, model))
    batches = iter_batches(_dataset(data), imgsz, batch_size, letterbox=letterbox) if data is not None else iter(())
    return ChannelScores(scorer.score(adapter, model, batches), criterion=name, scorer=scorer)


def prune(
    model: nn.Module, scores: dict, *, adapter: DetectorAdapter | None = None, criterion: str | None = None, **options
):
    """Prune ``model`` in place with the prune run's cut and defaults: (target_flops=..., ...) -> PruneResult.

    ``options`` are the fields of :class:`~detprune.workflow.config.PruneConfig` that shape the
    cut (``target_flops`` / ``target_params`` / ``ratio``, ``allocation``, ``cost``, ``per_layer``,
    ``widths_from``, ``round_to``, ``min_channels``, ``max_ratio``, ``normalisation``, ``imgsz``)
    and :func:`detprune.pruning.prune_model`'s own (``width_scores``, ``kept``, ``tolerance``,
    ``latency_table``, ``global_ranking``). The allocation defaults to that of the criterion that
    made ``scores`` (``detprune.score`` records it; else ``criterion=``), as in ``detprune
    prune``: the same settings keep the same channels.
    """
    from detprune.workflow.config import PruneConfig
    from detprune.workflow.cut import cut

    adapter = _adapter_for(model, adapter)
    fields = {k: options.pop(k) for k in list(options) if k in PruneConfig.names()}
    config = PruneConfig.from_mapping({"criterion": criterion or getattr(scores, "criterion", None), **fields})
    if config.imgsz is None:
        from detprune.workflow.imgsz import resolve_imgsz

        config.imgsz = resolve_imgsz(None, model)
    if "allocation" not in fields and options.get("global_ranking") is not None:  # the older switch names it
        config.allocation = "global" if options.pop("global_ranking") else "uniform"
    elif config.criterion is None and "allocation" not in fields:
        config.allocation = "global"  # scores of unknown origin: prune_model's own default
    result, _ = cut(adapter, model, scores, config, criterion=getattr(scores, "scorer", None), **options)
    return result


def run(config=None, **settings):
    """The prune run of ``detprune prune``: a :class:`~detprune.workflow.config.PruneConfig` (or
    its fields as keywords, or a recipe path) in, the finished run out (``.out``, the folder
    written; ``.result``; ``.evaluation``, the before/after report)."""
    from detprune.workflow.config import PruneConfig
    from detprune.workflow.run import run as prune_run

    if config is None:
        config = PruneConfig.from_mapping(settings)
    elif isinstance(config, (str, Path)):
        config = PruneConfig.from_recipe(config, **settings)
    elif settings:
        config = config.replace(**settings)
    return prune_run(config)


def finetune(
    model: nn.Module, data, *, epochs: int, out_dir: str | Path, adapter: DetectorAdapter | None = None, **options
) -> nn.Module:
    """Fine-tune keeping the pruned structure; returns the best model."""
    return _adapter_for(model, adapter).finetune(model, data, epochs=epochs, out_dir=out_dir, **options)


def evaluate(
    model: nn.Module,
    data: str | Path | DetectionSet,
    *,
    imgsz: int | Sequence[int] | None = None,
    batch_size: int = 8,
    adapter: DetectorAdapter | None = None,
    class_map=None,
    split: str | None = None,
    val_list: str | Path | None = None,
    **options,
) -> dict:
    """COCO metrics (and KITTI AP for KITTI data) of ``model`` on ``data``.

    ``imgsz`` defaults as the CLI's: the model's training size, else
    :data:`detprune.defaults.DEFAULT_IMGSZ`. A path ``data`` is read whole unless ``split`` is
    given: ``"val"`` (the split ``detprune prune`` holds out, or the frames of ``val_list``),
    ``"train"`` or ``"all"``. ``options`` are
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
    from detprune.workflow.imgsz import resolve_imgsz

    return adapter.evaluate(model, dataset, imgsz=resolve_imgsz(imgsz, model), batch_size=batch_size, **options)


def export(
    model: nn.Module,
    path: str | Path,
    *,
    imgsz: int | Sequence[int] | None = None,
    batch_size: int = 1,
    adapter: DetectorAdapter | None = None,
    **options,
):
    """ONNX of the (pruned) model, checked against PyTorch on ONNX Runtime; written atomically."""
    from detprune.export.onnx import export_onnx

    from detprune.workflow.imgsz import resolve_imgsz

    adapter = _adapter_for(model, adapter)
    example = adapter.example_inputs(model, resolve_imgsz(imgsz, model), batch_size=batch_size)
    return export_onnx(adapter.export_module(model), example, path, **options)
