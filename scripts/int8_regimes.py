"""When is int8 faster than fp32 on this CPU? fp32 vs int8 with int8 weights (U8S8) vs uint8 weights (U8U8).

For each model, input resolution and width multiplier (uniform pruning with ``prune_by_importance``,
kept counts snapped to multiples of 8 so every width runs on fast kernels), the model is exported
as pluto deploys it: fp32 ONNX, and int8 QDQ ONNX (``ptq`` W8A8, calibrated on random images) with
``weight_type='s8'`` and ``'u8'`` (:func:`pluto.cost.machine.int8_weight_type` picks one per chip).
Each file runs in onnxruntime (``--threads`` intra-op threads, all graph optimizations) at each batch
size, timed by :func:`pluto.cost.runtimes.time_call` (thread clock for one thread, wall otherwise).
Printed: ms per batch, speed-ups over fp32 (> 1: int8 is faster), how many convs run int8 kernels,
and max |logit| difference between the s8 and u8 files (0 where U8S8 is exact: VNNI/AMX).

Issue #11's figures (Xeon with AMX, 1 thread, batch 1, 28 px): small_cnn 0.185 ms fp32, 0.258 U8U8,
0.201 U8S8; mobilenet_v2 0.43 / 0.69 / 0.49. Run on a quiet machine::

    python scripts/int8_regimes.py --csv docs/results/int8_regimes_$(date +%F).csv
    python scripts/int8_regimes.py --models small_cnn --resolutions 28 --widths 1 --batches 1 --samples 5  # seconds
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.machine import describe, int8_weight_type  # noqa: E402
from pluto.cost.model import CostModel  # noqa: E402
from pluto.cost.runtimes import Runtime, time_call  # noqa: E402
from pluto.decisions.bits import ptq  # noqa: E402
from pluto.decisions.channels import DependencyGraph, prune_by_importance  # noqa: E402
from pluto.materialize.export import export_onnx, optimized_op_types  # noqa: E402
from pluto.models import create_model  # noqa: E402

KINDS = ("fp32", "s8", "u8")


def models_at(name: str, resolution: int, widths: list[float], round_to: int):
    """(width, model) at one resolution: the registered model, uniformly pruned to each width multiplier."""
    torch.manual_seed(0)
    dense = create_model(name, in_channels=1, input_size=resolution).eval()
    graph = DependencyGraph.build(dense, torch.randn(1, 1, resolution, resolution))
    for w in widths:
        yield w, dense if w >= 1.0 else prune_by_importance(dense, graph, ratio=1.0 - w, round_to=round_to)


def export_all(model: torch.nn.Module, resolution: int, folder: Path) -> dict[str, Path]:
    """fp32, int8-weight and uint8-weight QDQ files of ``model`` (int8 calibrated on random images)."""
    x = torch.randn(1, 1, resolution, resolution)
    qmodel = ptq(model, torch.rand(32, 1, resolution, resolution), bits=8)
    return {"fp32": export_onnx(model, x, folder / "fp32.onnx", int8=False),
            "s8": export_onnx(qmodel, x, folder / "s8.onnx", weight_type="s8"),
            "u8": export_onnx(qmodel, x, folder / "u8.onnx", weight_type="u8")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["small_cnn", "resnet18", "mobilenet_v2"])
    ap.add_argument("--resolutions", nargs="+", type=int, default=[28, 32, 64])
    ap.add_argument("--widths", nargs="+", type=float, default=[1.0, 0.5, 0.25], help="width multipliers (<= 1)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--round-to", type=int, default=8, help="channel multiple of the pruned widths")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--csv", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    runtime = Runtime("onnxruntime", "cpu", args.threads)
    print(f"# {describe()}; onnxruntime, {args.threads} thread(s), {runtime.clock} clock, median of {args.samples}; "
          f"this chip's default int8 weights: {int8_weight_type()}")
    print(f"{'model':<13} {'res':>4} {'width':>5} {'batch':>5} {'MMACs':>8} {'fp32 ms':>8} {'s8 ms':>8} {'u8 ms':>8} "
          f"{'s8 x':>5} {'u8 x':>5} {'int8 convs':>10} {'|s8-u8|':>8}  fastest")
    header = ["model", "resolution", "width", "batch", "mmacs", "fp32_ms", "s8_ms", "u8_ms", "s8_speedup",
              "u8_speedup", "int8_convs", "convs", "s8_u8_max_diff", "fastest"]
    rows = []
    for name in args.models:
        for res in args.resolutions:
            for width, model in models_at(name, res, args.widths, args.round_to):
                mmacs = CostModel(model, (1, 1, res, res), None).of_model(model, "macs") / 1e6
                convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
                with tempfile.TemporaryDirectory() as tmp:
                    files = export_all(model, res, Path(tmp))
                    int8_convs = optimized_op_types(files["s8"]).get("QLinearConv", 0)
                    blobs = {k: p.read_bytes() for k, p in files.items()}
                for batch in args.batches:
                    x = torch.randn(batch, 1, res, res)
                    ms, outs = {}, {}
                    for kind in KINDS:
                        work = runtime.prepare_onnx(blobs[kind], (x,))
                        outs[kind] = work.run()[0]
                        ms[kind] = time_call(work, samples=args.samples, clock=runtime.clock).median_ms
                    diff = float(np.abs(outs["s8"] - outs["u8"]).max())
                    fastest = min(KINDS, key=ms.get)
                    print(f"{name:<13} {res:>4} {width:>5.2f} {batch:>5} {mmacs:>8.2f} {ms['fp32']:>8.3f} "
                          f"{ms['s8']:>8.3f} {ms['u8']:>8.3f} {ms['fp32'] / ms['s8']:>5.2f} {ms['fp32'] / ms['u8']:>5.2f} "
                          f"{f'{int8_convs}/{convs}':>10} {diff:>8.1e}  {fastest}", flush=True)
                    rows.append(dict(zip(header, [name, res, width, batch, round(mmacs, 3), round(ms["fp32"], 4),
                                                  round(ms["s8"], 4), round(ms["u8"], 4),
                                                  round(ms["fp32"] / ms["s8"], 3), round(ms["fp32"] / ms["u8"], 3),
                                                  int8_convs, convs, diff, fastest])))
    if args.csv:
        pd.DataFrame(rows, columns=header).to_csv(args.csv, index=False)
        print(f"# wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
