"""detprune's evaluation beside ultralytics' validator, on the same checkpoint, frames and classes.

Writes the frames as an evaluation-only YOLO set, runs ``YOLO(weights).val(...)`` on it (conf
0.001, NMS IoU 0.7, rect batches, on the CPU) and then detprune's evaluation with settings that
step, one change a row, from the closest to ultralytics' to detprune's old defaults, so that the
table decomposes the gap between the two numbers:

  re-run here                          ultralytics' loader images, NMS and metric outside the validator
  predicted boxes clipped              detprune's predict clips them into the image
  detprune's predict, rect, multi-label  detprune's own images and predict, set as ultralytics' val
  pycocotools, 300 then 100 dets       COCO matching and AP; then maxDets 100 (per image and class)
  single-label NMS                     detprune's default (multi_label=False; ultralytics' val is multi-label)
  ignore regions kept                  Van, Person_sitting, DontCare (the YOLO export drops them)
  square letterbox                     = detprune's default evaluation
  NMS IoU 0.6, then max_det 100        the former defaults

Up to "single-label NMS" the ground truth is what the YOLO export writes (objects only, clipped
into the image); from "ignore regions kept" on, detprune's own.

    python benchmarks/compare_validator.py --weights
    runs/accuracy/cache/baseline-a112508d9d59/finetune/train/weights/last.pt \
        --data ../shared/data/kitti_tiny --val-list runs/accuracy/cache/baseline-a112508d9d59/dataset/images/val \
        --imgsz 640 --out runs/compare_validator/fold0-640

``--val-list`` is a file of frame ids (one a line) or a folder whose image names are the ids.
Outputs in ``--out``: ``results.json``, ``results.md`` and the YOLO set (``yolo/``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import ultralytics  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.data.build import build_yolo_dataset  # noqa: E402
from ultralytics.data.utils import check_det_dataset  # noqa: E402
from ultralytics.models.yolo.detect.val import DetectionValidator  # noqa: E402
from ultralytics.utils.metrics import DetMetrics, box_iou  # noqa: E402
from ultralytics.utils.nms import non_max_suppression  # noqa: E402

from detprune.adapters.yolo import YoloAdapter  # noqa: E402
from detprune.data.convert import split_by_ids, write_yolo_dataset  # noqa: E402
from detprune.data.loader import load_dataset, read_id_list  # noqa: E402
from detprune.data.types import DetectionSet, Detections, Sample  # noqa: E402
from detprune.defaults import EVAL_CONF  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402
from detprune.evaluation.coco import _detections, _ground_truth  # noqa: E402
from detprune.evaluation.protocol import evaluate_detections  # noqa: E402
from detprune.utils.atomic import write_text  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="ultralytics checkpoint (.pt)")
    p.add_argument("--data", required=True, help="KITTI folder")
    p.add_argument("--val-list", required=True, help="frame ids: a text file, one a line, or a folder of images")
    p.add_argument("--imgsz", type=int, default=640, help="long side of the input (ultralytics' imgsz)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default="runs/compare_validator")
    return p.parse_args(argv)


def frame_ids(spec: str) -> list[str]:
    path = Path(spec)
    if path.is_dir():
        return sorted(f.stem for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    return read_id_list(path)


def clip(boxes: np.ndarray, sample: Sample) -> np.ndarray:
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, sample.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, sample.height)
    return boxes


def as_exported(dataset: DetectionSet) -> DetectionSet:
    """The ground truth the YOLO export writes: objects only (no ignore regions), clipped into the image."""
    samples = []
    for s in dataset:
        boxes = clip(s.boxes, s)
        keep = np.flatnonzero(~s.ignore & (s.labels >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        samples.append(Sample(s.image_path, s.width, s.height, boxes[keep], s.labels[keep], s.ignore[keep],
                              s.truncation[keep], s.occlusion[keep]))
    return DetectionSet(list(dataset.class_names), samples, f"{dataset.name} (as exported)")


def clipped(dataset: DetectionSet, predictions: list[Detections]) -> list[Detections]:
    """Boxes clipped into their image, as detprune's predict returns them."""
    return [Detections(clip(d.boxes, s), d.scores, d.labels) for s, d in zip(dataset, predictions)]


