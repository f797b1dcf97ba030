"""How much of a table's held-out miss is the machine's level, and how much its model (issue 11).

A shared VM's speed moves as a whole by ~10 % within minutes. Two questions, answered from ``scripts/fidelity.py``
CSVs (no timing here):

``--repeat A.csv B.csv``  the same networks measured twice: the common level between the runs (median ratio of B's
                          to A's measurement) and how many networks agree within +-10 % / +-5 %, raw and with that one
                          factor divided out — the measurement's own precision, network by network.
``CSV [CSV ...]``         per fidelity run: within +-10 % raw, and with the prediction scaled by the best single
                          factor for that run (the median predicted/measured ratio, an oracle level): the ceiling a
                          perfect level estimate would reach, the rest being the table's per-network error.

    python scripts/fidelity_level.py --repeat docs/results/fidelity_intel-xeon_onnxruntime_fp32_unaligned.csv \\
        docs/results/fidelity_intel-xeon_onnxruntime_fp32_unaligned_adapted.csv
    python scripts/fidelity_level.py docs/results/fidelity_intel-xeon_onnxruntime_*_unaligned*.csv
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd


def within(ratio: np.ndarray, tol: float) -> float:
    return float(np.mean(np.abs(ratio - 1.0) <= tol) * 100)


def level_of(ratio: np.ndarray) -> float:
    return float(np.exp(np.median(np.log(ratio))))


def repeat(a: str, b: str) -> pd.DataFrame:
    x = pd.read_csv(a).set_index("model")["measured_latency_ms"]
    y = pd.read_csv(b).set_index("model")["measured_latency_ms"]
    common = x.index.intersection(y.index)
    if common.empty:
        sys.exit(f"{a} and {b} share no network: run scripts/fidelity.py with the same --families/--n/--seed")
    ratio = (y[common] / x[common]).to_numpy()
    level = level_of(ratio)
    return pd.DataFrame([{"networks": len(common), "level_b_over_a": level,
                          "within10_raw": within(ratio, 0.10), "within5_raw": within(ratio, 0.05),
                          "within10_at_level": within(ratio / level, 0.10),
                          "within5_at_level": within(ratio / level, 0.05)}])


def ceilings(paths: list[str]) -> pd.DataFrame:
    rows = []
    for path in paths:
        frame = pd.read_csv(path)
        ratio = (frame["predicted_latency_ms"] / frame["measured_latency_ms"]).to_numpy()
        level = level_of(ratio)
        rows.append({"csv": path.rsplit("/", 1)[-1], "networks": len(frame), "within10_raw": within(ratio, 0.10),
                     "oracle_level": level, "within10_at_oracle_level": within(ratio / level, 0.10),
                     "within5_at_oracle_level": within(ratio / level, 0.05)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", nargs=2, metavar=("A_CSV", "B_CSV"), help="two measurements of the same networks")
    p.add_argument("csv", nargs="*", help="fidelity CSVs: the ceiling at an oracle level")
    args = p.parse_args(argv)
    if not args.repeat and not args.csv:
        p.error("give --repeat A.csv B.csv and/or fidelity CSVs")
    pd.set_option("display.width", 200)
    if args.repeat:
        print("== the same networks measured twice")
        print(repeat(*args.repeat).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.csv:
        print("== within +-10 %: raw and at the best single level per run")
        print(ceilings(args.csv).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
