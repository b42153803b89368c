"""How well a latency table's calibration could do: richer fits of the timings it already holds.

A table (``detprune.pruning.latency_measure``) is calibrated as ``measured = scale x layers +
offset`` on the original and uniform cuts, and checked on random cuts. This reads a cached
table and the model it was built for, rebuilds the same calibration cuts (same seed, no new
timing), and fits ``measured`` with one scale, one scale per feature-map resolution, and one
per resolution and kernel (1x1 or larger), each judged by leave-one-out error over all the
whole-model timings. It then prices the accuracy benchmark's two taylor cuts of the fold
(FLOPs-cost at ``--flops``, latency-cost at ``--latency``) under the table's fit and under the
one-scale fit on all timings.

    python benchmarks/latency_table_fit.py --fold 1
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detprune.errors import DetpruneError  # noqa: E402
from detprune.pruning import prune_model  # noqa: E402
from detprune.pruning.latency_measure import UNIFORM_CALIBRATION, cut_copy  # noqa: E402
from detprune.pruning.latency_table import LatencyCost  # noqa: E402
from harness.kfold_args import add_accuracy_args  # noqa: E402
from harness.kfold_baselines import cached_fold  # noqa: E402


def layer_features(model: torch.nn.Module, hw) -> dict[str, tuple[int, int]]:
    """{conv name: (output pixels, kernel size)} from one forward pass."""
    found = {}
    hooks = [
        m.register_forward_hook(
            lambda m, i, o, n=n: found.__setitem__(n, (o.shape[-2] * o.shape[-1], m.kernel_size[0]))
        )
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, *hw))
    for hook in hooks:
        hook.remove()
    return found


def layer_ms(table, coupled, cost_model, removal) -> dict[str, float]:
    """Every table layer's standalone ms at the removal's widths."""
    cost = LatencyCost(table, coupled, cost_model)
    ms = {name: timing.full for name, timing in table.layers.items()}
    for call, c_in, c_out in cost_model.layer_widths(dict(removal)):
        name = cost._name[id(call)]
        ms[name] = table.layers[name].at(c_in, c_out)
    return ms


def leave_one_out(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    errors = []
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        coef, *_ = np.linalg.lstsq(x[rest], y[rest], rcond=None)
        errors.append(abs(x[i] @ coef - y[i]) / y[i])
    return np.array(errors)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--flops", type=float, default=0.5, help="FLOPs kept by the FLOPs-cost cut")
    p.add_argument("--latency", type=float, default=0.61, help="predicted latency kept by the latency-cost cut")
    add_accuracy_args(p, "baselines and cells")
    args = p.parse_args(argv)
    bench, runner, base = cached_fold(args.accuracy_args, args.fold)
    hw = runner.hw
    table = runner.latency_table(base)
    if not table.check.get("rows"):
        raise DetpruneError("the table holds no random-cut timings to fit")

    rng = np.random.default_rng(0)  # the seed calibrate_and_check used: the same cuts, in the same order
    rows = {"original": {name: t.full for name, t in table.layers.items()}}
    plans = [(f"uniform{k:g}", k) for k in UNIFORM_CALIBRATION] + [(r["cut"], None) for r in table.check["rows"]]
    for tag, keep in plans:
        _, (coupled, cost_model, removal) = cut_copy(runner.adapter, base, hw, rng, keep, bench.round_to)
        rows[tag] = layer_ms(table, coupled, cost_model, removal)
    measured = {**{t: v["measured_ms"] for t, v in table.calibration.items()},
                **{r["cut"]: r["measured_ms"] for r in table.check["rows"]}}
    tags = list(rows)
    y = np.array([measured[t] for t in tags])

    features = layer_features(base, hw)
    level = {
        n: int(np.log2(max(1.0, px / min(f[0] for f in features.values())))) // 2 for n, (px, _) in features.items()
    }
    groupings = {"one scale": lambda n: 0,
                 "per resolution": lambda n: level[n.split("#")[0]],
                 "per resolution and kernel": lambda n: (level[n.split("#")[0]], features[n.split("#")[0]][1] > 1)}
    print(f"{len(tags)} whole-model timings (original, {len(UNIFORM_CALIBRATION)} uniform, "
          f"{len(table.check['rows'])} random cuts) of {table.key[:12]}")
    for label, group in groupings.items():
        keys = sorted({group(n) for n in table.layers}, key=str)
        x = np.array([[sum(v for n, v in rows[t].items() if group(n) == k) for k in keys] + [1.0] for t in tags])
        errors = leave_one_out(x, y)
        print(f"  {label:26s} {x.shape[1]} parameters: leave-one-out error {100 * errors.mean():.1f}% mean, "
              f"{100 * errors.max():.1f}% max")

    one = np.array([[sum(rows[t].values()), 1.0] for t in tags])
    (scale, offset), *_ = np.linalg.lstsq(one, y, rcond=None)
    scores, _ = runner.score(copy.deepcopy(base), args.fold, "taylor", bench.seed, {})
    for label, target in (("flops-cost", {"target_flops": args.flops}),
                          ("latency-cost", {"target_latency": args.latency, "cost": "latency"})):
        pruned = prune_model(runner.adapter, copy.deepcopy(base), scores, round_to=bench.round_to, imgsz=hw,
                             allocation="cost", latency_table=table, **target)
        layers = (pruned.achieved["latency"] * table.full_ms - table.offset_ms) / table.scale
        refit = (scale * layers + offset) / (scale * table.layers_full_ms + offset)
        print(f"  taylor / {label:12s} predicted latency kept {pruned.achieved['latency']:.3f} (table's fit), "
              f"{refit:.3f} (one scale on all timings); FLOPs kept {pruned.achieved['flops']:.3f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DetpruneError as err:
        print(f"latency_table_fit: error: {err}", file=sys.stderr)
        sys.exit(2)
