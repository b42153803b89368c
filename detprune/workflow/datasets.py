"""The images of a prune run: what is scored, what is fine-tuned on, what is evaluated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from detprune.errors import BadInputError
from detprune.workflow.config import PruneConfig

if TYPE_CHECKING:
    from detprune.data.types import DetectionSet


def read_class_map(value):
    """A class map as the readers take it: a name (``kitti3`` ...) as it is, a .yaml file read."""
    if value is None or not str(value).endswith((".yaml", ".yml")):
        return value
    from pathlib import Path

    from detprune.data.yolo_format import load_yaml

    return load_yaml(Path(value))


def train_val(config: PruneConfig) -> tuple["DetectionSet", "DetectionSet"]:
    """(train, val) of a prune run: :func:`train_val_sets` with the run's settings."""
    return train_val_sets(
        config.data,
        val_data=config.val_data,
        train_list=config.train_list,
        val_list=config.val_list,
        val_fraction=config.val_fraction,
        val_count=config.val_count,
        seed=config.seed,
        class_map=read_class_map(config.class_map),
    )


def train_val_sets(
    data,
    *,
    val_data=None,
    train_list=None,
    val_list=None,
    val_fraction=None,
    val_count=None,
    seed=None,
    class_map=None,
    skip_bad: bool = False,
    allow_empty_train: bool = False,
):
    """(train, val) as a team keeps them.

    - ``val_data``: a separate evaluation set (a folder or yaml), read whole; ``data`` is all
      train, or the frames of ``train_list``;
    - ``train_list`` alone: its frames are train, those of ``val_list`` (else every other frame) val;
    - otherwise ``data``'s own split: its train / val, the frames of ``val_list``, or a seeded share.
    """
    from detprune.data.convert import split_by_ids
    from detprune.data.loader import load_train_val, load_whole, read_id_list

    split_flags = val_fraction is not None or val_count is not None
    if val_data is not None and (val_list is not None or split_flags):
        raise BadInputError(
            "--val-data is the whole evaluation set: --val-list, --val-count and --val-fraction "
            "split --data instead; give one or the other"
        )
    if train_list is not None and split_flags:
        raise BadInputError("--train-list names the training frames: --val-count and --val-fraction do not apply")
    class_map = read_class_map(class_map)
    if val_data is None and train_list is None:
        try:
            return load_train_val(
                data,
                class_map=class_map,
                skip_bad=skip_bad,
                val_fraction=val_fraction,
                val_count=val_count,
                seed=seed,
                val_list=val_list,
                allow_empty_train=allow_empty_train,
            )
        except BadInputError as err:
            if "val needs at least one image" in str(err) or "both splits need" in str(err):
                raise BadInputError(
                    f"{err}; to train on every image of {data}, give the validation frames as "
                    "--val-data FOLDER (or --train-list FILE)"
                ) from None
            raise
    whole = load_whole(data, class_map=class_map, skip_bad=skip_bad)
    if train_list is not None:
        listed = read_id_list(train_list)
        rest, train = split_by_ids(whole, listed, source=str(train_list), allow_empty_train=True)
    else:
        train, rest = whole, None
    if val_data is not None:
        val = load_whole(val_data, class_map=class_map, skip_bad=skip_bad)
        if list(val.class_names) != list(train.class_names):
            raise BadInputError(
                f"{val_data}: classes {', '.join(val.class_names)} are not those of {data} "
                f"({', '.join(train.class_names)}); give both the same --class-map"
            )
    elif val_list is not None:
        _, val = split_by_ids(whole, read_id_list(val_list), source=str(val_list), allow_empty_train=True)
    else:
        val = rest
    if not len(val):
        raise BadInputError(
            f"{train_list}: lists every frame of {data}, leaving none to validate on; " "give --val-data or --val-list"
        )
    return train, val


def run_datasets(config: PruneConfig):
    """(scored images, fine-tuning split, evaluation split).

    Evaluation and fine-tuning need a held-out split: then scoring draws from the training
    split only. Without either (no evaluation, no epochs) every image of ``split`` is scored.
    """
    from detprune.data.loader import load_dataset
    from detprune.workflow.stages import seeded_subset

    train = val = None
    if config.evaluates() or config.finetune_epochs > 0 or config.schedule != "one-shot":
        train, val = train_val(config)
        scored = train
    else:
        scored = load_dataset(config.data, class_map=read_class_map(config.class_map), split=config.split)
    if len(scored) == 0:
        raise BadInputError(f"{config.data}: the dataset has no images")
    if val is not None and len(val) == 0:
        raise BadInputError(f"{config.val_data or config.data}: the evaluation set has no images")
    return seeded_subset(scored, config.max_images, config.seed), train, val
