"""Is a conv's cost behind a neighbour a better unit than its cost alone? (issue 11, the next step for fp32 fidelity)

A table times every unit alone: ONNX Runtime converts its input to the blocked NCHWc layout and back, and the unit runs
from hot caches. Inside a network the neighbours share the layout, and the unit's state follows the network's. This
script times, in the same interleaved rounds, for every distinct conv / depthwise op of held-out pruned networks (the
families and seed of ``scripts/fidelity.py``):

- the unit alone (what a table stores, the per-call overhead subtracted as the profiler does), and
- its *marginal* cost behind a 1x1 conv + BN + ReLU neighbour of its input width: time(neighbour -> unit) -
  time(neighbour alone);

and the whole networks. Each network is then summed both ways (ops other than convs from the table). One row per
network, plus the spread of measured / summed over the networks (sd of the log ratio) and the share within +-10 % at
the best single level. Compare those, not the levels: the table's calibrated prediction is printed beside them.

    OMP_NUM_THREADS=1 python scripts/context_units.py --families resnet50,mobilenet_v2,efficientnet_b0,regnet_x_400mf,resnet18 \\
        --n 20 --csv docs/results/context_units_<date>_<machine>.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.adapt import family_networks  # noqa: E402
from pluto.cost.machine import describe  # noqa: E402
from pluto.cost.ops import extract_ops  # noqa: E402
from pluto.cost.profiler import measure_interleaved, prepare_network  # noqa: E402
from pluto.cost.runtimes import Runtime  # noqa: E402
from pluto.cost.table import LatencyTable, entry_key  # noqa: E402
from pluto.cost.units import build_unit  # noqa: E402
from _table_out import emit  # noqa: E402  (scripts/_table_out.py)


class Behind(nn.Module):
    """``unit`` fed by ``neighbour``: the unit's input arrives in the layout a network's previous conv leaves it in."""

    def __init__(self, neighbour: nn.Module, unit: nn.Module):
        super().__init__()
        self.neighbour, self.unit = neighbour, unit

    def forward(self, x):
        return self.unit(self.neighbour(x))


def neighbour(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()).eval()


def spread(measured: np.ndarray, summed: np.ndarray) -> tuple[float, float, float]:
    """(best single level, sd of log(measured / summed), % within +-10 % at that level)."""
    log_ratio = np.log(measured / summed)
    level = float(np.exp(np.median(log_ratio)))
    return level, float(np.std(log_ratio)), float(np.mean(np.abs(measured / summed / level - 1) <= 0.1) * 100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", default="latency_tables/cpu_ort_xeon_amx")
    p.add_argument("--families", default="resnet50,mobilenet_v2,efficientnet_b0,regnet_x_400mf,resnet18")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--folds", type=int, default=0,
                   help="also fit the table's whole-network calibration (pluto.cost.profiler.fit_calibration) on the "
                        "other folds' networks for each way of summing, and predict this fold's (k-fold by network)")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    table = LatencyTable.load(args.table)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    nets = family_networks(families, [(3, 32, 32), (1, 28, 28)], args.n, args.seed, table.align or 8)
    ops_of = [extract_ops(model, shape) for _, _, model, shape in nets]
    convs = {entry_key(op, "fp32"): op for ops in ops_of for op in ops if op.kind in ("conv", "dwconv")}
    rt = Runtime(table.runtime, "cpu", 1)
    works = []
    for op in convs.values():
        unit, inputs = build_unit(op)
        before = neighbour(inputs[0].shape[1])
        works += [rt.prepare(unit, inputs, "fp32"), rt.prepare(Behind(before, unit), inputs, "fp32"),
                  rt.prepare(before, inputs, "fp32")]
    networks = [prepare_network(rt, model, shape, "fp32") for _, _, model, shape in nets]
    print(f"{len(nets)} networks, {len(convs)} distinct convs: timing {len(works) + len(networks)} workloads")
    times = [t for t, _ in measure_interleaved(rt, works + networks, args.rounds, args.samples, min_sample_s=0.001)]
    overhead = float(table.metadata["overhead_ms"]["fp32"])
    alone, behind = {}, {}
    for i, key in enumerate(convs):
        unit_ms, chain_ms, neighbour_ms = times[3 * i:3 * i + 3]
        alone[key] = max(unit_ms - overhead, 0.05 * unit_ms)
        behind[key] = max(chain_ms - neighbour_ms, 0.05 * unit_ms)
    measured = np.array(times[len(works):])

    def summed(costs: dict) -> np.ndarray:
        return np.array([sum(costs.get(entry_key(op, "fp32"), float(table.lookup(op, "latency_ms", "fp32")))
                             for op in ops) for ops in ops_of])

    sums = {"table entries": summed({}), "units alone now": summed(alone), "units behind a neighbour now": summed(behind),
            "table calibrated": np.array([table.predict_ops(ops, "latency_ms", "fp32") for ops in ops_of])}
    frame = pd.DataFrame({"model": [n[0] for n in nets], "family": [n[1] for n in nets], "measured_ms": measured,
                          **{f"{name} ms": v for name, v in sums.items()}})
    emit(frame, f"whole networks against summed units, {args.table} fp32, onnxruntime 1 thread: {describe()}",
         args.csv, digits=3)
    print("\nmeasured / summed over the networks:")
    for name, v in sums.items():
        level, sd, within = spread(measured, v)
        print(f"  {name:30s} level {level:.3f}  sd(log) {sd:.3f}  within +-10 % at that level {within:.1f} %")
    if args.folds > 1:
        print(f"\ncalibrated on the other {args.folds - 1} folds, predicting each fold's networks:")
        for name, costs in (("table entries", {}), ("units alone now", alone), ("units behind a neighbour now", behind)):
            predicted = cross_validated(table, ops_of, measured, costs, args.folds)
            level, sd, within = spread(measured, predicted)
            print(f"  {name:30s} level {level:.3f}  sd(log) {sd:.3f}  within +-10 % at that level {within:.1f} %")
    return 0


def cross_validated(table: LatencyTable, ops_of: list, measured: np.ndarray, costs: dict, folds: int) -> np.ndarray:
    """Each network predicted by the table's calibration model fitted (``fit_calibration``, the table's own fit as
    the prior) on the other folds, its convs priced by ``costs`` (entry key -> ms), the rest by the table."""
    import copy

    from pluto.cost.adapt import calibration_point
    from pluto.cost.profiler import fit_calibration

    points = [calibration_point(table, ops, float(ms), "fp32", price=lambda op: costs.get(entry_key(op, "fp32")))
              for ops, ms in zip(ops_of, measured)]
    prior = table.metadata["calibration"]["fp32"]["latency_ms"]
    out = np.empty(len(points))
    for k in range(folds):
        test = [i for i in range(len(points)) if i % folds == k]
        fitted = copy.copy(table)
        fitted.metadata = copy.deepcopy(table.metadata)
        fitted.metadata["calibration"]["fp32"]["latency_ms"] = fit_calibration(
            [pt for i, pt in enumerate(points) if i % folds != k], prior_fit=prior)
        for i in test:
            parts, mb, n_ops, _, act, counts = points[i]
            out[i] = float(fitted.calibrate(parts, "latency_ms", "fp32", mb * 1e6, n_ops, act, counts))
    return out


if __name__ == "__main__":
    sys.exit(main())
