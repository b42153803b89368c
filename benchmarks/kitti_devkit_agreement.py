"""detprune's KITTI devkit protocol against a Python port of the official devkit, on the same files.

For a KITTI folder this writes result files (perfect predictions, then jittered copies per seed
with random scores, duplicates, strays, detections in DontCare regions, short boxes of a random
class on objects and boxes exactly 25 or 40 px tall), runs a devkit port on them and detprune's
``evaluate_kitti(protocol="devkit")`` on the same files read back, and prints the largest
difference in points of the 2D bbox AP_R40 and AP_R11 per class over easy/moderate/hard.

The port is not part of detprune: ``--port`` is the folder of its package, for example
OpenPCDet's ``pcdet/datasets/kitti/kitti_object_eval_python`` (``eval.py`` with ``eval_class``,
``get_mAP`` and ``get_mAP_R40``; ``kitti_common.py`` with ``get_label_annos``). It runs in
``--port-python`` (default: this interpreter), which needs what the port imports (numba; OpenPCDet's
``kitti_common`` also imports scikit-image). Only the 2D metric is used, so the port's CUDA
rotated-IoU module is replaced by a stand-in and no GPU is needed.

    python benchmarks/kitti_devkit_agreement.py --port /path/to/kitti_object_eval_python \
        --data ../shared/data/kitti_tiny --seeds 5 --port-python /path/to/devkit-env/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

LEVELS = ("easy", "moderate", "hard")
CLASSES = ("Car", "Pedestrian", "Cyclist")  # the port's class indices 0, 1, 2
MIN_OVERLAP = (0.7, 0.5, 0.5)


def run_port(port: Path, label_dir: str, frame_ids: list[int], result_dirs: list[str]) -> dict:
    """Inside the port's interpreter: {result dir: {class: {level: [AP_R40, AP_R11]}}} in points."""
    import importlib
    import types

    import numpy as np

    sys.path.insert(0, str(port.parent))
    stand_in = types.ModuleType(f"{port.name}.rotate_iou")

    def rotated_iou_unavailable(*args, **kwargs):
        raise RuntimeError("only the 2D bbox metric is evaluated here")

    stand_in.rotate_iou_gpu_eval = rotated_iou_unavailable
    sys.modules[stand_in.__name__] = stand_in
    common = importlib.import_module(f"{port.name}.kitti_common")
    evaluation = importlib.import_module(f"{port.name}.eval")

    gt = common.get_label_annos(label_dir, frame_ids)
    overlaps = np.array([[MIN_OVERLAP] * 3])  # [overlap set, metric (bbox, bev, 3d), class]
    out = {}
    for result_dir in result_dirs:
        dt = common.get_label_annos(result_dir, frame_ids)
        precision = evaluation.eval_class(gt, dt, [0, 1, 2], [0, 1, 2], 0, overlaps)["precision"]
        r40, r11 = evaluation.get_mAP_R40(precision), evaluation.get_mAP(precision)
        out[result_dir] = {
            name: {level: [float(r40[c, l, 0]), float(r11[c, l, 0])] for l, level in enumerate(LEVELS)}
            for c, name in enumerate(CLASSES)
        }
    return out


def jittered(data, seed: int):
    """Noisy detections of every object and ignore box, plus the cases the devkit's rules single out."""
    import numpy as np

    from detprune.data.types import Detections

    rng = np.random.default_rng(seed)
    out = []
    for s in data.samples:
        boxes, labels = [], []
        for box, label in zip(s.boxes, s.labels):
            w, h = box[2] - box[0], box[3] - box[1]
            if label < 0:
                if rng.random() < 0.5:  # inside a DontCare region
                    cx, cy, f = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, rng.uniform(0.15, 0.5, 2)
                    boxes.append([cx - f[0] * w, cy - f[1] * h, cx + f[0] * w, cy + f[1] * h])
                    labels.append(rng.integers(0, 3))
                continue
            if rng.random() < 0.85:
                boxes.append(box + rng.normal(0, 0.07, 4) * [w, h, w, h])
                labels.append(label if rng.random() > 0.12 else rng.integers(0, 3))
            if rng.random() < 0.1:  # a duplicate
                boxes.append(box + rng.normal(0, 2, 4))
                labels.append(label)
            if rng.random() < 0.3:  # a short box of any class, some exactly at a height limit
                top = round(float(box[1]) + rng.uniform(-2, 2), 2)
                boxes.append([box[0], top, box[2], top + rng.choice([20.0, 24.99, 25.0, 25.01, 39.99, 40.0, 40.01])])
                labels.append(rng.integers(0, 3))
        for _ in range(rng.integers(0, 4)):  # strays
            x, y = rng.uniform(0, s.width - 200), rng.uniform(0, s.height - 160)
            boxes.append([x, y, x + rng.uniform(10, 200), y + rng.uniform(10, 150)])
            labels.append(rng.integers(0, 3))
        out.append(Detections(np.array(boxes, float).reshape(-1, 4), rng.random(len(boxes)), np.array(labels, int)))
    return out


