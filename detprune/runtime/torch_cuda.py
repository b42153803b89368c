"""PyTorch in FP16 on a GPU, the forward pass captured once in a CUDA graph and replayed, so
Python overhead is not timed; CUDA events on the stream time each replay. The artifact is the
module itself."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

from detprune.errors import BadInputError, UnsupportedError
from detprune.runtime.base import LatencyBackend, register_backend
from detprune.runtime.stats import LatencyStats


@register_backend
class TorchCudaBackend(LatencyBackend):
    name = "torch-cuda"
    needs_cuda = True

    def prepare(self, module, example, work: Path, tag: str = "model", **options: Any):
        return module

    def time(self, artifact, input_shape: Sequence[int], warmup: int, runs: int, *,
             threads: int | None = None) -> LatencyStats:
        return _torch_cuda(artifact, [int(d) for d in input_shape], warmup, runs)

    def device(self) -> str:
        import torch

        return f"cuda: {torch.cuda.get_device_name()}"


def _torch_cuda(module, shape, warmup, runs) -> LatencyStats:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise BadInputError("the torch-cuda backend times an nn.Module; load the checkpoint first")
    if not torch.cuda.is_available():
        raise UnsupportedError(
            "the torch-cuda backend needs a CUDA GPU; PyTorch sees none (torch.cuda.is_available() is False)"
        )
    device = torch.device("cuda")
    model = copy.deepcopy(module).eval().to(device).half()
    static_input = torch.rand(shape, device=device, dtype=torch.float16)
    replay, _, captured, reason = capture_cuda_graph(model, static_input)
    stream = torch.cuda.current_stream()
    with torch.no_grad():
        for _ in range(warmup):
            replay()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
        for start, end in events:
            start.record(stream)
            replay()
            end.record(stream)
    torch.cuda.synchronize()
    samples = [start.elapsed_time(end) for start, end in events]
    extra = {"cuda_graph": captured}
    if reason:
        extra["cuda_graph_failure"] = reason
    return LatencyStats.from_samples(samples, backend="torch-cuda", device=f"cuda: {torch.cuda.get_device_name()}",
                                     input_shape=shape, precision="fp16", warmup=warmup, extra=extra)


def capture_cuda_graph(model, static_input):
    """Capture one forward pass of ``model`` on ``static_input`` in a CUDA graph.

    Returns (replay, output, captured, failure): calling ``replay()`` reruns the pass on whatever
    ``static_input`` holds and refreshes ``output`` in place. A model that cannot be captured
    (host synchronisation, data-dependent control flow) falls back to eager calls, and
    ``failure`` says why.
    """
    import torch

    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # allocations and lazy initialisation must precede capture
            for _ in range(3):
                model(static_input)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                output = model(static_input)
        except Exception as err:
            torch.cuda.synchronize()
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return (lambda: model(static_input)), None, False, first
    return graph.replay, output, True, None
