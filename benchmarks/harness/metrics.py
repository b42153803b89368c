"""The metric columns the benchmarks report, in points (AP x 100), read from ``adapter.evaluate``'s dict."""

from __future__ import annotations


def points(value) -> float | None:
    """An AP fraction in points; None stays None (a metric the evaluation could not compute)."""
    return None if value is None else 100.0 * float(value)


def metrics_of(result: dict, class_names: list[str]) -> dict:
    """mAP50, mAP50-95, AP_small, AP per class and KITTI moderate / hard (mean over classes)."""
    kitti = result.get("kitti") or {}
    row = {"mAP50": points(result.get("mAP50")), "mAP50-95": points(result.get("mAP")),
           "AP_small": points(result.get("AP_small"))}
    for name in class_names:
        row[f"AP {name}"] = points((result.get("per_class_AP") or {}).get(name))
    for level in ("moderate", "hard"):
        row[f"KITTI {level}"] = points((kitti.get("mean") or {}).get(level))
    return row
