"""An ONNX graph given where a PyTorch model is expected: one line that says how to score it."""

from __future__ import annotations

from pathlib import Path

from detprune.errors import BadInputError


def refuse_onnx(spec, command: str) -> None:
    """Raise a one-line error for an ``.onnx`` ``spec``, naming what scores or times a graph."""
    if Path(str(spec)).suffix.lower() != ".onnx":
        return
    how = {
        "eval": (
            "give the .pt it was exported from (same numbers), or score the graph itself on ONNX Runtime with "
            "'detprune export --model MODEL.pt --out GRAPH.onnx --eval-data DATA'"
        ),
        "bench": "give the .pt files it was exported from: bench exports and times each on --backend itself",
    }.get(command, "give the .pt checkpoint it was exported from")
    raise BadInputError(f"{spec}: an ONNX graph; 'detprune {command}' reads PyTorch models: {how}")
