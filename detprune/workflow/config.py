"""The prune run's settings: one typed :class:`PruneConfig`, its defaults and its checks.

The CLI (``detprune prune``), the Python API (``detprune.prune``, ``detprune.run``) and the
benchmarks build the same object, so a setting has one default and one check. A recipe
(``--config``) fills it as the flags do; the run writes it back as ``config.yaml``.

Defaults that depend on other settings are resolved here, once:

- the criterion: :data:`~detprune.defaults.DATA_CRITERION` with images to score on,
  :data:`~detprune.defaults.DATA_FREE_CRITERION` without;
- the allocation: the one of the criterion that allocates the widths (``--widths-from``, else
  ``--criterion``; :func:`detprune.pruning.allocation.default_allocation`);
- CATRO's joint channel choice: a criterion declaring ``joint_subsets`` picks each group's
  channels at widths it did not allocate (:func:`chooses_subsets`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from detprune.defaults import DATA_CRITERION, DATA_FREE_CRITERION, EVAL_CONF, EVAL_MAX_DET
from detprune.errors import BadInputError

TARGET_FIELDS = ("target_flops", "target_params", "ratio", "target_latency")
SCHEDULES = ("one-shot", "iterative", "progressive")
DEFAULT_MEGABATCHES = 4
DEFAULT_STEPS = 4
# fields that describe how a run is written or loaded, not what it computes: not in config.yaml
NOT_RECORDED = ("exist_ok", "trust_checkpoint")


@dataclass
class PruneConfig:
    """Every setting of a prune run, named as the recipe fields (``--round-to`` is ``round_to``)."""

    model: str | None = None
    weights: str | None = None
    trust_checkpoint: bool = False
    partial_weights: bool = False
    random_init: bool = False
    data: str | None = None
    val_data: str | None = None  # a separate evaluation set (another folder / yaml), instead of a split of data
    train_list: str | None = None  # frame ids of data to train (and score) on
    split: str | None = None
    class_map: Any = None
    # scoring
    criterion: str | None = None  # None: DATA_CRITERION with data, DATA_FREE_CRITERION without
    criterion_option: list | None = None
    class_weights: Any = None
    scores: str | None = None
    batch_size: int = 8
    max_images: int | None = None
    # target (one)
    target_flops: float | None = None
    target_params: float | None = None
    ratio: float | None = None
    target_latency: float | None = None
    backend: str | None = None
    latency_search: str = "table"
    latency_cache: str | None = None
    latency_threads: int | None = None
    table_check: int = 10
    latency_tolerance: float = 0.05
    search_runs: int = 30
    # allocation
    allocation: str | None = None
    cost: str | None = None
    widths_from: str | None = None
    per_layer: bool = False
    round_to: int = 8
    min_channels: int = 8
    max_ratio: float = 0.8
    normalisation: str | None = None
    # fine-tune and evaluate
    finetune_epochs: int = 0
    finetune_batch: int | None = None
    lr: float | None = None
    trainer_args: Any = None  # further trainer arguments: {key: value} or ["key=value", ...]
    distill: bool | None = None
    distill_weight: float | None = None
    val_fraction: float | None = None
    val_count: int | None = None
    val_list: str | None = None
    no_eval: bool = False
    latency_runs: int = 30
    imgsz: Any = None  # an int (square) or (height, width); None: the model's training size, else DEFAULT_IMGSZ
    seed: int = 0
    threads: int | None = None  # torch threads of the run
    device: str | None = None
    out: str = "runs/prune/exp"
    exist_ok: bool = False
    # schedule
    schedule: str = "one-shot"
    megabatches: int | None = None
    steps: int | None = None
    sparsity_schedule: str | None = None
    replay: float | None = None
    epochs_per_step: int | None = None
    # evaluation protocol
    conf: float = EVAL_CONF
    nms_iou: float | None = None
    max_det: int = EVAL_MAX_DET
    multi_label: bool = False
    letterbox: str = "square"
    kitti_protocol: str | None = None
    extra: dict = field(default_factory=dict, repr=False)  # not a setting: room for callers' notes

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_mapping(cls, values: dict, *, source: str = "settings") -> "PruneConfig":
        """A config from ``{field: value}`` (dashes or underscores); an unknown field is an error."""
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise BadInputError(f"{source}: unknown field(s) {', '.join(unknown)} of a prune run")
        config = cls(**values)
        if config.imgsz is not None:
            config.imgsz = normalise_imgsz(config.imgsz)
        return config

    @classmethod
    def from_recipe(cls, path: str | Path, **overrides: Any) -> "PruneConfig":
        """A recipe file's fields, then ``overrides`` on top (as flags override ``--config``)."""
        from detprune.config import load_recipe

        return cls.from_mapping({**load_recipe(path), **overrides}, source=str(path))

    @classmethod
    def from_namespace(cls, args: Any) -> "PruneConfig":
        """The fields of an argparse namespace (or any object with those attributes)."""
        return cls.from_mapping({n: getattr(args, n) for n in cls.names() if hasattr(args, n)})

    def replace(self, **changes: Any) -> "PruneConfig":
        return dataclasses.replace(self, **changes)

    def recorded(self) -> dict:
        """The settings by recipe name, as ``config.yaml`` holds them (a rerun reads them back)."""
        record = {}
        for name in self.names():
            if name in NOT_RECORDED:
                continue
            value = getattr(self, name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            record[name] = value
        return record

    # --- resolved defaults --------------------------------------------------------------------

    @property
    def criterion_name(self) -> str | None:
        """The criterion scoring the channels: the one named, else the library's default for
        a run with (or without) images; None where the scores are read from a file."""
        if self.scores is not None:
            return None
        if self.criterion is not None:
            return self.criterion
        return default_criterion(bool(self.data))

    @property
    def resolved_allocation(self) -> str:
        return allocation(self)

    def evaluates(self) -> bool:
        return bool(self.data) and not self.no_eval

    def eval_options(self) -> dict:
        """``adapter.evaluate`` keywords (conf, iou, max_det, multi_label, letterbox, kitti_protocol)."""
        options = {
            "conf": self.conf,
            "iou": self.nms_iou,
            "max_det": self.max_det,
            "multi_label": True if self.multi_label else None,
            "letterbox": self.letterbox,
            "kitti_protocol": self.kitti_protocol,
        }
        return {k: v for k, v in options.items() if v is not None}

    def resolved(self) -> "PruneConfig":
        """A copy with the defaults that follow other settings written out (criterion, allocation),
        so that ``config.yaml`` repeats the run even after a library default changes."""
        changes: dict[str, Any] = {}
        if self.scores is None and self.criterion is None:
            changes["criterion"] = self.criterion_name
        if not self.per_layer and self.allocation is None:
            changes["allocation"] = allocation(self)
        return self.replace(**changes)

    # --- checks ---------------------------------------------------------------------------------

    def validate(self) -> "PruneConfig":
        """Every check a run makes before it writes anything: one line on the first failure."""
        validate(self)
        return self


def normalise_imgsz(value: Any) -> int | tuple[int, int]:
    """640, "640", "224,640", [224, 640] -> 640 or (224, 640); a bad size is one line."""
    if isinstance(value, bool):
        raise BadInputError(f"imgsz: expected 640 or H,W, got {value!r}")
    if isinstance(value, int):
        sizes = [value]
    elif isinstance(value, (list, tuple)):
        sizes = list(value)
    else:
        sizes = [p for p in str(value).replace("x", ",").split(",") if p.strip()]
    try:
        sizes = [int(s) for s in sizes]
    except (TypeError, ValueError):
        raise BadInputError(f"--imgsz takes 640 or H,W, got {value!r}") from None
    if len(sizes) not in (1, 2) or min(sizes) < 32:
        raise BadInputError(f"--imgsz takes one or two sizes of at least 32, got {value!r}")
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def imgsz_text(imgsz: int | Sequence[int]) -> str:
    """``640`` -> "640x640", ``(224, 640)`` -> "224x640" (height x width)."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    return f"{h}x{w}"


def default_criterion(has_data: bool) -> str:
    """The criterion a run scores with when none is named: data-driven where images are given."""
    return DATA_CRITERION if has_data else DATA_FREE_CRITERION


def allocation(config: Any) -> str:
    """The allocation named, or the default of the criterion that allocates the widths."""
    from detprune.pruning.allocation import default_allocation

    if config.per_layer:
        return "uniform"
    if config.allocation is not None:
        return config.allocation
    if config.widths_from:
        return default_allocation(config.widths_from)
    if config.scores:
        return default_allocation(None)
    named = config.criterion if config.criterion is not None else default_criterion(bool(getattr(config, "data", None)))
    return default_allocation(named)


def allocation_record(config: Any, result=None) -> dict:
    """What chose the widths and the channels: for prune.json and the report."""
    cost = result.settings.get("cost") if result is not None else config.cost
    return {"allocation": allocation(config), "cost": cost, "widths_from": config.widths_from}


def chooses_subsets(config: Any, criterion: Any) -> bool:
    """Whether ``criterion`` picks each group's channels jointly (a declared capability, CATRO)
    at widths it did not allocate itself: ``--widths-from``, or the uniform allocation."""
    joint = bool(getattr(criterion, "joint_subsets", False)) and not config.scores
    return joint and bool(config.widths_from or allocation(config) == "uniform")


def distils(config: Any) -> bool:
    """Distillation is asked for (``--distill``): off by default.

    On 2,000 KITTI frames (taylor / cost at 50% FLOPs, 10 fine-tuning epochs) distilling at
    weight 2 gained +1.1 mAP50 [-0.3, +2.3] over plain fine-tuning, not established, for about
    a third more fine-tuning time (docs/benchmarks.md, the headline); at ultralytics' weight 6.0
    it had lost 10-14 points on 75 frames.
    """
    return bool(config.distill) and config.finetune_epochs > 0 and config.schedule == "one-shot"


def uses_table(config: Any) -> bool:
    """Whether the run measures (or reads) a latency table: ``--cost latency`` or a table-searched latency target."""
    return config.cost == "latency" or (config.target_latency is not None and config.latency_search == "table")


def epochs_per_step(config: Any) -> int:
    return config.epochs_per_step or config.finetune_epochs or 1


def pick_target(config: Any, defaults: Any = None) -> None:
    """A target given on the command line replaces a recipe's target of another kind.

    ``defaults`` answers ``get_default(name)`` (an argparse parser): a target whose value is
    not the parser's default came from a flag.
    """
    given = [k for k in TARGET_FIELDS if getattr(config, k) is not None]
    defaults = defaults if defaults is not None else getattr(config, "_parser", None)
    if len(given) > 1 and defaults is not None:
        from_flags = [k for k in given if getattr(config, k) != defaults.get_default(k)]
        if len(from_flags) == 1:
            for k in given:
                if k != from_flags[0]:
                    setattr(config, k, None)


def validate(config: Any) -> None:
    """Every check of a run's settings (:mod:`detprune.workflow.checks`), before anything is written."""
    from detprune.workflow.checks import check_all

    check_all(config)
