"""Widths the chip runs fast: dense vs pruned (any width) vs pruned to multiples of ``--round-to``, measured.

For each model and pruning ratio, ``prune_by_importance`` (l1) removes the same fraction of every
channel group twice: with ``round_to=None`` (kept counts as they fall, e.g. 20 of 32) and with
``round_to=N`` (multiples of N, default the table's ``align``: 8 for onnxruntime's NCHWc kernels).
Each model is timed by :class:`pluto.cost.measure.Measurer` with the table's method (onnxruntime,
its threads and batch, thread clock) and priced by the table; the printout gives the measured
latency, its ratio to dense, the table's prediction, params and MACs.

Issue #11's evidence: mobilenet_v2 at 1x28x28 pruned by ratio 0.36 measured 0.63 ms against 0.31 ms
dense (onnxruntime fp32, 1 thread). Run on a quiet machine (latency figures on a loaded one are noise)::

    python scripts/alignment.py --table latency_tables/cpu_ort_xeon_amx --ratios 0.25 0.36 0.5 0.7
    python scripts/alignment.py --models small_cnn --ratios 0.36 --samples 5 --rounds 1   # seconds: does it run
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.machine import describe  # noqa: E402
from pluto.cost.measure import Measurer  # noqa: E402
from pluto.cost.model import CostModel  # noqa: E402
from pluto.cost.table import LatencyTable  # noqa: E402
from pluto.decisions.channels import DependencyGraph, prune_by_importance  # noqa: E402
from pluto.models import create_model  # noqa: E402


def conv_widths(model: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def variants(name: str, shape: tuple[int, ...], ratios: list[float], round_to: int):
    """(ratio, label, model) for the dense model and each ratio without and with snapping."""
    torch.manual_seed(0)
    dense = create_model(name, in_channels=shape[0], input_size=shape[-1]).eval()
    yield 0.0, "dense", dense
    graph = DependencyGraph.build(dense, torch.randn(1, *shape))
    for ratio in ratios:
        yield ratio, "any width", prune_by_importance(dense, graph, ratio=ratio, round_to=None)
        yield ratio, f"x{round_to}", prune_by_importance(dense, graph, ratio=ratio, round_to=round_to)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default="latency_tables/cpu_ort_xeon_amx", help="sets the method (runtime, threads) and predicts")
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18", "small_cnn"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.36, 0.5, 0.7])
    ap.add_argument("--input", nargs=3, type=int, default=[1, 28, 28], metavar=("C", "H", "W"))
    ap.add_argument("--round-to", type=int, default=None, help="channel multiple (default: the table's align)")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--csv", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    table = LatencyTable.load(args.table)
    round_to = args.round_to or table.align
    shape = tuple(args.input)
    measurer = Measurer(table, samples=args.samples, rounds=args.rounds)
    print(f"# {describe()}; method of {table.metadata.get('name')}: {table.runtime}, {measurer.threads} thread(s), "
          f"batch {measurer.batch}; round_to={round_to}; input 1x{'x'.join(map(str, shape))}")
    header = ["model", "ratio", "widths", "params_k", "mmacs", "measured_ms", "iqr_ms", "vs_dense", "predicted_ms",
              "conv_widths"]
    print(f"{'model':<13} {'ratio':>5} {'widths':<10} {'params k':>9} {'MMACs':>7} {'ms':>7} {'iqr':>6} "
          f"{'x dense':>7} {'table ms':>8}  conv widths")
    rows = []
    for name in args.models:
        dense_ms = None
        for ratio, label, model in variants(name, shape, args.ratios, round_to):
            m = measurer.measure(model, (1, *shape))
            dense_ms = dense_ms or m.latency_ms
            cost = CostModel(model, (1, *shape), table)
            predicted = cost.of_model(model, "latency_ms")
            macs = cost.of_model(model, "macs") / 1e6
            params = sum(p.numel() for p in model.parameters()) / 1e3
            widths = conv_widths(model)
            shown = ",".join(map(str, widths[:8])) + ("..." if len(widths) > 8 else "")
            print(f"{name:<13} {ratio:>5.2f} {label:<10} {params:>9.1f} {macs:>7.2f} {m.latency_ms:>7.3f} "
                  f"{m.latency_iqr_ms:>6.3f} {m.latency_ms / dense_ms:>7.2f} {predicted:>8.3f}  {shown}", flush=True)
            rows.append(dict(zip(header, [name, ratio, label, round(params, 1), round(macs, 3), round(m.latency_ms, 4),
                                          round(m.latency_iqr_ms, 4), round(m.latency_ms / dense_ms, 3),
                                          round(predicted, 4), " ".join(map(str, widths))])))
    if args.csv:
        pd.DataFrame(rows, columns=header).to_csv(args.csv, index=False)
        print(f"# wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
