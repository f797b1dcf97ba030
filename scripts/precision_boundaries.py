"""What a change of precision between layers costs on this CPU, and what the table predicts for it (issues 11, 13).

The joint search picks int8 or fp32 per layer and prices each layer by its own table entry at that precision. On
onnxruntime an int8 conv runs as QLinearConv in NHWC between a QuantizeLinear and a DequantizeLinear (with layout
transposes), an fp32 conv in NCHWc between reorders; consecutive layers of one precision share those, a change of
precision pays them. This script exports each registry model as pluto deploys it (``ptq`` with the per-layer bits of a
pattern, then pluto's QDQ export; BatchNorms trained-like, :func:`pluto.cost.profiler.as_trained`) for a few bit
patterns over its conv/linear layers:

- ``int8``: every layer int8; ``fp32``: every layer fp32 (plain fp32 export);
- ``first_fp32``: int8 except the first conv (what the main job usually ends with);
- ``half``: the first half of the layers int8, the rest fp32 (one boundary);
- ``alternate``: int8 and fp32 alternating (a boundary at every layer);
- for a saved run (``--runs``: models written by ``pluto.save``, e.g. a sweep's ``joint/*/seed*/run/model.pt``):
  ``chosen``, the bits the run chose, beside ``int8`` and ``first_fp32`` of the same architecture and weights —
  what the run's fp32 islands (shortcut convs, classifier) cost on the chip, and what the table says they cost;

times all files round-robin in shuffled order (``--rounds`` rounds, median of round medians, pluto's runtime and
stopwatch) and prints them beside the prediction of ``pluto.cost.model.CostModel.of_model`` (per-layer bits,
each precision calibrated by its own fit, precision changes priced by the table's boundary fit), and without the
price of the changes (``error_unpriced_changes_pct``).

    OMP_NUM_THREADS=1 python scripts/precision_boundaries.py --csv docs/results/precision_boundaries_<date>_<machine>.csv
    OMP_NUM_THREADS=1 python scripts/precision_boundaries.py --models none \
        --runs 'docs/results/pareto-resnet20-v2/cpu_ort_xeon_amx/joint/*/seed*/run/model.pt'
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.machine import describe  # noqa: E402
from pluto.cost.model import CostModel  # noqa: E402
from pluto.cost.profiler import as_trained, interleaved_rounds, mixed_prediction  # noqa: E402
from pluto.cost.runtimes import Runtime  # noqa: E402
from pluto.cost.table import LatencyTable  # noqa: E402
from pluto.decisions.bits import ptq  # noqa: E402
from pluto.decisions.bits.prepare import quantizable_layers  # noqa: E402
from pluto.materialize.export import export_onnx  # noqa: E402
from pluto.models import create_model  # noqa: E402
from _table_out import emit  # noqa: E402  (scripts/_table_out.py)


def patterns(layers: list[str]) -> dict[str, dict[str, int]]:
    n = len(layers)
    return {"int8": {name: 8 for name in layers},
            "fp32": {name: 32 for name in layers},
            "first_fp32": {name: 32 if i == 0 else 8 for i, name in enumerate(layers)},
            "half": {name: 8 if i < n // 2 else 32 for i, name in enumerate(layers)},
            "alternate": {name: 8 if i % 2 == 0 else 32 for i, name in enumerate(layers)}}


def candidates(names: str, runs: str | None, shape: tuple[int, ...]):
    """(label, trained-like float model, {pattern: bits}) for every registry model of ``names`` and saved run of the
    glob ``runs``."""
    import glob

    from pluto.decisions.bits import strip_quantization
    from pluto.materialize.saving import load

    for name in [n for n in names.split(",") if n and n != "none"]:
        torch.manual_seed(0)
        model = as_trained(create_model(name, num_classes=10, in_channels=shape[0]).eval())
        yield name, model, patterns(quantizable_layers(model))
    root = Path(__file__).resolve().parents[1]
    for path in sorted(glob.glob(runs or "")):
        model, chosen = strip_quantization(load(path).eval())
        mine = patterns(quantizable_layers(model))
        label = str(Path(path).resolve().parent.parent.relative_to(root)) if root in Path(path).resolve().parents \
            else path
        yield label, model, {"chosen": {k: chosen.get(k, 32) for k in mine["int8"]}, "int8": mine["int8"],
                             "first_fp32": mine["first_fp32"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", default="latency_tables/cpu_ort_xeon_amx")
    p.add_argument("--models", default="resnet20,resnet18,mobilenet_v2,small_cnn", help="registry models ('none')")
    p.add_argument("--runs", default=None, help="glob of models saved by pluto.save (a run's model.pt)")
    p.add_argument("--also-table", default=None,
                   help="a second table predicting the same measurements (columns *_also), e.g. a refitted copy")
    p.add_argument("--precision", default="int8", help="the cost model's default precision (its calibration)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    table = LatencyTable.load(args.table)
    also = LatencyTable.load(args.also_table) if args.also_table else None
    rt = Runtime("onnxruntime", "cpu", threads=1)
    shape = (1, 28, 28)
    work, predicted, bit_patterns_of = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, bit_patterns in candidates(args.models, args.runs, shape):
            cost = CostModel(model, shape, table, default_precision=args.precision)
            x = torch.randn(1, *shape)
            for pattern, bits in bit_patterns.items():
                integer = any(b <= 8 for b in bits.values())
                deployed = ptq(model, torch.randn(8, *shape), bits=bits, batches=1, method="minmax") if integer \
                    else model
                path = export_onnx(deployed, x, Path(tmp) / f"{len(work)}.onnx", int8=integer)
                work[(name, pattern)] = rt.prepare_onnx(path.read_bytes(), (x,))
                bit_patterns_of[(name, pattern)] = bits
                predicted[(name, pattern)] = (cost.of_model(model, "latency_ms", bits=bits),
                                              mixed_prediction(table, model, shape, bits, boundaries=False)[0],
                                              CostModel(model, shape, also, default_precision=args.precision)
                                              .of_model(model, "latency_ms", bits=bits) if also else None)
    keys = list(work)  # every file in each of --rounds shuffled rounds: drift hits all alike
    medians, _ = interleaved_rounds(rt, [work[k] for k in keys], args.rounds, args.samples * args.rounds)
    times = dict(zip(keys, medians))
    rows = []
    for (name, pattern), values in times.items():
        ms = statistics.median(values)
        rows.append({"model": name, "bits": pattern, "measured_ms": ms,
                     "vs_int8": ms / statistics.median(times[(name, "int8")]),
                     "fp32_layers": sum(b > 8 for b in bit_patterns_of[(name, pattern)].values()),
                     "predicted_ms": predicted[(name, pattern)][0],
                     "error_pct": (predicted[(name, pattern)][0] / ms - 1) * 100,
                     "error_unpriced_changes_pct": (predicted[(name, pattern)][1] / ms - 1) * 100,
                     **({"predicted_ms_also": predicted[(name, pattern)][2],
                         "error_pct_also": (predicted[(name, pattern)][2] / ms - 1) * 100} if also else {})})
    frame = pd.DataFrame(rows)
    emit(frame, f"precision boundaries, onnxruntime 1 thread, batch 1, {shape}: {describe()}; table {args.table} "
                f"(default precision {args.precision}); median of {args.rounds} interleaved rounds", args.csv)
    # what the search acts on: which bit pattern of a model is cheapest, and by how much the table misses per pattern
    for column, label in (("predicted_ms", args.table), ("predicted_ms_also", args.also_table)):
        if column not in frame:
            continue
        fastest = frame.groupby("model").apply(
            lambda g: g.loc[g.measured_ms.idxmin(), "bits"] == g.loc[g[column].idxmin(), "bits"], include_groups=False)
        error = (frame[column] / frame.measured_ms - 1).abs().groupby(frame.bits).mean() * 100
        print(f"{label}: the fastest bit pattern predicted right for {int(fastest.sum())} of {len(fastest)} models; "
              f"mean |error| per pattern: " + ", ".join(f"{k} {v:.1f} %" for k, v in error.items()))
        runs = frame[frame.model.isin(frame.model[frame.bits == "chosen"])]
        if not runs.empty:  # saved runs: what their fp32 layers beyond the first cost, measured and predicted
            ratios = {name: runs.pivot(index="model", columns="bits", values=col).eval("first_fp32 / chosen")
                      for name, col in (("measured", "measured_ms"), ("predicted", column))}
            print(f"{label}: saved runs, first_fp32 / chosen " + "; ".join(
                f"{k} {v.mean():.2f}x ({v.min():.2f}-{v.max():.2f}x)" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
