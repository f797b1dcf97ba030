"""How much of an isolated op's measured time does a network of such ops actually pay? (issues 11 and 13)

A latency table times every op alone: an int8 entry is a one-op ONNX model quantized with QDQ, so it includes the
QuantizeLinear of its own fp32 input and the DequantizeLinear of its own output. Inside an int8 network those pairs
between consecutive int8 layers are gone (onnxruntime runs QLinearConv -> QLinearConv on uint8 tensors), and they stay
only where the precision changes. A table that sums isolated int8 entries therefore over-prices int8 chains by about
one Q + DQ per layer — a candidate cause of the int8 over-prediction seen on this CPU (ResNet-20 dense int8: 0.428 ms
predicted, 0.303 ms measured, 2026-12-06) and of what "pricing precision changes between layers" has to add.
(Later that day the main cause of that over-prediction turned out to be elsewhere: the table's int8 calibration had
been fitted on untrained networks whose convs onnxruntime could not fuse, see ``scripts/int8_networks.py``.)

This script measures it with pluto's own runtime (``pluto.cost.runtimes.Runtime('onnxruntime')``, the profiler's
path: TorchScript ONNX export, static QDQ with the chip's weight type, ORT_ENABLE_ALL, 1 thread): for each conv shape,
one conv+BN+ReLU alone and a chain of ``--depth`` identical ones, fp32 and int8. Every workload is timed round-robin
in shuffled order for ``--rounds`` rounds (median of round medians), so load drift hits all alike. It prints, per
shape and precision, the isolated time, the chain's time per layer, and their ratio (> 1: the table over-prices a
chain of this op by that factor).

    OMP_NUM_THREADS=1 python scripts/int8_chains.py --rounds 7          # nothing else running
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pluto.cost.machine import int8_weight_type  # noqa: E402
from pluto.cost.profiler import interleaved_rounds  # noqa: E402
from pluto.cost.runtimes import Runtime, cpu_name  # noqa: E402

SHAPES = ((16, 28), (32, 14), (64, 7), (24, 28), (48, 14))  # (channels, resolution): ResNet-20 stages, unaligned


def block(c: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())


def chain(c: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(*[block(c) for _ in range(depth)]).eval()
    for m in model.modules():  # non-trivial BN statistics, as in a trained network
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=8, help="layers in a chain")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--samples", type=int, default=15, help="timing samples per workload and round")
    p.add_argument("--csv", default=None, help="also write the table here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runtime = Runtime("onnxruntime", "cpu", threads=1)
    work = {}
    for c, hw in SHAPES:
        x = (torch.randn(1, c, hw, hw),)
        for precision in ("fp32", "int8"):
            for depth in (1, args.depth):
                work[(c, hw, precision, depth)] = runtime.prepare(chain(c, depth), x, precision)
    keys = list(work)  # every workload in each of --rounds shuffled rounds
    medians, _ = interleaved_rounds(runtime, [work[k] for k in keys], args.rounds, args.samples * args.rounds)
    samples = dict(zip(keys, medians))
    rows = []
    for c, hw in SHAPES:
        for precision in ("fp32", "int8"):
            alone = statistics.median(samples[(c, hw, precision, 1)])
            per_layer = statistics.median(samples[(c, hw, precision, args.depth)]) / args.depth
            rows.append({"channels": c, "hw": hw, "precision": precision, "alone_ms": alone,
                         "in_chain_ms_per_layer": per_layer, "alone_over_chain": alone / per_layer})
    frame = pd.DataFrame(rows)
    print(f"{cpu_name()}, onnxruntime 1 thread, int8 weights {int8_weight_type()}; conv3x3+BN+ReLU alone vs in a "
          f"chain of {args.depth}; median of {args.rounds} interleaved rounds; {dt.datetime.now():%Y-%m-%d %H:%M}")
    print(frame.to_string(index=False, float_format="{:.4f}".format))
    if args.csv:
        frame.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