def nms(raw) -> list[np.ndarray]:
    """ultralytics' NMS as its validator calls it: multi-label (a box above conf in several classes
    gives one detection per class), IoU 0.7, 300 an image."""
    return [row.float().numpy() for row in non_max_suppression(raw, EVAL_CONF, 0.7, multi_label=True, max_det=300)]


def loader_predictions(model, data_yaml: Path, dataset: DetectionSet, imgsz: int, batch_size: int) -> list[Detections]:
    """The validator's inference outside it: the images of ultralytics' val loader (its resampling and
    rect shapes), :func:`nms`, boxes mapped back by the loader's gain and pad, unclipped."""
    data = check_det_dataset(str(data_yaml))
    cfg = get_cfg(overrides={"imgsz": imgsz, "rect": True, "task": "detect", "mode": "val"})
    index = {s.image_path.name: i for i, s in enumerate(dataset)}
    predictions: list = [None] * len(dataset)
    with torch.no_grad():
        for item in build_yolo_dataset(cfg, data["val"], batch_size, data, mode="val", stride=32):
            row = nms(model(item["img"][None].float() / 255))[0]  # one image, on its rect batch's canvas
            (gain_h, gain_w), (pad_x, pad_y) = item["ratio_pad"]
            boxes = (row[:, :4] - [pad_x, pad_y, pad_x, pad_y]) / [gain_w, gain_h, gain_w, gain_h]
            predictions[index[Path(item["im_file"]).name]] = Detections(boxes, row[:, 4], row[:, 5].astype(np.int64))
    return predictions


def ultralytics_metric(dataset: DetectionSet, predictions: list[Detections], work: Path) -> tuple[float, float]:
    """(mAP50, mAP50-95) of ultralytics' validator's matching and AP (DetMetrics) on these predictions."""
    validator = DetectionValidator(save_dir=work)  # for match_predictions and its 10 IoU thresholds
    metrics = DetMetrics(names=dict(enumerate(dataset.class_names)))
    for s, d in zip(dataset, predictions):
        order = np.argsort(-d.scores, kind="stable")  # match_predictions takes them by descending confidence
        iou = box_iou(torch.from_numpy(s.boxes).float(), torch.from_numpy(d.boxes[order]).float())
        tp = validator.match_predictions(torch.from_numpy(d.labels[order]), torch.from_numpy(s.labels), iou).numpy()
        metrics.update_stats({"tp": tp, "conf": d.scores[order], "pred_cls": d.labels[order], "target_cls": s.labels,
                              "target_img": np.unique(s.labels), "im_name": s.image_path.name})
    metrics.process()
    return float(metrics.box.map50), float(metrics.box.map)


def coco_at(dataset: DetectionSet, predictions: list[Detections], max_dets: int) -> tuple[float, float]:
    """pycocotools AP50 and AP as detprune's evaluate_coco builds them, counting ``max_dets`` an image."""
    gt = _ground_truth(dataset)
    evaluator = COCOeval(gt, _detections(gt, predictions), iouType="bbox")
    evaluator.params.maxDets = [1, 10, max_dets]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    # precision: [IoU threshold, recall, class, area range ("all" first), maxDets (ours last)];
    # -1 where a class has no ground truth (summarize() would read only maxDets 100).
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    return float(precision[0][precision[0] > -1].mean()), float(precision[precision > -1].mean())


