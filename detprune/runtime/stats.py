"""What a latency measurement reports, and the timing loop every CPU backend shares.

Each backend warms up, then times ``runs`` single inferences one after another and reports
the median, 90th and 99th percentiles and the throughput at the median. Percentiles rather
than the mean, because a detector on a shared machine or a throttling Jetson has a long tail.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from detprune.errors import BadInputError


@dataclass
class LatencyStats:
    """Latency of one model on one backend, in milliseconds per inference of one batch."""

    backend: str
    device: str
    input_shape: list[int]
    precision: str
    warmup: int
    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # images per second at the median latency
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_samples(
        cls,
        samples_ms: Sequence[float],
        *,
        backend: str,
        device: str,
        input_shape: Sequence[int],
        precision: str,
        warmup: int,
        threads: int | None = None,
        extra: dict | None = None,
    ) -> "LatencyStats":
        times = np.asarray(samples_ms, dtype=np.float64)
        if times.size == 0 or not np.all(np.isfinite(times)) or np.any(times < 0):
            raise BadInputError(f"{backend}: no valid timings were recorded")
        median = float(np.median(times))
        batch = int(input_shape[0]) if len(input_shape) else 1
        return cls(
            backend=backend,
            device=device,
            input_shape=[int(d) for d in input_shape],
            precision=precision,
            warmup=int(warmup),
            runs=int(times.size),
            median_ms=median,
            p90_ms=float(np.percentile(times, 90)),
            p99_ms=float(np.percentile(times, 99)),
            mean_ms=float(times.mean()),
            min_ms=float(times.min()),
            max_ms=float(times.max()),
            throughput=batch * 1000.0 / median if median > 0 else float("inf"),
            threads=threads,
            extra=dict(extra or {}),
        )

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.backend} ({self.precision}, {self.device}): median {self.median_ms:.2f} ms, "
            f"p90 {self.p90_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, {self.throughput:.1f} img/s"
        )


def default_threads() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())


def interleaved_samples(runners: Sequence[Callable[[], object]], warmup: int, runs: int) -> list[list[float]]:
    """Per runner, the ms of each of ``runs`` rounds, every round running each runner once.

    Each round starts one runner further on, so no runner always follows the same one.
    """
    for _ in range(warmup):
        for runner in runners:
            runner()
    samples: list[list[float]] = [[] for _ in runners]
    for round_ in range(runs):
        first = round_ % len(runners) if runners else 0
        for k in [*range(first, len(runners)), *range(first)]:
            start = time.perf_counter()
            runners[k]()
            samples[k].append((time.perf_counter() - start) * 1000.0)
    return samples
