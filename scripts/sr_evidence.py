"""Super-resolution evidence: MACs and measured latency reduction vs PSNR drop, joint run vs single techniques.

    python scripts/sr_evidence.py --tiny                                     # end-to-end check, ~2 min
    python scripts/sr_evidence.py --seeds 0 1 2 --table latency_tables/cpu_ort_xeon_amx_sr --budget latency_ms=0.35x
    python scripts/sr_evidence.py --seeds 0 1 2 --budget macs=0.1x           # without an SR table: a MACs budget

Per seed, every arm runs through the package (``pluto.compress`` with ``task="sr"``) on x2 Fashion-MNIST
(14 -> 28 px, PSNR on the test images), all from the same EDSR-style network:

- ``dense``     trained ``W+S+F`` epochs (fp32); the reference for every reduction and PSNR drop.
- ``joint``     from the dense weights: channel pruning + int8/fp32 per layer + output KD from the dense model,
                ``S`` search + ``F`` fine-tune epochs, under ``--budget``.
- ``width``     EDSR with every width scaled uniformly, the width whose *measured* latency is closest to the
                joint model's (MACs where nothing can be measured), trained ``W+2S+2F`` epochs (as long as dense
                + joint together).
- ``magnitude`` the dense model L1-magnitude pruned (uniform ratio per group, ``prune_by_importance``) to the
                joint model's measured latency (bisection), then fine-tuned ``S+F`` epochs.

The baselines are single techniques, so they deploy in fp32 (on this AVX2 CPU small int8 convs are not faster
than fp32; the joint run picks int8 or fp32 per layer).

Latency is measured with :class:`pluto.cost.measure.Measurer` as ``--measure-table`` was measured
(onnxruntime, its threads, median of rounds) when that table's chip is this machine; the dense reference is the
cheaper of its fp32 and int8 deployments, as in the pipeline. The seed's figures (``-93 % FLOPs at -3.4 % PSNR``,
``-85..-90 % at equal PSNR``) are printed beside the means. Latency on a busy machine is noisy: run it quiet.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import tempfile
from pathlib import Path

import pandas as pd
import torch

import pluto
from pluto.cost.measure import MeasurementError, measurer_for
from pluto.cost.ops import extract_ops, total_macs
from pluto.cost.table import LatencyTable
from pluto.decisions.bits import prepare_qat
from pluto.decisions.channels import DependencyGraph, prune_by_importance

SEED_FIGURES = "seed's figures: -93 % FLOPs at -3.4 % PSNR; -85..-90 % FLOPs at equal PSNR"
INPUT = (1, 1, 14, 14)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", default="macs=0.1x", help="metric=target of the joint run (latency_ms needs --table)")
    p.add_argument("--table", default=None, help="table pricing the joint run's latency (with the SR ops)")
    p.add_argument("--measure-table", default="latency_tables/cpu_ort_xeon_amx",
                   help="table whose runtime/threads time every arm (measured only where its chip is this machine)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--epochs", default="2,2,1", help="W,S,F: warm-up, search and fine-tune epochs")
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=None, help="default: all 10k test images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="seconds-scale settings: one seed, tiny data and model")
    p.add_argument("--out", default=None, help="CSV of every run (default docs/results/sr_evidence_<date>.csv)")
    return p.parse_args()


class Runner:
    """Everything the arms share: settings, the work folder and the one stopwatch."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.w, self.s, self.f = (int(e) for e in args.epochs.split(","))
        self.work = Path(tempfile.mkdtemp(prefix="pluto-sr-evidence-"))
        self.measurer = measurer_for(LatencyTable.load(args.measure_table)) if args.measure_table else None
        if self.measurer is not None and not self.measurer.reachable()[0]:
            print(f"latency NOT MEASURED: {self.measurer.reachable()[1]}; arms are matched on MACs")
            self.measurer = None
        self.data = [f"data.train_limit={args.train_limit}", f"data.test_limit={args.test_limit or 'null'}"]

    def overrides(self, seed: int) -> list[str]:
        return [*self.data, f"seed={seed}", f"trainer.threads={self.args.threads}", "logger=none",
                "trainer.optimizer=adamw", "trainer.lr=0.002", "trainer.weight_decay=0", "trainer.batch_size=64",
                "trainer.warmup_steps=50", "compress.lagrangian.eta=0.02", "compress.lagrangian.kp=1.0"]

    def edsr(self, width: int | None = None) -> torch.nn.Module:
        return pluto.create_model("edsr", in_channels=1, input_size=14, width=width or self.args.width,
                                  blocks=self.args.blocks)

    def compress(self, name: str, seed: int, model, constraints=None, table=None, epochs=(0, 0, 0), **options):
        warmup, search, finetune = epochs
        return pluto.compress(model, table, constraints or {}, data="fashion_mnist_sr", task="sr",
                              teacher=options.pop("teacher", None), run_dir=self.work / f"{name}_{seed}",
                              epochs={"warmup": warmup, "search": search, "finetune": finetune},
                              overrides=self.overrides(seed), **options)

    def latency(self, model: torch.nn.Module | None = None, onnx: Path | None = None) -> float | None:
        """Measured latency (ms) of a QAT/float model or an ONNX file; None where nothing can be measured."""
        if self.measurer is None:
            return None
        try:
            return self.measurer.measure(model, INPUT, onnx=onnx).latency_ms
        except MeasurementError as exc:
            print(f"NOT MEASURED: {exc}")
            return None


