"""What an int8 network costs depends on how it was made: untrained vs trained BatchNorms, and whose quantizer.

A latency table is calibrated on whole networks; they stand in for the trained models a compression run deploys.
This script times, per registry model at 1x28x28 (onnxruntime, 1 thread, pluto's runtime and stopwatch), four
files of the same architecture:

- ``fp32``: the exported float network (:func:`pluto.cost.profiler.network_onnx`);
- ``ort_untrained``: onnxruntime's ``quantize_static`` on the network *as created* (every BatchNorm at its initial
  state): every BN folds into the same all-zero bias, the ONNX exporter shares it, and onnxruntime cannot fuse the
  QDQ convs into QLinearConv — how pluto timed calibration and held-out int8 networks before 2026-12-06;
- ``ort_trained``: the same quantizer after :func:`pluto.cost.profiler.as_trained` (trained-like BN statistics):
  residual adds, pooling and the classifier are quantized too;
- ``pluto``: what pluto deploys and what tables are now calibrated on (``network_onnx(..., 'int8')``: ``ptq`` +
  pluto's own QDQ export, residual adds / pooling / classifier in fp32).

Every file is timed round-robin in shuffled order for ``--rounds`` rounds (median of round medians); the number of
nodes that run as fp32 ``Conv`` and as ``QLinearConv`` after onnxruntime's graph optimization is printed beside it.

    OMP_NUM_THREADS=1 python scripts/int8_networks.py --csv docs/results/int8_networks_$(date +%F)_<machine>.csv
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.machine import describe  # noqa: E402
from pluto.cost.profiler import as_trained, interleaved_rounds, network_onnx  # noqa: E402
from pluto.cost.runtimes import Runtime, export_onnx, quantize_qdq  # noqa: E402
from pluto.materialize.export import optimized_op_types  # noqa: E402
from pluto.models import create_model  # noqa: E402
from _table_out import emit  # noqa: E402  (scripts/_table_out.py)

VARIANTS = ("fp32", "ort_untrained", "ort_trained", "pluto")


def files(name: str, shape: tuple[int, ...]) -> dict[str, bytes]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=shape[0]).eval()
    x = torch.randn(1, *shape)
    return {"fp32": network_onnx(model, x, "fp32"),
            "ort_untrained": quantize_qdq(export_onnx(model, (x,)), (x,)),
            "ort_trained": quantize_qdq(export_onnx(as_trained(copy.deepcopy(model)), (x,)), (x,)),
            "pluto": network_onnx(model, x, "int8")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet20,resnet18,mobilenet_v2,small_cnn")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=10, help="timing samples per file and round")
    p.add_argument("--csv", default=None, help="also write the table here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # graph-cleanup warnings of the untrained files
    rt = Runtime("onnxruntime", "cpu", threads=1)
    shape = (1, 28, 28)
    work, convs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for variant, blob in files(name, shape).items():
                path = Path(tmp) / f"{name}_{variant}.onnx"
                path.write_bytes(blob)
                ops = optimized_op_types(path)
                convs[(name, variant)] = (ops.get("Conv", 0), ops.get("QLinearConv", 0))
                work[(name, variant)] = rt.prepare_onnx(blob, (torch.randn(1, *shape),))
    keys = list(work)  # every file in each of --rounds shuffled rounds: drift hits all alike
    medians, _ = interleaved_rounds(rt, [work[k] for k in keys], args.rounds, args.samples * args.rounds)
    times = dict(zip(keys, medians))
    rows = []
    for name in args.models.split(","):
        base = statistics.median(times[(name, "fp32")])
        for variant in VARIANTS:
            ms = statistics.median(times[(name, variant)])
            rows.append({"model": name, "file": variant, "ms": ms, "vs_fp32": ms / base,
                         "Conv_nodes": convs[(name, variant)][0], "QLinearConv_nodes": convs[(name, variant)][1]})
    frame = pd.DataFrame(rows)
    emit(frame, f"int8 networks, onnxruntime 1 thread, batch 1, {shape}: {describe()}; median of {args.rounds} "
                "interleaved rounds", args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
