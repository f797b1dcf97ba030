"""Does ``hw.measure_level`` take a neighbour's load out of a measurement? (issues 11, 13)

A run that measures its candidate in the loop (correction, landing) on a shared 2-vCPU VM while the other core works
reads the chip slower than the quiet machine the table describes: ResNet-20 v2's joint runs, trained two at a time,
landed at 0.80-0.86x of their targets when timed quietly (README, "v3"). ``Measurer(level=True)`` times the table's
reference kernels in the candidate's rounds and divides by the machine's level against the table's calibration.

This script measures one int8 model (pluto's own export, ``Measurer.measure``) raw and level-corrected, alternately,
``--repeats`` times each, first with nothing else running, then with a neighbour on the other core (``--load``:
``matmul``, a float matrix-multiply loop, or ``train``, plain training steps of the same model), and prints the medians
and the loaded / quiet ratios: a ratio nearer 1 is a measurement the neighbour moved less. The measuring process is
pinned to core 0 and the neighbour to core 1.

    OMP_NUM_THREADS=1 python scripts/measure_level.py --csv docs/results/measure_level_<date>_<machine>.csv
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.machine import describe  # noqa: E402
from pluto.cost.measure import Measurer  # noqa: E402
from pluto.cost.profiler import as_trained  # noqa: E402
from pluto.cost.table import LatencyTable  # noqa: E402
from pluto.decisions.bits import ptq  # noqa: E402
from pluto.models import create_model  # noqa: E402
from _table_out import emit  # noqa: E402  (scripts/_table_out.py)

NEIGHBOURS = {
    "matmul": "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n",
    "train": ("import torch\nfrom pluto.models import create_model\ntorch.set_num_threads(1)\n"
              "m = create_model('{model}', 10, 1, 28)\nopt = torch.optim.SGD(m.parameters(), lr=0.01)\n"
              "x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))\nwhile True:\n"
              "    opt.zero_grad()\n    torch.nn.functional.cross_entropy(m(x), y).backward()\n    opt.step()\n"),
}


def measure_both(table: LatencyTable, model, shape, repeats: int, samples: int, rounds: int) -> dict[str, list]:
    raw, levelled, levels = [], [], []
    plain, level = Measurer(table, samples=samples, rounds=rounds), Measurer(table, samples=samples, rounds=rounds,
                                                                              level=True)
    for _ in range(repeats):  # alternately: both see the same load
        raw.append(plain.measure(model, shape).latency_ms)
        m = level.measure(model, shape)
        levelled.append(m.latency_ms)
        levels.append(m.extra.get("level", float("nan")))
    return {"raw": raw, "levelled": levelled, "level": levels}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", default="latency_tables/cpu_ort_xeon_amx")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--load", default="matmul,train", help="neighbours to run on core 1, comma-separated")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: one measures, the other runs the neighbour")
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {0})
    table = LatencyTable.load(args.table)
    shape = (1, 28, 28)
    torch.manual_seed(0)
    model = ptq(as_trained(create_model(args.model, 10, 1, 28).eval()), torch.randn(16, *shape), bits=8, batches=1,
                method="minmax")
    rows, quiet = [], None
    for condition in ["quiet", *[c for c in args.load.split(",") if c]]:
        if condition != "quiet" and condition not in NEIGHBOURS:
            raise SystemExit(f"unknown --load {condition!r}; choose from {', '.join(NEIGHBOURS)}")
        neighbour = None
        if condition != "quiet":
            neighbour = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c",
                                          NEIGHBOURS[condition].format(model=args.model)],
                                         env={**os.environ, "OMP_NUM_THREADS": "1",
                                              "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            time.sleep(3)  # let it reach its steady state
        try:
            got = measure_both(table, model, shape, args.repeats, args.samples, args.rounds)
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        row = {"condition": condition, "raw_ms": statistics.median(got["raw"]),
               "levelled_ms": statistics.median(got["levelled"]), "level": statistics.median(got["level"])}
        quiet = quiet or row
        row.update(raw_vs_quiet=row["raw_ms"] / quiet["raw_ms"],
                   levelled_vs_quiet=row["levelled_ms"] / quiet["levelled_ms"])
        rows.append(row)
    emit(pd.DataFrame(rows), f"{args.model} int8 (pluto's export), onnxruntime 1 thread on core 0, neighbour on core 1: "
                             f"{describe()}; table {args.table}; median of {args.repeats} measurements each", args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