def perfect(data):
    import numpy as np

    from detprune.data.types import Detections

    rng = np.random.default_rng(0)
    keep = [(s.labels >= 0) & ~s.ignore for s in data.samples]
    return [Detections(s.boxes[k], rng.random(int(k.sum())), s.labels[k]) for s, k in zip(data.samples, keep)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", required=True, type=Path, help="folder of the devkit port's package")
    parser.add_argument("--data", required=True, help="KITTI folder (image_2/ + label_2/, or under training/)")
    parser.add_argument("--seeds", type=int, default=5, help="jittered prediction sets (seeds 0..N-1)")
    parser.add_argument("--port-python", default=sys.executable, help="interpreter that runs the port")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # LABEL_DIR OUT_JSON IDS_JSON RESULT_DIR...
    args = parser.parse_args()
    if args.worker:
        label_dir, out_json, ids_json, *result_dirs = args.worker
        Path(out_json).write_text(
            json.dumps(run_port(args.port.resolve(), label_dir, json.loads(Path(ids_json).read_text()), result_dirs))
        )
        return 0

    from detprune.data.kitti import find_kitti_dirs, read_kitti, read_kitti_results
    from detprune.evaluation.kitti import evaluate_kitti
    from detprune.evaluation.kitti_results import write_kitti_results

    data = read_kitti(args.data, "kitti3", progress=False)
    label_dir = find_kitti_dirs(args.data)[1]
    cases = {"perfect": perfect(data), **{f"jittered seed {seed}": jittered(data, seed) for seed in range(args.seeds)}}
    with tempfile.TemporaryDirectory() as tmp:
        ours, folders = {}, {}
        for index, (case, predictions) in enumerate(cases.items()):
            folder = str(Path(tmp) / f"results_{index}")
            write_kitti_results(data, predictions, folder)
            back = read_kitti_results(folder, data.class_names)
            result = evaluate_kitti(data, [back[s.image_id] for s in data.samples], protocol="devkit")
            ours[folder] = {
                c: {
                    lv: [100 * (result["per_class"][c][lv] or 0.0), 100 * (result["per_class_R11"][c][lv] or 0.0)]
                    for lv in LEVELS
                }
                for c in CLASSES
            }
            folders[case] = folder
        ids = Path(tmp) / "ids.json"
        ids.write_text(json.dumps([int(s.image_id) for s in data.samples]))
        theirs_json = Path(tmp) / "port.json"
        subprocess.run([args.port_python, __file__, "--port", str(args.port), "--data", args.data, "--worker",
                        str(label_dir), str(theirs_json), str(ids), *folders.values()], check=True)
        theirs = json.loads(theirs_json.read_text())

    worst = {(c, k): 0.0 for c in CLASSES for k in (0, 1)}
    for case, folder in folders.items():
        print(
            f"{case:>20}  "
            + "  ".join(f"{c} R40 " + "/".join(f"{ours[folder][c][lv][0]:.2f}" for lv in LEVELS) for c in CLASSES)
        )
        for c in CLASSES:
            for lv in LEVELS:
                for k in (0, 1):
                    worst[c, k] = max(worst[c, k], abs(ours[folder][c][lv][k] - theirs[folder][c][lv][k]))
    print("largest |detprune - port| in points over all cases and difficulties:")
    for c in CLASSES:
        print(f"  {c:<10}  AP_R40 {worst[c, 0]:.2e}  AP_R11 {worst[c, 1]:.2e}")
    return 0 if max(worst.values()) <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
