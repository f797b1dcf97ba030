"""Where does a whole network's time go, against the table's isolated entries? (issue 11, fp32 fidelity)

The table sums ops timed alone; a network runs them in context (shared layouts, warm caches, fused neighbours) plus
nodes no entry prices (NCHWc reorders, transposes, Q/DQ). This script runs held-out networks (the families and seed
``scripts/fidelity.py`` uses, exported as pluto deploys them: :func:`pluto.cost.profiler.network_onnx`) under
onnxruntime's own profiler (1 thread, all graph optimizations), sums the per-node kernel times by class, and puts them
beside the table's entry sums for the same network:

- ``conv_ratio``: in-context time of the conv nodes (Conv, FusedConv, NchwcConv, QLinearConv) / the table's conv and
  depthwise entries (uncalibrated) — above 1 the entries are too cheap in context, below 1 too dear;
- ``layout_share`` / ``quant_share``: share of the network's node time in layout nodes (ReorderInput/Output,
  Transpose) and in Quantize/Dequantize nodes, which no entry prices directly;
- ``other_ratio``: the remaining nodes (pooling, adds, activations, classifier) / the table's other entries.

Node times come from the profiler (its own overhead per node included), so the ratios, not the absolute sums, are the
result. Prints a row per network and the per-family medians; writes a CSV with ``--csv``.

    OMP_NUM_THREADS=1 python scripts/in_context.py --families zoo --n 22 --csv docs/results/in_context_<date>_<machine>.csv
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.adapt import ZOO_FAMILIES, family_networks  # noqa: E402
from pluto.cost.machine import describe  # noqa: E402
from pluto.cost.ops import extract_ops  # noqa: E402
from pluto.cost.profiler import network_onnx  # noqa: E402
from pluto.cost.table import LatencyTable  # noqa: E402
from _table_out import emit  # noqa: E402  (scripts/_table_out.py)

CONV = {"Conv", "FusedConv", "NchwcConv", "QLinearConv", "ConvInteger"}
LAYOUT = {"ReorderInput", "ReorderOutput", "Transpose"}
QUANT = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def node_times(model: bytes, x: torch.Tensor, runs: int) -> dict[str, float]:
    """Mean microseconds per inference by ONNX op type, from onnxruntime's profiler (1 thread)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(20):  # warm-up, not profiled
            session.run(None, feed)
        profiled = ort.SessionOptions()
        profiled.intra_op_num_threads, profiled.inter_op_num_threads = 1, 1
        profiled.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        profiled.log_severity_level = 3
        profiled.enable_profiling = True
        profiled.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(model, profiled, providers=["CPUExecutionProvider"])
        for _ in range(10 + runs):
            session.run(None, feed)
        path = session.end_profiling()
        events = json.loads(Path(path).read_text())
    # the first 10 runs of the profiled session are its warm-up: keep the node events of the last ``runs`` runs only
    session_runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(session_runs) != 10 + runs:
        raise RuntimeError(f"onnxruntime's profile holds {len(session_runs)} runs, not {10 + runs}: cannot attribute "
                           "node times to runs")
    start = session_runs[10]
    out: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            out[e["args"].get("op_name", "?")] += e["dur"] / runs
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", default="latency_tables/cpu_ort_xeon_amx")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--families", default="zoo")
    p.add_argument("--input-shape", action="append", default=None, help="C,H,W (repeatable; default 1,28,28 and 3,32,32)")
    p.add_argument("--n", type=int, default=22)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--runs", type=int, default=100, help="profiled inferences per network")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    table = LatencyTable.load(args.table)
    shapes = [tuple(int(v) for v in s.split(",")) for s in (args.input_shape or ["1,28,28", "3,32,32"])]
    names = ZOO_FAMILIES if args.families == "zoo" else [f.strip() for f in args.families.split(",") if f.strip()]
    rows = []
    for label, family, model, shape in family_networks(names, shapes, args.n, args.seed, table.align or 8):
        x = torch.randn(1, *shape)
        ops = extract_ops(model, shape)
        entries = {"conv": 0.0, "other": 0.0}
        for op in ops:
            entries["conv" if op.kind in ("conv", "dwconv") else "other"] += float(
                table.lookup(op, "latency_ms", args.precision)) * 1e3
        by_type = node_times(network_onnx(model, x, args.precision), x, args.runs)
        total = sum(by_type.values())
        conv = sum(v for k, v in by_type.items() if k in CONV)
        layout = sum(v for k, v in by_type.items() if k in LAYOUT)
        quant = sum(v for k, v in by_type.items() if k in QUANT)
        other = total - conv - layout - quant
        rows.append({"model": label, "family": family, "node_us": total,
                     "table_sum_us": entries["conv"] + entries["other"],
                     "table_predicted_us": table.predict_ops(ops, "latency_ms", args.precision) * 1e3,
                     "conv_ratio": conv / entries["conv"] if entries["conv"] else float("nan"),
                     "other_ratio": other / entries["other"] if entries["other"] else float("nan"),
                     "layout_share": layout / total, "quant_share": quant / total})
    frame = pd.DataFrame(rows)
    emit(frame, f"in-context node times vs table entries, {args.table} {args.precision}, onnxruntime 1 thread: "
                f"{describe()}", args.csv, digits=3)
    print("\nper family (medians):")
    print(frame.groupby("family")[["conv_ratio", "other_ratio", "layout_share", "quant_share"]].median()
          .to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