def detprune_map(dataset: DetectionSet, predictions: list[Detections]) -> tuple[float, float]:
    result = evaluate_detections(dataset, predictions, kitti=False)
    return result["mAP50"], result["mAP"]


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    dataset = load_dataset(args.data)
    _, val = split_by_ids(dataset, frame_ids(args.val_list), source=args.val_list, allow_empty_train=True)
    exported = as_exported(val)
    adapter = YoloAdapter()
    model = adapter.load_checkpoint(args.weights)
    if adapter.class_names(model) != list(val.class_names):
        raise DetpruneError(
            f"{args.weights}: classes {adapter.class_names(model)} are not the data's {val.class_names}"
        )

    data_yaml = write_yolo_dataset(DetectionSet(list(val.class_names), []), val, out / "yolo")
    metrics = ultralytics.YOLO(args.weights).val(
        data=str(data_yaml), imgsz=args.imgsz, conf=EVAL_CONF, iou=0.7, rect=True, batch=args.batch, plots=False,
        device="cpu", workers=0, project=str(out.resolve()), name="ultralytics_val", exist_ok=True)
    rows = [("ultralytics YOLO.val (conf 0.001, NMS 0.7, rect)", float(metrics.box.map50), float(metrics.box.map))]

    work = out / "ultralytics_metric"
    loaded = loader_predictions(model, data_yaml, val, args.imgsz, args.batch)
    rows.append(
        ("re-run here: ultralytics' loader images, NMS and metric", *ultralytics_metric(exported, loaded, work))
    )
    rows.append(("predicted boxes clipped into the image", *ultralytics_metric(exported, clipped(val, loaded), work)))
    def predict(**kw):
        return adapter.predictions(model, val, imgsz=args.imgsz, batch_size=args.batch, progress=False, **kw)

    multi = predict(iou=0.7, max_det=300, letterbox="rect", multi_label=True)
    rows.append(("detprune's predict: rect letterbox, multi-label NMS", *ultralytics_metric(exported, multi, work)))
    rows.append(("pycocotools, 300 detections an image", *coco_at(exported, multi, 300)))
    rows.append(("pycocotools, 100 detections an image (detprune's COCO protocol)", *detprune_map(exported, multi)))
    single = predict(iou=0.7, max_det=300, letterbox="rect")
    rows.append(("single-label NMS (detprune's default, multi_label off)", *detprune_map(exported, single)))
    rows.append(("ignore regions kept (crowd boxes)", *detprune_map(val, single)))
    for label, iou, max_det, letterbox in [("square letterbox (= detprune's default evaluation)", 0.7, 300, "square"),
                                           ("NMS IoU 0.6 (former default)", 0.6, 300, "square"),
                                           ("max_det 100 (former default)", 0.6, 100, "square")]:
        rows.append((label, *detprune_map(val, predict(iou=iou, max_det=max_det, letterbox=letterbox))))

    table = [{"setting": label, "mAP50": 100 * m50, "mAP50-95": 100 * m} for label, m50, m in rows]
    for previous, row in zip(table, table[1:]):
        row["delta_mAP50"] = row["mAP50"] - previous["mAP50"]
        row["delta_mAP50-95"] = row["mAP50-95"] - previous["mAP50-95"]
    settings = {"weights": str(Path(args.weights).resolve()), "data": str(Path(args.data).resolve()),
                "frames": [s.image_id for s in val], "imgsz": args.imgsz, "batch": args.batch,
                "objects": int(sum(s.num_objects for s in val)),
                "ignore_boxes": int(sum(int(s.ignore.sum()) for s in val)),
                "ultralytics": ultralytics.__version__, "torch": torch.__version__}
    return {"settings": settings, "rows": table}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"imgsz {s['imgsz']}, {len(s['frames'])} frames ({s['objects']} objects, {s['ignore_boxes']} ignore boxes), "
        f"ultralytics {s['ultralytics']}, torch {s['torch']}",
        "",
        "| row | setting | mAP50 | Δ | mAP50-95 | Δ |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(result["rows"]):
        d50, d = (f"{r[k]:+.2f}" if k in r else "" for k in ("delta_mAP50", "delta_mAP50-95"))
        lines.append(f"| {chr(ord('a') + i)} | {r['setting']} | {r['mAP50']:.2f} | {d50} | {r['mAP50-95']:.2f} | {d} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except DetpruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = markdown(result)
    print(text)
    out = Path(args.out)
    write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    write_text(out / "results.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
