"""The tables an evaluation prints, as data: what ``eval --json`` adds so that a CI reads every number.

Each table carries its protocol and the input shape beside its rows, as the printed text does.
"""

from __future__ import annotations

COCO_PROTOCOL = "COCO AP (pycocotools), ignore regions as crowd boxes; fractions in [0, 1]"


def printed_tables(report, *, input_shape: str, letterbox: str) -> dict:
    """{table name: {title, protocol, input_shape, letterbox, columns, rows}} for every table printed."""
    columns = report._columns()
    common = {"input_shape": input_shape, "letterbox": letterbox}
    tables = {
        "summary": {
            "title": "summary",
            "protocol": COCO_PROTOCOL,
            **common,
            "columns": ["metric", *columns],
            "rows": report.summary_rows(),
        }
    }
    per_class = report.per_class_rows()
    if per_class:
        tables["per_class_AP"] = {
            "title": "AP per class (COCO AP@[.5:.95])",
            "protocol": COCO_PROTOCOL,
            **common,
            "columns": ["class", *columns],
            "rows": per_class,
        }
    if any(s.metric("kitti") for s in report.variants.values()):
        label = report.kitti_label()
        tables["kitti"] = {
            "title": label,
            "protocol": label,
            **common,
            "columns": ["class", "difficulty", *columns],
            "rows": report.kitti_rows(),
        }
    return tables
