"""Can this machine resolve +-10 %? One network timed back to back for ``--seconds``, as the profiler times it (pluto's
``prepare_network`` + ``time_call``: the table runtime's clock, one thread), reported per ``--window`` seconds (issue 11).

A latency table can only be checked to the precision the machine holds still. On a shared VM the same network's
median moves between windows of a few seconds; if those window medians spread by more than a few percent, no table,
calibration or adaptation can put networks within +-10 % of a measurement taken a minute later. Prints the window
medians, their spread (sd of log, max/min) and the share of windows within +-10 % of the overall median; ``--csv``
keeps every window.

    OMP_NUM_THREADS=1 python scripts/timing_noise.py --model resnet18 --input-shape 3,32,32 --seconds 40 \
        --csv docs/results/timing_noise_<date>_<machine>.csv
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.machine import describe  # noqa: E402
from pluto.cost.profiler import prepare_network  # noqa: E402
from pluto.cost.runtimes import Runtime, time_call  # noqa: E402
from pluto.models import create_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", help="registry model")
    ap.add_argument("--input-shape", default="3,32,32", help="C,H,W")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    ap.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "torch"))
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--window", type=float, default=2.0, help="seconds per reported median")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)

    shape = tuple(int(v) for v in args.input_shape.split(","))
    model = create_model(args.model, num_classes=10, in_channels=shape[0]).eval()
    rt = Runtime(args.runtime, "cpu", 1)
    work = prepare_network(rt, model, shape, args.precision)
    time_call(work, samples=5, clock=rt.clock)  # warm
    start, rows = time.perf_counter(), []
    while time.perf_counter() - start < args.seconds:
        t = time_call(work, samples=max(3, int(args.window / 0.1)), min_sample_s=0.1, warmup_s=0.0, clock=rt.clock)
        rows.append({"t_s": round(time.perf_counter() - start, 2), "median_ms": t.median_ms, "iqr_ms": t.iqr_ms})
    frame = pd.DataFrame(rows)
    ms = frame["median_ms"].to_numpy()
    overall = float(np.median(ms))
    print(f"{args.model} {args.input_shape} {args.precision} on {describe()}, {dt.datetime.now():%Y-%m-%d %H:%M}, "
          f"{rt.clock} clock, {len(ms)} windows of ~{args.window:g} s")
    print("window medians (ms): " + " ".join(f"{v:.3f}" for v in ms))
    print(f"median {overall:.3f} ms, sd(log) {100 * np.std(np.log(ms)):.1f} %, max/min {ms.max() / ms.min():.2f}, "
          f"windows within +-10 % of the median: {100 * np.mean(np.abs(ms / overall - 1) <= 0.10):.0f} %")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.csv, index=False)
        print(f"saved {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
