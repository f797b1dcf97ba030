"""Depth vs width on the chip: what dropping residual blocks buys against narrowing every layer.

For a registry model with skippable residual blocks (``pluto.decisions.depth``), every combination of
``--dropped`` blocks (in ``uniform_order``: each stage's identity blocks in turn, ResNet-20 -> 14 -> 8) and
``--widths`` (every stage's channels x w) is exported as pluto deploys it (``network_onnx``: fp32, and int8 through
``ptq`` + pluto's QDQ export with trained-like BatchNorms) and timed round-robin in shuffled order for ``--rounds``
rounds (onnxruntime, 1 thread, median of round medians), beside the table's prediction::

    OMP_NUM_THREADS=1 python scripts/depth_latency.py --table latency_tables/cpu_ort_xeon_amx \
        --csv docs/results/depth_latency_$(date +%F)_<machine>.csv          # nothing else running
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.machine import describe  # noqa: E402
from pluto.cost.model import CostModel  # noqa: E402
from pluto.cost.profiler import interleaved_rounds, network_onnx  # noqa: E402
from pluto.cost.runtimes import Runtime  # noqa: E402
from pluto.cost.table import LatencyTable  # noqa: E402
from pluto.decisions.depth import skip_blocks, skippable_blocks, uniform_order  # noqa: E402
from pluto.models import create_model  # noqa: E402
from _table_out import emit  # noqa: E402  (scripts/_table_out.py)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--table", default="latency_tables/cpu_ort_xeon_amx")
    p.add_argument("--input-shape", default="1,28,28")
    p.add_argument("--dropped", default="0,3,6,7", help="numbers of dropped blocks (uniform_order)")
    p.add_argument("--widths", default="0.5,1.0", help="width factors of every stage")
    p.add_argument("--precisions", default="int8,fp32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=10, help="timing samples per file and round")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    shape = tuple(int(v) for v in args.input_shape.split(","))
    table = LatencyTable.load(args.table)
    rt = Runtime("onnxruntime", "cpu", threads=1)
    x = torch.randn(1, *shape)
    configs, works, predicted = [], [], []
    for dropped in (int(v) for v in args.dropped.split(",")):
        for width in (float(v) for v in args.widths.split(",")):
            torch.manual_seed(0)
            model = create_model(args.model, 10, shape[0], shape[1], width=width).eval()
            sites = skippable_blocks(model)
            if dropped > len(sites):
                raise SystemExit(f"{args.model} has {len(sites)} skippable blocks; --dropped {dropped} is too many")
            skip_blocks(model, sites, uniform_order(sites)[:dropped])
            for precision in args.precisions.split(","):
                configs.append({"dropped_blocks": dropped, "width": width, "precision": precision,
                                "macs": None})
                cost = CostModel(model, (1, *shape), table, precision)
                predicted.append(cost.of_model(model, "latency_ms"))
                configs[-1]["macs"] = float(cost.of_model(model, "macs"))
                works.append(rt.prepare_onnx(network_onnx(model, x, precision), (x,)))
    medians, _ = interleaved_rounds(rt, works, args.rounds, args.samples * args.rounds, progress=True)
    rows = []
    for cfg, pred, m in zip(configs, predicted, medians):
        rows.append({**cfg, "measured_ms": statistics.median(m), "predicted_ms": pred})
    frame = pd.DataFrame(rows)
    for precision in frame.precision.unique():  # latency relative to the full model at the same precision
        full = frame[(frame.precision == precision) & (frame.dropped_blocks == 0) & (frame.width == frame.width.max())]
        if len(full):
            sel = frame.precision == precision
            frame.loc[sel, "vs_full"] = frame.loc[sel, "measured_ms"] / float(full.measured_ms.iloc[0])
    frame["predicted_vs_measured"] = frame.predicted_ms / frame.measured_ms
    emit(frame, f"{args.model} {shape}: dropped blocks x width, onnxruntime 1 thread, batch 1, {describe()}; median "
                f"of {args.rounds} interleaved rounds; predicted by {Path(args.table).name}", args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
