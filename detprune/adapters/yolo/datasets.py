"""The dataset yaml handed to the ultralytics trainer: checked here, written with absolute paths.

ultralytics resolves a yaml's relative ``path`` against its own datasets folder and, when a
split is missing, runs the yaml's ``download:`` entry (a URL, a shell command or Python code).
detprune checks every split exists locally first and gives the trainer a copy of the yaml
whose ``path`` is absolute and which has no ``download:`` entry, so a run never fetches or
executes anything and resolves paths the same way everywhere (DDP workers and resumed runs
included).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from detprune.data.yolo_format import load_yaml, resolve_root
from detprune.errors import BadInputError
from detprune.utils.numbers import whole_number
from detprune.utils.atomic import write_text

SPLITS = ("train", "val", "test")


def _root(yaml_path: Path, data: dict) -> Path:
    """The dataset root: detprune's rule (absolute, beside the yaml, working directory), then ultralytics' folder."""
    root = resolve_root(yaml_path, data.get("path"))
    if not root.exists() and data.get("path") and not Path(str(data["path"])).is_absolute():
        from ultralytics.utils import DATASETS_DIR

        if (DATASETS_DIR / str(data["path"])).exists():
            return (DATASETS_DIR / str(data["path"])).resolve()
    return root.resolve()


def _split_paths(root: Path, entry) -> list[Path]:
    entries = entry if isinstance(entry, (list, tuple)) else [entry]
    return [(root / str(item)).resolve() for item in entries]


def check_data_yaml(path: str | Path) -> dict:
    """Read and check a YOLO dataset yaml; returns it with ``path`` made absolute.

    Needs ``train`` and ``val`` (folders of images or ``.txt`` lists) that exist, and
    ``names`` (or ``nc``). Raises :class:`BadInputError` naming the file and field otherwise.
    """
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{path}: a folder; give the dataset's .yaml file (YOLO format: path, train, val, names)")
    if path.suffix.lower() not in {".yaml", ".yml"}:
        raise BadInputError(f"{path}: expected a YOLO dataset .yaml (path, train, val, names)")
    data = load_yaml(path)
    root = _root(path, data)
    for split in ("train", "val"):
        if not data.get(split):
            raise BadInputError(f"{path}: field '{split}' is missing; a YOLO dataset yaml needs train, val and names")
    for split in SPLITS:
        if not data.get(split):
            continue
        for item in _split_paths(root, data[split]):
            if not item.exists():
                raise BadInputError(
                    f"{path}: '{split}' points to {item}, which does not exist (datasets are never downloaded)"
                )
    names = data.get("names")
    if names is None and "nc" not in data:
        raise BadInputError(f"{path}: field 'names' is missing (a list or a mapping index: name)")
    if names is None:
        data["nc"] = whole_number(data["nc"], f"{path}: nc", low=1, high=100_000)
    if names is not None and (not isinstance(names, (list, dict)) or not names):
        raise BadInputError(f"{path}: field 'names' must be a non-empty list or mapping index: name")
    checked = {k: v for k, v in data.items() if k != "download"}
    checked["path"] = str(root)
    return checked


def num_classes(data: dict) -> int:
    return len(data["names"]) if data.get("names") is not None else int(data["nc"])


def write_checked_yaml(source: str | Path, target: str | Path) -> Path:
    """Check ``source`` and write the copy the trainer reads to ``target`` (atomically)."""
    data = check_data_yaml(source)
    if Path(source).resolve() != Path(target).resolve() or "source" not in data:  # a resumed run keeps its origin
        data["source"] = str(Path(source).resolve())  # where the copy came from, for people reading the run
    return write_text(target, yaml.safe_dump(data, sort_keys=False))
