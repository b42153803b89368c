"""What a deployed ONNX graph says about itself: classes, input shape, preprocessing, output layout.

Written into the graph's ``metadata_props`` under the keys ultralytics reads back
(``names``, ``imgsz``, ``stride``, ``batch``, ``task``: ``ultralytics.YOLO("m.onnx")`` then names
its classes) and under ``detprune.*`` keys for everything else a deployment needs to know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

PREPROCESSING = (
    "RGB, scaled to [0, 1], NCHW float; resized keeping the aspect ratio and padded with grey "
    "(114/255) to the input shape, the image centred (letterbox {letterbox})"
)


def onnx_metadata(
    adapter, model, imgsz: int | Sequence[int], *, batch: int = 1, letterbox: str = "square", precision: str = "fp32"
) -> dict[str, str]:
    """The metadata entries of ``model``'s graph at ``imgsz`` (all values strings, as ONNX stores them)."""
    from detprune import __version__
    from detprune.data.batch import as_hw

    h, w = as_hw(imgsz)
    names = {i: str(n) for i, n in enumerate(adapter.class_names(model))}
    family = adapter.family
    return {
        "names": repr(names),
        "imgsz": repr([h, w]),
        "stride": str(adapter.input_stride(model)),
        "batch": str(batch),
        "task": "detect",
        "author": "detprune",
        "version": __version__,
        "detprune.family": family,
        "detprune.precision": precision,
        "detprune.letterbox": letterbox,
        "detprune.input": f"images: ({batch}, 3, {h}, {w}) float",
        "detprune.preprocessing": PREPROCESSING.format(letterbox=letterbox),
        "detprune.output": adapter.onnx_output_layout(model),
    }



def write_onnx_metadata(path: str | Path, entries: dict[str, str]) -> None:
    """Add (or replace) ``entries`` in the graph's metadata, the file rewritten atomically."""
    import onnx

    from detprune.utils.atomic import atomic_path

    path = Path(path)
    graph = onnx.load(str(path), load_external_data=False)
    kept = [p for p in graph.metadata_props if p.key not in entries]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    for key, value in entries.items():
        graph.metadata_props.add(key=key, value=value)
    with atomic_path(path) as tmp:
        onnx.save(graph, str(tmp))


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
