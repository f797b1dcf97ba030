"""pluto vs Torch-Pruning: prune the same torchvision models to the same MACs; coverage and time side by side.

    pip install torch-pruning            # benchmark-only; pluto never imports it
    python scripts/bench_pruning.py                          # default model set, 50% MACs
    python scripts/bench_pruning.py --models resnet50 vit_b_16 --target 0.7

Both use L1 filter magnitude, uniform per-group ratios, the classifier protected. pluto: graph build,
bisection on its dependency graph's MAC count and materialize, all timed. Torch-Pruning has no MACs
target: an untimed iterative run (20 steps up to 95% channels) finds the channel ratio that reaches the
goal, then one-shot MetaPruner at that ratio is timed (graph build + step), which favours Torch-Pruning. A row is "ok" when the pruned
model runs, keeps its output shape and removes the target +-5 points of MACs (counted for both with
torch.utils.flop_counter). Time is wall-clock of the pruning call (graph + importance + pruning), median
of --repeats runs, with --threads torch threads.
"""
import argparse
import copy
import statistics
import sys
import time

import pandas as pd
import torch
from torch import nn

from pluto.decisions.channels import DependencyGraph, prune_by_importance
from pluto.decisions.channels.zoo import build_zoo_model, count_macs

DEFAULT = ["resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
           "regnet_y_400mf", "densenet121", "shufflenet_v2_x1_0", "squeezenet1_1", "mnasnet1_0", "googlenet",
           "inception_v3", "convnext_tiny", "vit_b_16", "swin_t"]


def classifier_layers(model: nn.Module, num_classes: int = 1000) -> list[nn.Module]:
    return [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]


def run_pluto(model: nn.Module, x: torch.Tensor, target: float) -> nn.Module:
    graph = DependencyGraph.build(model, x)
    return prune_by_importance(model, graph, importance="l1", macs_reduction=target)


def tp_ratio_for(model: nn.Module, x: torch.Tensor, target: float, steps: int = 20) -> float:
    """Torch-Pruning has no MACs target: find the channel ratio with an (untimed) iterative run."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    base = count_macs(model, x)
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.95, iterative_steps=steps, ignored_layers=classifier_layers(model))
    for k in range(1, steps + 1):
        pruner.step()
        if count_macs(model, x) <= base * (1 - target):
            return 0.95 * k / steps
    return 0.95


def run_tp(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=classifier_layers(model))
    pruner.step()
    return model


def measure(fn, model, x, target, repeats):
    times, small, err = [], None, ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            small = fn(model, x, target)
        except Exception as exc:
            return None, float("nan"), f"error {type(exc).__name__}: {str(exc)[:80]}"
        times.append(time.perf_counter() - t0)
    return small, statistics.median(times), err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=DEFAULT)
    ap.add_argument("--target", type=float, default=0.5, help="fraction of MACs to remove")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        model, x = build_zoo_model(name)
        base = count_macs(model, x)
        with torch.no_grad():
            ref_shape = model(x).shape
        row = {"model": name, "macs_M": base / 1e6}
        for tool in ("pluto", "tp"):
            if tool == "pluto":
                small, seconds, err = measure(run_pluto, model, x, args.target, args.repeats)
            else:
                try:
                    ratio = tp_ratio_for(model, x, args.target)
                    small, seconds, err = measure(run_tp, model, x, ratio, args.repeats)
                except Exception as exc:
                    small, seconds, err = None, float("nan"), f"error {type(exc).__name__}: {str(exc)[:80]}"
            if small is None:
                row.update({f"{tool}_status": err, f"{tool}_drop": float("nan"), f"{tool}_s": float("nan")})
                continue
            try:
                with torch.no_grad():
                    shape = small(x).shape
                drop = 1 - count_macs(small, x) / base
                ok = shape == ref_shape and abs(drop - args.target) <= 0.05
                status = "ok" if ok else (f"shape {tuple(shape)}" if shape != ref_shape else f"missed ({drop:.0%})")
            except Exception as exc:
                drop, status = float("nan"), f"broken model: {type(exc).__name__}"
            row.update({f"{tool}_status": status, f"{tool}_drop": drop, f"{tool}_s": seconds})
        print(row, flush=True)
        rows.append(row)
    df = pd.DataFrame(rows)
    print()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for tool in ("pluto", "tp"):
        ok = df[f"{tool}_status"] == "ok"
        print(f"{tool}: {int(ok.sum())}/{len(df)} ok; median time on models both handle: "
              f"{df.loc[(df.pluto_status == 'ok') & (df.tp_status == 'ok'), f'{tool}_s'].median():.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
