"""Fidelity of a latency table: predicted vs measured end-to-end latency of held-out networks, per family.

Held-out networks are members of the model families a user compresses, pruned by pluto's own
pruner at random ratios (``--families``: registry models, each at every ``--input-shape``; half of
them with widths rounded to the table's fast multiple, half not), drawn with a seed different from
the reference networks ``pluto table calibrate`` adapts on. ``--families space`` keeps the old
held-out set drawn from the table's own profiling space (MBConv subnets, pruned ResNet-18s, small CNNs).
All networks are measured with the table's method (:class:`pluto.cost.measure.Measurer`'s runtime,
threads and clock) in ``--rounds`` rounds of shuffled order (randomized interleaving: drift on a
shared machine hits all networks alike), then predicted from the table. Where the table prices energy and
this machine has a meter (NVML on a GPU), every network's energy is measured too (tick-aligned sustained
loop, the table's window) and reported beside the latency. Prints, overall and per
family: % within +-10 % (nn-Meter's headline metric), +-5 %, MAPE and Spearman rank correlation, also at the
machine's level while they were measured (a shared VM's level moves ~10 % within minutes): read from the five
reference kernels and from ``--level-networks`` of the table's own calibration networks timed in the same rounds;
writes ``docs/results/fidelity_<machine>_<runtime>_<precision>[_tag].{csv,json,png}``.

``--adapt-beside N`` is ``pluto table calibrate`` done in the same rounds: the table's N reference networks (seed 0,
the set ``pluto table calibrate`` times; held-out networks use another seed and are never fitted) are timed with the
held-out ones, the calibration is refitted to them (:func:`pluto.cost.adapt.refit_to`, on a copy in memory), and
the held-out networks are predicted by the refitted table. A shared VM's state moves 10-20 % within minutes, so an
adaptation measured minutes before the held-out networks mis-states their level; this takes that out.

    python scripts/fidelity.py --table latency_tables/cpu_ort_xeon --precision fp32 --families zoo --n 80
    python scripts/fidelity.py --table /tmp/adapted --precision int8 --families zoo --n 60 --tag adapted
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from pluto.cost import energy as energy_mod  # noqa: E402
from pluto.cost.adapt import (ZOO_FAMILIES, energy_window, family_networks, kernel_workloads,  # noqa: E402
                              level_networks, machine_level, network_level, reference_networks, refit_to,
                              space_networks)
from pluto.cost.machine import describe  # noqa: E402
from pluto.cost.ops import extract_ops  # noqa: E402
from pluto.cost.profiler import interleaved_rounds, prepare_network, priceable, split_halves  # noqa: E402
from pluto.cost.runtimes import Runtime, device_info  # noqa: E402
from pluto.cost.table import LatencyTable  # noqa: E402
from pluto.errors import ConfigError  # noqa: E402


def summarize(pred: np.ndarray, meas: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    err = (pred - meas) / meas
    return {"n": int(len(meas)), "within_10pct": float(np.mean(np.abs(err) <= 0.10) * 100),
            "within_5pct": float(np.mean(np.abs(err) <= 0.05) * 100), "mape": float(np.mean(np.abs(err)) * 100),
            "bias_pct": float(np.median(err) * 100),
            "spearman": float(spearmanr(pred, meas).statistic) if len(meas) > 2 else float("nan")}


def scatter(frame: pd.DataFrame, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for family, sub in frame.groupby("family"):
        ax.scatter(sub["measured_latency_ms"], sub["predicted_latency_ms"], s=14, label=family)
    lo = min(frame["measured_latency_ms"].min(), frame["predicted_latency_ms"].min()) * 0.8
    hi = max(frame["measured_latency_ms"].max(), frame["predicted_latency_ms"].max()) * 1.2
    xs = np.array([lo, hi])
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="grey", alpha=0.2, label="+-10%")
    ax.set(xscale="log", yscale="log", xlabel="measured latency (ms)", ylabel="predicted latency (ms)")
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7, which="both")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def slug(text: str) -> str:
    text = re.sub(r"\(R\)|\(TM\)|processor|cpu|@.*|\[.*\]", "", text, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def held_out(table: LatencyTable, families: str, shapes: list[tuple[int, ...]], n: int, seed: int):
    if families == "space":
        return space_networks(table, n, seed)
    names = ZOO_FAMILIES if families == "zoo" else [f.strip() for f in families.split(",") if f.strip()]
    return family_networks(names, shapes, n, seed, table.align or 8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", required=True)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--families", default="zoo",
                    help="'zoo' (the registry families the pruner handles), a comma list of registry models, or 'space'")
    ap.add_argument("--input-shape", action="append", default=None, help="C,H,W (repeatable; default 1,28,28 and 3,32,32)")
    ap.add_argument("--n", type=int, default=80, help="held-out networks (>= 60 for the headline figure)")
    ap.add_argument("--seed", type=int, default=1000, help="differs from the reference networks' seed on purpose")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--no-energy", dest="energy", action="store_false",
                    help="do not measure energy even where the table has it and a meter is readable")
    ap.add_argument("--energy-window", type=float, default=None, help="seconds per energy reading (default: the table's)")
    ap.add_argument("--tag", default="", help="suffix of the output files, e.g. 'adapted'")
    ap.add_argument("--level-networks", type=int, default=12, metavar="K",
                    help="time K of the table's calibration networks in the same rounds and report the figures also "
                         "at the level they read (0: off)")
    ap.add_argument("--adapt-beside", type=int, default=0, metavar="N",
                    help="time the table's N reference networks in the same rounds and refit its calibration to them "
                         "before predicting (pluto table calibrate without the minutes between; 0: off)")
    ap.add_argument("--adapt-prior", type=lambda v: v if v == "level" else float(v), default=None,
                    help="pull towards the table's levelled fit (as calibrate's --prior), or 'level' for the level "
                         "alone; default: as calibrate decides")
    ap.add_argument("--recompute", default=None, metavar="CSV",
                    help="re-predict a previous run's networks (same --families/--n/--seed) from the table as it is "
                         "now, keeping that run's measurements")
    args = ap.parse_args(argv)

    table = LatencyTable.load(args.table)
    shapes = [tuple(int(v) for v in s.split(",")) for s in (args.input_shape or ["1,28,28", "3,32,32"])]
    start = time.time()
    nets = held_out(table, args.families, shapes, args.n, args.seed)
    unpriced = sorted({family for _, family, model, shape in nets
                       if not priceable(table, model, shape, args.precision)})
    if unpriced:  # before minutes of timing, not after
        raise ConfigError(f"{args.table} cannot price {', '.join(unpriced)} at {args.precision}: choose --families "
                          f"among those it covers, or add them with `pluto profile --model {','.join(unpriced)} "
                          f"--precision {args.precision} --out {args.table}`")
    previous = pd.read_csv(args.recompute).set_index("model") if args.recompute else None
    energies, kernel_ms, probe_ms, adapt_ms, halves = None, {}, {}, {}, None
    refs = [net for net in reference_networks(table, args.adapt_beside, 0, args.precision)
            if priceable(table, net[2], net[3], args.precision)] if args.adapt_beside else []
    if previous is not None:
        measured = [(float(previous.loc[name, "measured_latency_ms"]), float(previous.loc[name, "iqr_ms"]))
                    for name, _, _, _ in nets]
        if "measured_energy_mj" in previous.columns:
            energies = [float(previous.loc[name, "measured_energy_mj"]) for name, _, _, _ in nets]
        previous_json = Path(args.recompute).with_suffix(".json")
        if previous_json.exists():
            stored = json.loads(previous_json.read_text())
            kernel_ms = stored.get("kernel_ms") or {}
            probe_ms = stored.get("level_network_ms") or {}
            adapt_ms = stored.get("adapt_network_ms") or {}
            halves = stored.get("measurement_noise")
    else:
        device = table.device.get("type", "cpu")
        rt = Runtime(table.runtime, device, int(table.metadata.get("threads") or 1))
        works = [prepare_network(rt, model, shape, args.precision, table.metadata["batch"])
                 for _, _, model, shape in nets]
        named = kernel_workloads(table, args.precision)  # timed in the same rounds: the machine's level now
        probes = [(label, prepare_network(rt, model, shape, args.precision, table.metadata["batch"]))
                  for label, model, shape in level_networks(table, args.precision, args.level_networks)]
        adapting = [prepare_network(rt, model, shape, args.precision, table.metadata["batch"])
                    for _, _, model, shape in refs]
        extra = [w for _, w in named] + [w for _, w in probes] + adapting
        round_ms, round_iqr = interleaved_rounds(rt, works + extra, args.rounds, args.samples, progress=True,
                                                 desc="measure")
        measured = [(float(np.median(m)), float(np.median(q))) for m, q in zip(round_ms, round_iqr)]
        halves = split_halves(round_ms[:len(works)])
        kernel_ms = {name: t for (name, _), (t, _) in zip(named, measured[len(works):])}
        probe_ms = {name: t for (name, _), (t, _) in zip(probes, measured[len(works) + len(named):])}
        adapt_ms = {net[0]: t for net, (t, _) in zip(refs, measured[len(works) + len(named) + len(probes):])}
        measured = measured[:len(works)]
        meter = None
        if "energy_mj" in table.metrics and args.energy:
            try:
                meter = energy_mod.open_meter("auto", device)
            except ConfigError as exc:
                print(f"energy not checked: {exc}")
        if meter is not None:
            window = args.energy_window or energy_window(table)
            energies = [energy_mod.measure_energy(meter, work, ms / 1e3, window)
                        for work, (ms, _) in tqdm(list(zip(works, measured)), desc="energy")]
        del works
    adapted = bool(refs and adapt_ms)
    adaptation = None
    if adapted:  # pluto table calibrate, on the networks timed in the same rounds (the table in memory)
        timed = [net for net in refs if net[0] in adapt_ms]
        fit = refit_to(table, args.precision, timed, [adapt_ms[net[0]] for net in timed], prior=args.adapt_prior)
        adaptation = fit.get("adaptation")
    rows = []
    for i, ((name, family, model, shape), (median, iqr)) in enumerate(zip(nets, measured)):
        ops = extract_ops(model, shape)
        row = {"model": name, "family": family, "input": "x".join(map(str, shape)),
               "macs": sum(o.macs for o in ops), "measured_latency_ms": median, "iqr_ms": iqr,
               "summed_latency_ms": table.predict_ops(ops, "latency_ms", args.precision, calibrated=False),
               "predicted_latency_ms": table.predict_ops(ops, "latency_ms", args.precision)}
        if energies is not None:
            row.update(measured_energy_mj=energies[i],
                       predicted_energy_mj=table.predict_ops(ops, "energy_mj", args.precision))
        rows.append(row)
    frame = pd.DataFrame(rows)
    # adapted beside: the refitted calibration already carries this moment's level (reading it again counts it twice)
    level = None if adapted else machine_level(table, args.precision, kernel_ms)
    if level is not None:  # the table's prediction at the level the machine ran at while these were measured
        frame["predicted_at_level_ms"] = frame["predicted_latency_ms"] * level
    net_level = None if adapted else network_level(table, args.precision, probe_ms)
    if net_level is not None:  # the same, the level read from the table's own calibration networks
        frame["predicted_at_network_level_ms"] = frame["predicted_latency_ms"] * net_level
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{slug(table.device['name'])}_{table.runtime}_{args.precision}" + (f"_{args.tag}" if args.tag else "")
    frame.to_csv(out / f"fidelity_{tag}.csv", index=False, float_format="%.6g")
    overall = summarize(frame["predicted_latency_ms"].to_numpy(), frame["measured_latency_ms"].to_numpy())
    per_family = {fam: summarize(sub["predicted_latency_ms"].to_numpy(), sub["measured_latency_ms"].to_numpy())
                  for fam, sub in frame.groupby("family")}
    where = describe() if table.device.get("type", "cpu") == "cpu" else f"{device_info('cuda')['name']} on {describe()}"
    if previous is not None:
        where = f"(measurements of {args.recompute})"
    summary = {"table": str(args.table), "measured_on": where, "date": dt.date.today().isoformat(),
               "measurements_from": args.recompute or "this run", "runtime": table.runtime, "precision": args.precision,
               "families": args.families, "seed": args.seed, "seconds": round(time.time() - start),
               "adapted": table.metadata.get("adapted"), "latency_ms": overall, "per_family": per_family,
               "kernel_ms": kernel_ms, "machine_level": level,
               "latency_ms_at_level": summarize(frame["predicted_at_level_ms"].to_numpy(),
                                                frame["measured_latency_ms"].to_numpy()) if level else None,
               "level_network_ms": probe_ms, "network_level": net_level,
               "adapt_network_ms": adapt_ms if adapted else {}, "adapted_beside": len(adapt_ms) if adapted else 0,
               "adaptation": adaptation, "measurement_noise": halves,
               "latency_ms_at_network_level": summarize(frame["predicted_at_network_level_ms"].to_numpy(),
                                                        frame["measured_latency_ms"].to_numpy()) if net_level else None,
               "command": "python scripts/fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if energies is not None:
        summary["energy_mj"] = summarize(frame["predicted_energy_mj"].to_numpy(), frame["measured_energy_mj"].to_numpy())
        summary["per_family_energy"] = {
            fam: summarize(sub["predicted_energy_mj"].to_numpy(), sub["measured_energy_mj"].to_numpy())
            for fam, sub in frame.groupby("family")}
    print(f"{args.table} ({table.device['name']} / {table.runtime} / {args.precision}) measured on {where}, "
          f"{dt.date.today()}")
    blocks = [("latency", per_family, overall)]
    if energies is not None:
        blocks.append(("energy", summary["per_family_energy"], summary["energy_mj"]))
    for what, families, total in blocks:
        print(f"{what + ': family':<22} {'n':>4} {'within10%':>10} {'within5%':>9} {'MAPE%':>7} {'bias%':>7} "
              f"{'Spearman':>9}")
        for fam, s in [*families.items(), ("ALL", total)]:
            print(f"{fam:<22} {s['n']:>4} {s['within_10pct']:>9.1f}% {s['within_5pct']:>8.1f}% {s['mape']:>7.2f} "
                  f"{s['bias_pct']:>+7.1f} {s['spearman']:>9.3f}")
    if level is not None:
        s = summary["latency_ms_at_level"]
        print(f"{'ALL at machine level':<22} {s['n']:>4} {s['within_10pct']:>9.1f}% {s['within_5pct']:>8.1f}% "
              f"{s['mape']:>7.2f} {s['bias_pct']:>+7.1f} {s['spearman']:>9.3f}   (reference kernels ran {level:.3f}x "
              "the table's calibration-time level)")
    if net_level is not None:
        s = summary["latency_ms_at_network_level"]
        print(f"{'ALL at network level':<22} {s['n']:>4} {s['within_10pct']:>9.1f}% {s['within_5pct']:>8.1f}% "
              f"{s['mape']:>7.2f} {s['bias_pct']:>+7.1f} {s['spearman']:>9.3f}   ({len(probe_ms)} of the table's "
              f"calibration networks ran {net_level:.3f}x their calibration-time time)")
    if halves is not None:
        print(f"measurement noise: the even and odd rounds of a network agree within +-10 % for "
              f"{halves['halves_within_10pct']:.1f}%; a full measurement's spread {100 * halves['sigma_log']:.1f}% "
              f"(log sd), so a perfect predictor would read ~{halves['ceiling_within_10pct']:.0f}% within +-10 %")
    scatter(frame, f"{args.table} {args.precision} on {where[:40]}\n{overall['within_10pct']:.0f}% within "
            f"+-10%, MAPE {overall['mape']:.1f}%, Spearman {overall['spearman']:.3f}", out / f"fidelity_{tag}.png")
    (out / f"fidelity_{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
