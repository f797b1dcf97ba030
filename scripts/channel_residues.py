"""Channel residues on the chip: how a unit's time moves with its channel count between two aligned ones.

Every channel count from one multiple of the table's ``align`` to the next (``--start``, default 6 x align) is timed
for 3x3 convs (both channel counts, only the input's, only the output's), 1x1 convs and depthwise 3x3s, in
interleaved rounds (onnxruntime at the table's threads, ``--precision``), and printed relative to the aligned
start, beside what the table predicts (its interpolation, before calibration). Then
:func:`pluto.cost.profiler.probe_near_align` decides whether multiples of a smaller number run near the aligned
kernels; ``--record`` writes its verdict into the table (``near_align``, ``near_align_probe``: what
``pluto profile`` records for new tables) and refits the table's calibration from its stored network measurements
(``pluto table refit``: near-aligned widths get their own calibration groups, ``<group>_q``)::

    OMP_NUM_THREADS=1 python scripts/channel_residues.py --table latency_tables/cpu_ort_xeon_amx \\
        --precision fp32,int8 --csv docs/results/channel_residues_$(date +%F)_<machine>.csv   # nothing else running
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.machine import describe  # noqa: E402
from pluto.cost.ops import OpSpec  # noqa: E402
from pluto.cost.profiler import measure_interleaved, net_of_overhead, probe_near_align, refit  # noqa: E402
from pluto.cost.runtimes import Runtime  # noqa: E402
from pluto.cost.table import LatencyTable  # noqa: E402
from pluto.cost.units import build_unit  # noqa: E402
from pluto.errors import TableError  # noqa: E402
from _table_out import emit  # noqa: E402  (scripts/_table_out.py)

UNITS = {  # name: (kind, kernel, hw, which channel counts vary)
    "conv3x3 both": ("conv", 3, 7, "both"), "conv3x3 cin": ("conv", 3, 7, "cin"),
    "conv3x3 cout": ("conv", 3, 7, "cout"), "conv1x1 both": ("conv", 1, 14, "both"),
    "dwconv3x3": ("dwconv", 3, 14, "both")}


def unit(name: str, c: int, base: int) -> OpSpec:
    kind, kernel, hw, varies = UNITS[name]
    cin = c if varies in ("both", "cin") else base
    cout = c if varies in ("both", "cout") else base
    return OpSpec(kind, name, cin, cout, kernel, 1, cout if kind == "dwconv" else 1, hw, "relu", True)


def priced(table: LatencyTable, op: OpSpec, precision: str) -> float:
    """The table's uncalibrated entry for ``op`` (NaN where the table has no grid for it)."""
    try:
        return float(table.lookup(op, "latency_ms", precision))
    except TableError:
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", default="latency_tables/cpu_ort_xeon_amx")
    p.add_argument("--precision", default="fp32", help="comma-separated")
    p.add_argument("--start", type=int, help="first channel count (default 6 x the table's align)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--record", action="store_true", help="write the probe's verdict into the table and refit it")
    p.add_argument("--csv")
    args = p.parse_args(argv)
    table = LatencyTable.load(args.table)
    precisions = [s.strip() for s in args.precision.split(",") if s.strip()]
    rt = Runtime("onnxruntime", "cpu", int(table.metadata.get("threads") or 1))
    align = table.align
    base = args.start or 6 * align
    widths = range(base, base + align + 1)
    cases = [(pr, name, c, unit(name, c, base)) for pr in precisions for name in UNITS for c in widths]
    works = [rt.prepare(*build_unit(op, 1), pr) for pr, _, _, op in cases]
    times = measure_interleaved(rt, works, args.rounds, samples=12, min_sample_s=0.001, progress=True,
                                desc="residues")
    rows = []
    for (pr, name, c, op), (ms, _) in zip(cases, times):
        rows.append({"precision": pr, "unit": name, "c": c, "residue": c % align,
                     "ms": net_of_overhead(ms, float((table.metadata.get("overhead_ms") or {}).get(pr) or 0.0)),
                     "table_ms": priced(table, op, pr),
                     "group": table.group_of(op)})
    frame = pd.DataFrame(rows)
    first = frame[frame["c"] == base].set_index(["precision", "unit"])["ms"]
    frame["rel_to_aligned"] = frame["ms"] / frame.set_index(["precision", "unit"]).index.map(first).to_numpy()
    frame["measured_over_table"] = frame["ms"] / frame["table_ms"]
    print(f"{describe()} - {args.table} (align {align}, near_align now {table.near_align})")
    wide = frame.pivot_table(index=["precision", "c"], columns="unit", values="rel_to_aligned").reset_index()
    emit(wide, f"time relative to c = {base} (same unit, same precision)", None, 2)
    ratio = frame.pivot_table(index=["precision", "c"], columns="unit", values="measured_over_table").reset_index()
    emit(ratio, "measured / table (interpolated, uncalibrated)", None, 2)
    if args.csv:
        emit(frame, "all rows", args.csv, 4)
    near, probe = probe_near_align(rt, align, tuple(precisions))
    print(f"probe_near_align: near_align = {near}; " + json.dumps(probe["verdict"]))
    if args.record:
        meta = Path(args.table) / "metadata.json"
        table.metadata["near_align"], table.metadata["near_align_probe"] = near, probe
        before = {pr: (table.metadata.get("calibration", {}).get(pr, {}).get("latency_ms") or {})
                  .get("mape_calibrated_pct") for pr in table.precisions}
        refit(table)
        table.save(args.table)
        after = {pr: table.metadata["calibration"][pr]["latency_ms"]["mape_calibrated_pct"] for pr in table.precisions}
        print(f"recorded near_align = {near} in {meta} and refitted: calibration MAPE {before} -> {after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