def int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model as an int8 deployment (QAT-prepared and calibrated; latency does not depend on the weights)."""
    return prepare_qat(copy.deepcopy(model).cpu().eval(), bits=8, calibrate=torch.rand(32, *INPUT[1:]))


def macs(model: torch.nn.Module) -> float:
    return float(total_macs(extract_ops(model, INPUT)))


def closest(candidates, cost, goal: float):
    """The candidate whose cost is closest to ``goal``; every one is costed (measured latency of small models is
    neither smooth nor monotone in width, so no bisection)."""
    return min(candidates, key=lambda c: abs(cost(c) - goal))


def one_seed(r: Runner, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    w, s, f = r.w, r.s, r.f
    metric, _, target = r.args.budget.partition("=")
    rows = []

    dense = r.compress("dense", seed, r.edsr(), epochs=(w + s + f, 0, 0), prune=False, quantize=False, distill=False)
    torch.save(dense.model.state_dict(), r.work / f"dense_{seed}.pt")
    lat_fp32, lat_int8 = r.latency(dense.model), r.latency(int8(dense.model))
    dense_lat = min(v for v in (lat_fp32, lat_int8) if v is not None) if lat_fp32 is not None else None
    rows.append({"method": "dense", "psnr": dense.metrics["psnr"], "macs": macs(dense.model), "latency_ms": dense_lat,
                 "latency_fp32_ms": lat_fp32, "latency_int8_ms": lat_int8})

    joint = r.compress("joint", seed, r.edsr(), {metric: target}, table=r.args.table, epochs=(0, s, f),
                       teacher="self", init_from=str(r.work / f"dense_{seed}.pt"), precision="int8", bits=[8, 32])
    onnx = r.work / f"joint_{seed}" / "model_int8.onnx"
    joint_lat = r.latency(onnx=onnx if onnx.exists() else None, model=None if onnx.exists() else joint.model)
    rows.append({"method": "joint", "psnr": joint.metrics["psnr"], "macs": joint.metrics["macs"],
                 "latency_ms": joint_lat, "verdict": json.dumps([v["holds"] for v in joint.report["constraints"]])})

    def cost(model: torch.nn.Module) -> float:  # what the baselines are matched on
        return r.latency(model) if joint_lat is not None else macs(model)
    goal = joint_lat if joint_lat is not None else joint.metrics["macs"]

    width = closest(list(range(1, r.args.width + 1)), lambda k: cost(r.edsr(k)), goal)
    uniform = r.compress("width", seed, r.edsr(width), epochs=(w + 2 * s + 2 * f, 0, 0), prune=False,
                         quantize=False, distill=False)
    rows.append({"method": f"width (w={width})", "psnr": uniform.metrics["psnr"], "macs": uniform.metrics["macs"],
                 "latency_ms": r.latency(onnx=r.work / f"width_{seed}" / "model_fp32.onnx")})

    dense_model = dense.model.cpu().eval()
    graph = DependencyGraph.build(dense_model, torch.zeros(INPUT))
    prune = lambda q: prune_by_importance(dense_model, graph, macs_reduction=q) if q else copy.deepcopy(dense_model)  # noqa: E731
    ratio = closest([i / 20 for i in range(0, 20)], lambda q: cost(prune(q)), goal)
    magnitude = r.compress("magnitude", seed, prune(ratio), epochs=(s + f, 0, 0), prune=False, quantize=False,
                           distill=False)
    rows.append({"method": f"magnitude (L1, {ratio:.0%})", "psnr": magnitude.metrics["psnr"],
                 "macs": magnitude.metrics["macs"],
                 "latency_ms": r.latency(onnx=r.work / f"magnitude_{seed}" / "model_fp32.onnx")})
    for row in rows:
        row["seed"] = seed
        row["macs_reduction_pct"] = 100 * (1 - row["macs"] / rows[0]["macs"])
        row["psnr_drop_pct"] = 100 * (1 - row["psnr"] / rows[0]["psnr"])
        if row["latency_ms"] is not None and dense_lat is not None:
            row["latency_reduction_pct"] = 100 * (1 - row["latency_ms"] / dense_lat)
    return rows


def main() -> None:
    args = parse()
    if args.tiny:
        args.seeds, args.width, args.blocks, args.epochs = args.seeds[:1], 8, 1, "1,1,1"
        args.train_limit, args.test_limit = 256, 256
    r = Runner(args)
    rows = [row for seed in args.seeds for row in one_seed(r, seed)]
    frame = pd.DataFrame(rows)
    frame["method_kind"] = frame["method"].str.split(" ").str[0]
    cols = ["psnr", "psnr_drop_pct", "macs", "macs_reduction_pct", "latency_ms", "latency_reduction_pct"]
    cols = [c for c in cols if c in frame]
    summary = frame.groupby("method_kind", sort=False)[cols].agg(["mean", "std"]).round(3)
    date = datetime.date.today().isoformat()
    print(f"\nx2 SR of Fashion-MNIST, EDSR width {args.width} x {args.blocks} blocks, epochs {args.epochs}, "
          f"{args.train_limit} training images, seeds {args.seeds}, budget {args.budget}; {date}")
    print(frame[["seed", "method", *cols]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\nmean (std) over seeds:")
    print(summary.to_string())
    print(SEED_FIGURES)
    out = Path(args.out or f"docs/results/sr_evidence_{date}{'_tiny' if args.tiny else ''}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    print(f"wrote {out} (runs in {r.work})")


if __name__ == "__main__":
    main()
