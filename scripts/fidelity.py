"""Fidelity of a latency table: predicted vs measured end-to-end cost of held-out networks.

For each shipped table, on the device it was measured on, draws held-out networks from the
table's own space (different seed than the calibration networks): random MBConv subnets (kernel,
expansion, depth, pruned widths), layer-wise pruned and uniformly width-scaled ResNet-18s, and
width-scaled small CNNs; measures each end to end with the table's runtime, predicts it from the
table, and reports % of networks within +-10%, MAPE and Spearman rank correlation (nn-Meter's
headline: 99.0% within +-10% on a mobile CPU). Writes a scatter PNG and per-model CSV.

    python scripts/fidelity.py --table latency_tables/cpu_ort --precision fp32 --n 60
    python scripts/fidelity.py --table latency_tables/cpu_ort --precision fp32 --n 60 --align 8
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.cost.energy import open_meter  # noqa: E402
from pluto.cost.ops import extract_ops  # noqa: E402
from pluto.cost.profiler import measure, prepare_network  # noqa: E402
from pluto.cost.runtimes import Runtime  # noqa: E402
from pluto.cost.samples import MBConvSpace, random_mbconv, random_resnet  # noqa: E402
from pluto.cost.space import ProfileSpace  # noqa: E402
from pluto.cost.table import LatencyTable, weight_bytes  # noqa: E402
from pluto.models import create_model  # noqa: E402


def held_out(space: ProfileSpace, n: int, seed: int, align: int) -> list[tuple[str, torch.nn.Module, tuple]]:
    """~50% MBConv subnets, ~35% pruned/width-scaled ResNet-18, ~15% width-scaled small CNNs."""
    rng = random.Random(seed)
    mb = [MBConvSpace.from_dict({"min_width": space.min_width, **s}) for s in space.mbconv]
    res = [(s.get("in_channels", 1), s.get("input_size", 28)) for s in space.resnet]
    small = [m for m in space.models if m.get("name") == "small_cnn"]
    nets = []
    for i in range(n):
        r = i % 20
        if mb and r < 10:
            sp = mb[i % len(mb)]
            nets.append((f"mbconv_{i}", random_mbconv(rng, sp, prune=True, align=align),
                         (sp.in_channels, sp.input_size, sp.input_size)))
        elif res and r < 17:
            c, hw = res[i % len(res)]
            nets.append((f"resnet18_pruned_{i}@{hw}", random_resnet(rng, c, space.min_width, align), (c, hw, hw)))
        elif small:
            w = rng.uniform(space.min_width, 1.0)
            if align > 1:
                w = max(align, round(32 * w / align) * align) / 32
            shape = tuple(small[0].get("input_shape", (1, 28, 28)))
            nets.append((f"small_cnn_w{w:.2f}_{i}", create_model("small_cnn", in_channels=shape[0],
                                                                 input_size=shape[-1], width=w), shape))
        else:
            sp = mb[0]
            nets.append((f"mbconv_{i}", random_mbconv(rng, sp, align=align), (sp.in_channels, sp.input_size, sp.input_size)))
    return [(name, m.eval(), s) for name, m, s in nets]


def summarize(pred: np.ndarray, meas: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    err = (pred - meas) / meas
    return {"n": int(len(meas)), "within_10pct": float(np.mean(np.abs(err) <= 0.10) * 100),
            "within_5pct": float(np.mean(np.abs(err) <= 0.05) * 100), "mape": float(np.mean(np.abs(err)) * 100),
            "spearman": float(spearmanr(pred, meas).statistic)}


def scatter(frame: pd.DataFrame, metric: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    families = frame["model"].str.extract(r"^([a-z0-9_]+?)(?:_\d|_w)")[0].fillna("other")
    for family, sub in frame.groupby(families):
        ax.scatter(sub[f"measured_{metric}"], sub[f"predicted_{metric}"], s=14, label=family)
    lo = min(frame[f"measured_{metric}"].min(), frame[f"predicted_{metric}"].min()) * 0.8
    hi = max(frame[f"measured_{metric}"].max(), frame[f"predicted_{metric}"].max()) * 1.2
    xs = np.array([lo, hi])
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="grey", alpha=0.2, label="+-10%")
    ax.set(xscale="log", yscale="log", xlabel=f"measured {metric}", ylabel=f"predicted {metric}")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def slug(text: str) -> str:
    text = re.sub(r"\(R\)|\(TM\)|processor|cpu|@.*", "", text, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", required=True)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--n", type=int, default=60, help="held-out networks (>= 50 for the headline figure)")
    ap.add_argument("--seed", type=int, default=1000, help="differs from the calibration seed on purpose")
    ap.add_argument("--align", type=int, default=1, help="round pruned widths to this multiple (8 = materializer)")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--recompute", default=None, metavar="CSV",
                    help="re-predict a previous run's networks (same --n/--seed/--align) from the table as it is now, "
                         "keeping that run's measurements: for tables re-fitted on another machine than the chip")
    args = ap.parse_args(argv)

    table = LatencyTable.load(args.table)
    device = table.device["type"]
    runtime = meter = None
    if not args.recompute:
        runtime = Runtime(table.runtime, device, table.metadata.get("threads") or 1)
        meter = open_meter("auto", device) if "energy_mj" in table.metrics else None
    space = ProfileSpace.from_dict(table.metadata["space"])
    rows = []
    start = time.time()
    previous = pd.read_csv(args.recompute).set_index("model") if args.recompute else None
    for name, model, shape in held_out(space, args.n, args.seed, args.align):
        ops = extract_ops(model, shape)
        if previous is not None:
            old = previous.loc[name]
            median, iqr, mj = old["measured_latency_ms"], old["iqr_ms"], old.get("measured_energy_mj", float("nan"))
        else:
            work = prepare_network(runtime, model, shape, args.precision, table.metadata["batch"])
            median, iqr, _, mj = measure(runtime, work, meter, samples=args.samples)
        row = {"model": name, "input": "x".join(map(str, shape)), "macs": sum(o.macs for o in ops),
               "measured_latency_ms": median, "iqr_ms": iqr,
               "weight_bytes": weight_bytes(ops, args.precision),
               "summed_latency_ms": table.predict_ops(ops, "latency_ms", args.precision, calibrated=False),
               "predicted_latency_ms": table.predict_ops(ops, "latency_ms", args.precision)}
        if not math.isnan(mj):
            row.update(measured_energy_mj=mj, predicted_energy_mj=table.predict_ops(ops, "energy_mj", args.precision),
                       summed_energy_mj=table.predict_ops(ops, "energy_mj", args.precision, calibrated=False))
        rows.append(row)
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{slug(table.device['name'])}_{table.runtime}_{args.precision}" + (f"_align{args.align}" if args.align > 1 else "")
    frame.to_csv(out / f"fidelity_{tag}.csv", index=False, float_format="%.6g")
    summary = {"table": str(args.table), "measurements_from": args.recompute or "this run", "device": table.device["name"], "runtime": table.runtime,
               "precision": args.precision, "align": args.align, "seed": args.seed, "seconds": round(time.time() - start),
               "command": "python scripts/fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"{table.device['name']} / {table.runtime} / {args.precision} (align {args.align}), {len(frame)} held-out networks")
    print(f"{'metric':<12} {'n':>4} {'within10%':>10} {'within5%':>9} {'MAPE%':>7} {'Spearman':>9}")
    for metric in ("latency_ms", "energy_mj"):
        if f"measured_{metric}" not in frame:
            continue
        s = summarize(frame[f"predicted_{metric}"].to_numpy(), frame[f"measured_{metric}"].to_numpy())
        summary[metric] = s
        print(f"{metric:<12} {s['n']:>4} {s['within_10pct']:>9.1f}% {s['within_5pct']:>8.1f}% {s['mape']:>7.2f} "
              f"{s['spearman']:>9.3f}")
        scatter(frame, metric, f"{table.device['name'][:28]} {table.runtime} {args.precision}: {metric}\n"
                f"{s['within_10pct']:.0f}% within +-10%, MAPE {s['mape']:.1f}%", out / f"fidelity_{tag}_{metric}.png")
    (out / f"fidelity_{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
