"""A run's report: the same protocol's numbers for the model before pruning, after, and any other variant.

One :class:`Report` holds named :class:`ModelSummary` objects (``before`` and ``after``, or
one per criterion, ratio, ...) and free-form run information. It renders JSON for machines
(:meth:`Report.to_json`, read back by :meth:`Report.load`), Markdown for people
(:meth:`Report.to_markdown`) and a plain table for the terminal (:meth:`Report.to_table`).
Deltas are against the baseline variant: the one named when the report is made (e.g. an
unpruned model trained as long as the pruned ones), else ``before`` when present, else the first.
:meth:`Report.save` embeds the run's figures in the Markdown.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from detprune.errors import BadInputError
from detprune.utils.atomic import write_text

FORMAT = "detprune-report/1"
SUMMARY_METRICS: tuple[tuple[str, str], ...] = (
    ("mAP", "mAP50-95"),
    ("mAP50", "mAP50"),
    ("mAP75", "mAP75"),
    ("AP_small", "AP small (area < 32²)"),
    ("AP_medium", "AP medium (32²-96²)"),
    ("AP_large", "AP large (area > 96²)"),
    ("AR100", "AR@100"),
)
# per-variant facts from ``info`` shown under the numbers when any variant has them: how each
# model was made, so a table compares like with like
INFO_ROWS: tuple[tuple[str, str], ...] = (
    ("epochs", "Epochs trained"),
    ("allocation", "Allocation"),
    ("distillation", "Distillation"),
)
KITTI_LEVELS = ("easy", "moderate", "hard")
MOST_PRUNED_ROWS = 10
MISSING = "–"
DEVIATION_MARK = "†"  # on the KITTI label where the labels depart from KITTI's; the note says how


@dataclass
class Latency:
    """Measured inference time of one model on one backend, in milliseconds."""

    median_ms: float
    p90_ms: float
    backend: str

    @classmethod
    def coerce(cls, value: "Latency | Mapping | None") -> "Latency | None":
        if value is None or isinstance(value, Latency):
            return value
        try:
            return cls(float(value["median_ms"]), float(value["p90_ms"]), str(value["backend"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"latency {dict(value)!r}: needs median_ms, p90_ms and backend ({exc})") from None


@dataclass
class ModelSummary:
    """Everything the report says about one model.

    ``metrics`` is what :func:`~detprune.evaluation.protocol.evaluate_detections` returned;
    ``flops`` is the count the pruner measures (the report shows it in G); ``channels`` maps
    each prunable layer to its output channels, in network order; ``info`` is free-form
    (checkpoint path, criterion, target, ...).
    """

    metrics: dict = field(default_factory=dict)
    params: int | None = None
    flops: float | None = None
    latency: Latency | None = None
    channels: dict[str, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.latency = Latency.coerce(self.latency)
        self.channels = {str(k): int(v) for k, v in (self.channels or {}).items()}
        self.params = None if self.params is None else int(self.params)
        self.flops = None if self.flops is None else float(self.flops)

    def metric(self, path: str) -> Any:
        """A metric by dotted path, e.g. ``"mAP50"`` or ``"kitti.mean.moderate"``; None if absent."""
        value: Any = self.metrics
        for key in path.split("."):
            if not isinstance(value, Mapping) or key not in value:
                return None
            value = value[key]
        return value

    def to_dict(self) -> dict:
        return {
            "metrics": _plain(self.metrics),
            "params": self.params,
            "flops": self.flops,
            "latency": None if self.latency is None else _plain(vars(self.latency)),
            "channels": dict(self.channels),
            "info": _plain(self.info),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "ModelSummary":
        return cls(
            metrics=dict(data.get("metrics") or {}),
            params=data.get("params"),
            flops=data.get("flops"),
            latency=data.get("latency"),
            channels=dict(data.get("channels") or {}),
            info=dict(data.get("info") or {}),
        )


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, paths to str, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class Report:
    """Named model summaries of one run, with the run's configuration."""

    def __init__(self, variants: Mapping[str, ModelSummary] | None = None, run_info: Mapping | None = None,
                 baseline: str | None = None) -> None:
        self.variants: dict[str, ModelSummary] = {}
        self.run_info: dict = _plain(dict(run_info or {}))
        self.reference = baseline  # the variant the deltas are taken against (None: the default rule)
        for name, summary in (variants or {}).items():
            self.add(name, summary)

    @classmethod
    def from_pair(cls, before: ModelSummary, after: ModelSummary, run_info: Mapping | None = None) -> "Report":
        return cls({"before": before, "after": after}, run_info)

    def add(self, name: str, summary: ModelSummary | Mapping) -> "Report":
        """Add (or replace) a variant; returns self so calls chain."""
        self.variants[str(name)] = summary if isinstance(summary, ModelSummary) else ModelSummary.from_dict(summary)
        return self

    @property
    def baseline(self) -> str | None:
        if self.reference in self.variants:
            return self.reference
        if "before" in self.variants:
            return "before"
        return next(iter(self.variants), None)

    @property
    def compared(self) -> list[str]:
        """The variants set against the baseline."""
        return [name for name in self.variants if name != self.baseline]

    # -- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "baseline": self.baseline,
            "run": _plain(self.run_info),
            "variants": [{"name": name, **summary.to_dict()} for name, summary in self.variants.items()],
        }

    def to_json(self) -> str:
        """Stable JSON: fixed top-level and per-variant keys, variants and layers in insertion order."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping) -> "Report":
        if data.get("format") != FORMAT or not isinstance(data.get("variants"), list):
            raise BadInputError(f"not a detprune report (expected format '{FORMAT}' with a 'variants' list)")
        report = cls(run_info=data.get("run") or {}, baseline=data.get("baseline"))
        for entry in data["variants"]:
            entry = dict(entry)
            report.add(entry.pop("name"), ModelSummary.from_dict(entry))
        return report

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        """Read a ``report.json`` (or the folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise BadInputError(f"{path}: no such report file") from None
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        try:
            return cls.from_dict(data)
        except BadInputError as exc:
            raise BadInputError(f"{path}: {exc}") from None

    def save(self, out_dir: str | Path, figures: Mapping[str, str] | None = None) -> dict[str, Path]:
        """Write ``report.json`` and ``report.md`` into ``out_dir`` atomically; returns their paths.

        ``figures`` ({file name relative to ``out_dir``: caption}) are embedded in the Markdown.
        """
        out_dir = Path(out_dir)
        return {
            "json": write_text(out_dir / "report.json", self.to_json()),
            "markdown": write_text(out_dir / "report.md", self.to_markdown(figures)),
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Report) and self.to_dict() == other.to_dict()

    # -- tables -----------------------------------------------------------------------
    def _columns(self) -> list[str]:
        return list(self.variants) + [f"Δ {name}" for name in self.compared]

    def summary_rows(self) -> list[list[str]]:
        """Rows of the headline table: metrics, size, speed; one column per variant, then deltas."""
        rows = []
        for key, label in SUMMARY_METRICS:
            rows.append(self._row(label, lambda s, k=key: s.metric(k), _fmt_metric, _delta_abs))
        kitti_levels = [
            lvl
            for lvl in KITTI_LEVELS
            if any(s.metric(f"kitti.mean.{lvl}") is not None for s in self.variants.values())
        ]
        for level in kitti_levels:
            rows.append(
                self._row(
                    f"{self.kitti_label()} {level}",
                    lambda s, lv=level: s.metric(f"kitti.mean.{lv}"),
                    _fmt_metric,
                    _delta_abs,
                )
            )
        rows.append(self._row("Parameters", lambda s: s.params, lambda v: _fmt_scaled(v, 1e6, "M"), _delta_rel))
        rows.append(self._row("FLOPs", lambda s: s.flops, lambda v: _fmt_scaled(v, 1e9, "G"), _delta_rel))
        if any(s.latency for s in self.variants.values()):
            rows.append(
                self._row("Latency median (ms)", lambda s: s.latency and s.latency.median_ms, _fmt_ms, _delta_rel)
            )
            rows.append(self._row("Latency p90 (ms)", lambda s: s.latency and s.latency.p90_ms, _fmt_ms, _delta_rel))
            rows.append(
                [
                    "Latency backend",
                    *[s.latency.backend if s.latency else MISSING for s in self.variants.values()],
                    *[""] * len(self.compared),
                ]
            )
        for key, label in INFO_ROWS:
            if any(key in s.info for s in self.variants.values()):
                cells = [MISSING if s.info.get(key) is None else str(s.info[key]) for s in self.variants.values()]
                rows.append([label, *cells, *[""] * len(self.compared)])
        return rows

    def _row(self, label: str, get, fmt, delta) -> list[str]:
        values = {name: get(summary) for name, summary in self.variants.items()}
        base = values.get(self.baseline)
        return [label, *[fmt(v) for v in values.values()], *[delta(values[name], base) for name in self.compared]]

    def per_class_rows(self) -> list[list[str]]:
        names = _union(s.metric("per_class_AP") or {} for s in self.variants.values())
        return [
            self._row(c, lambda s, c=c: (s.metric("per_class_AP") or {}).get(c), _fmt_metric, _delta_abs) for c in names
        ]

    def kitti_label(self) -> str:
        """The KITTI numbers' name with their protocol, e.g. ``KITTI AP_R40 (devkit)``, and how the labels
        depart from KITTI's where they do; metrics without a ``protocol`` come from before the devkit
        protocol existed, so are ``exact``."""
        protocols = sorted({s.metric("kitti.protocol") or "exact" for s in self.variants.values() if s.metric("kitti")})
        label = f"KITTI AP_R40 ({', '.join(protocols) or 'devkit'})"
        return f"{label}{DEVIATION_MARK}" if self.kitti_deviation() else label

    def kitti_deviation(self) -> str:
        """How the evaluated labels depart from KITTI's (``kitti.deviation``), '' where they don't."""
        found = dict.fromkeys(
            s.metric("kitti.deviation") for s in self.variants.values() if s.metric("kitti.deviation")
        )
        return "; ".join(found)

    def kitti_note(self) -> list[str]:
        """The line that the mark on the KITTI label points to (none where the labels are KITTI's)."""
        deviation = self.kitti_deviation()
        return [f"{DEVIATION_MARK} KITTI labels not as the devkit's: {deviation}"] if deviation else []

    def kitti_rows(self) -> list[list[str]]:
        classes = _union(s.metric("kitti.per_class") or {} for s in self.variants.values())
        rows = []
        for group in [*classes, None]:  # None: the mean over classes

            def get(summary: ModelSummary, level: str, group=group):
                table = (
                    summary.metric("kitti.mean")
                    if group is None
                    else (summary.metric("kitti.per_class") or {}).get(group)
                )
                return (table or {}).get(level)

            for level in KITTI_LEVELS:
                row = self._row(group or "mean", lambda s, lv=level: get(s, lv), _fmt_metric, _delta_abs)
                rows.append([row[0], level, *row[1:]])
        return rows

    def channel_rows(self) -> tuple[list[list[str]], list[list[str]]]:
        """(totals per variant, the layers pruned the most) against the baseline's channel counts."""
        base = self.variants[self.baseline].channels if self.baseline else {}
        totals = [
            ["Layers", *[str(len(s.channels)) if s.channels else MISSING for s in self.variants.values()]],
            [
                "Channels",
                *[
                    _fmt_kept(sum(s.channels.values()), sum(base.values())) if s.channels else MISSING
                    for s in self.variants.values()
                ],
            ],
            [
                "Layers pruned",
                *[
                    str(sum(s.channels.get(k, n) < n for k, n in base.items())) if s.channels else MISSING
                    for s in self.variants.values()
                ],
            ],
        ]
        kept = {
            layer: min(
                (self.variants[v].channels.get(layer, n) / n for v in self.compared if self.variants[v].channels),
                default=1.0,
            )
            for layer, n in base.items()
            if n
        }
        worst = [layer for layer in sorted(kept, key=kept.get) if kept[layer] < 1.0][:MOST_PRUNED_ROWS]
        layers = [
            [layer, *[_fmt_kept(s.channels.get(layer), base[layer]) for s in self.variants.values()]] for layer in worst
        ]
        return totals, layers

    # -- rendering --------------------------------------------------------------------
    def to_markdown(self, figures: Mapping[str, str] | None = None) -> str:
        """The report for people; ``figures`` ({file: caption}) are embedded after the summary."""
        lines = ["# detprune report", ""]
        if self.run_info:
            lines += [f"- **{key}**: {_fmt_info(value)}" for key, value in self.run_info.items()] + [""]
        if not self.variants:
            return "\n".join(lines + ["No models evaluated.", ""])
        lines += ["## Summary", "", *_markdown(["Metric", *self._columns()], self.summary_rows()), ""]
        lines += [*self.kitti_note(), ""] if self.kitti_note() else []
        if self.compared:
            lines += [f"Δ: each model minus `{self.baseline}`; AP as a difference on its 0-1 scale, parameters, "
                      "FLOPs and latency as a relative change. AP is COCO's: mAP50-95 averages the IoU thresholds "
                      "0.50 to 0.95; object areas are in pixels of the evaluated images.", ""]
        if figures:
            lines += ["## Figures", ""]
            for name, caption in figures.items():
                lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        per_class = self.per_class_rows()
        if per_class:
            lines += ["## AP per class (COCO AP50-95)", "", *_markdown(["Class", *self._columns()], per_class), ""]
        if any(s.metric("kitti") for s in self.variants.values()):
            lines += [
                f"## {self.kitti_label()}",
                "",
                *_markdown(["Class", "Difficulty", *self._columns()], self.kitti_rows(), 2),
                "",
            ]
            lines += [*self.kitti_note(), ""] if self.kitti_note() else []
        if any(s.channels for s in self.variants.values()):
            totals, layers = self.channel_rows()
            lines += ["## Channels kept", "", *_markdown(["", *self.variants], totals), ""]
            if layers:
                lines += [f"Most pruned layers (channels kept, share of {self.baseline}):", ""]
                lines += [*_markdown(["Layer", *self.variants], layers), ""]
        return "\n".join(lines)

    def to_table(self) -> str:
        """The summary as aligned plain text, for the end of a command's output."""
        if not self.variants:
            return "no models evaluated"
        rows = self.summary_rows()
        backends = {s.latency.backend for s in self.variants.values() if s.latency}
        note = []
        if len(backends) == 1 and all(s.latency for s in self.variants.values()):  # one backend: said once, below
            rows = [r for r in rows if r[0] != "Latency backend"]
            note = [f"latency: {backends.pop()}"]
        return "\n".join(_plain_table(["Metric", *self._columns()], rows) + note + self.kitti_note())

    def to_detail_tables(self) -> str:
        """AP per class and KITTI AP per class and difficulty as aligned plain text ('' where neither)."""
        parts = []
        per_class = self.per_class_rows()
        if per_class:
            parts.append("\n".join(_plain_table(["Class (AP50-95)", *self._columns()], per_class)))
        if any(s.metric("kitti") for s in self.variants.values()):
            rows = [[f"{r[0]} {r[1]}", *r[2:]] for r in self.kitti_rows()]
            parts.append("\n".join(_plain_table([self.kitti_label(), *self._columns()], rows) + self.kitti_note()))
        return "\n\n".join(parts)

    def __repr__(self) -> str:
        return f"Report(variants={list(self.variants)}, baseline={self.baseline!r})"


def _union(mappings: Iterable[Mapping]) -> list[str]:
    names: dict[str, None] = {}
    for mapping in mappings:
        names.update(dict.fromkeys(mapping))
    return list(names)


def _fmt_metric(value) -> str:
    return MISSING if value is None else f"{value:.3f}"


def _fmt_scaled(value, unit: float, suffix: str) -> str:
    return MISSING if value is None else f"{value / unit:.2f} {suffix}"


def _fmt_ms(value) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _fmt_kept(value, base) -> str:
    if value is None:
        return MISSING
    return f"{value} ({value / base:.0%})" if base else str(value)


def _fmt_info(value, nested: bool = False) -> str:
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}={_fmt_info(v, True)}" for k, v in value.items())
        return f"({text})" if nested else text
    return f"`{value}`"


def _delta_abs(value, base) -> str:
    return MISSING if value is None or base is None else f"{value - base:+.3f}"


def _delta_rel(value, base) -> str:
    return MISSING if value is None or not base else f"{(value - base) / base:+.1%}"


def _markdown(headers: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    align = ["---"] * text_columns + ["---:"] * (len(headers) - text_columns)
    return ["| " + " | ".join(r) + " |" for r in [headers, align, *rows]]


def _plain_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *[line(r) for r in rows]]
