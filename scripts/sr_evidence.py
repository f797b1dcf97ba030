r"""Super-resolution evidence: MACs and measured latency reduction vs PSNR drop, joint run vs single techniques.

Two stages, like ``scripts/pareto.py``, so training can run on a GPU and latency is measured on this CPU:

``--stage train``   per seed, trains every config through the package (``pluto.compress``, ``task="sr"``, the
                    ``fmnist_sr_cpu`` recipe's settings) on x2 Fashion-MNIST (14 -> 28 px), exports it to ONNX and
                    writes ``<out>/seed<k>/<config>/result.json`` (PSNR of the ONNX file, MACs, params, the table's
                    predicted latency). Resumable per config folder: one with ``result.json`` is skipped, a partial one
                    is trained again. ``--device cuda`` trains on a GPU (nothing is measured there: the joint run then
                    keeps the table's prediction instead of landing on the measured target).
``--stage measure`` times every ONNX file of every seed against each other on this CPU (``Measurer.
                    measure_interleaved``: the table's runtime and threads, ``--rounds`` shuffled rounds, median of
                    round medians), then prints per seed and as mean +- std over seeds: MACs and measured latency
                    reduction vs PSNR drop, the baselines' PSNR *at the joint model's measured latency* (linear
                    between the two ladder points around it), against the seed's figures (-93 % FLOPs at -3.4 % PSNR;
                    -85..-90 % FLOPs at equal PSNR). Writes ``docs/results/sr_evidence_<date>_<cpu>.csv``.
``--stage all``     both.

Configs per seed, all the same EDSR-style network (``--width`` x ``--blocks``), epochs ``W,S,F`` (``--epochs``):

- ``dense``         trained ``W+S+F`` epochs (fp32); exported fp32 and int8: the reference is the cheaper one measured.
- ``joint``         from the dense weights: channel pruning + int8/fp32 per layer + output KD from the dense model,
                    ``S`` search + ``F`` fine-tune epochs, under ``--budget`` (priced by ``--table``).
- ``width_w<k>``    EDSR with every width ``k``, trained ``W+2S+2F`` epochs from scratch (as long as dense + joint).
- ``magnitude_r<p>`` the dense model L1-magnitude pruned (uniform ratio ``p`` % per group, widths on the table's
                    channel multiple), fine-tuned ``S+F`` epochs.

The baselines are trained as a ladder of 3 sizes whose predicted fp32 latency is 0.8x, 1x and 1.25x the joint model's
predicted latency, so the measure stage can compare at *equal measured* latency whatever the table's error. They deploy
in fp32 (single techniques; the joint run picks int8 or fp32 per layer). Commands::

    python scripts/sr_evidence.py --tiny --stage all --out /tmp/sr-tiny                 # end-to-end check, ~2 min
    nice python scripts/sr_evidence.py --stage train --out outputs/sr_evidence          # 3 seeds, this CPU
    python scripts/sr_evidence.py --stage measure --out outputs/sr_evidence             # on a quiet machine

GPU training (the device image has no Fashion-MNIST: copy ``/usr/share/datasets/fashion-mnist/*.gz`` to ``.fmnist/``,
carry it and the wheels as in ``scripts/pareto.py``), then measure here::

    python3 scripts/sr_evidence.py --stage train --device cuda --data-root .fmnist --out /tmp/sr_evidence \
        && tar czf $OUT/sr_evidence.tgz -C /tmp sr_evidence
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import pluto
from pluto.cost.model import CostModel
from pluto.cost.ops import extract_ops, total_macs
from pluto.cost.table import LatencyTable
from torch.utils.data import DataLoader

SEED_FIGURES = "seed's figures: -93 % FLOPs at -3.4 % PSNR; -85..-90 % FLOPs at equal PSNR"
INPUT = (1, 1, 14, 14)
LADDER = (0.8, 1.0, 1.25)  # baselines at these multiples of the joint model's predicted latency


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("train", "measure", "all"), default="all")
    p.add_argument("--out", default="outputs/sr_evidence", help="folder of the configs' runs and result.json files")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", default="latency_ms=0.5x", help="metric=target of the joint run (relative: 0.5x)")
    p.add_argument("--table", default="latency_tables/cpu_ort_xeon_amx",
                   help="table pricing the joint run and the baselines' ladder, and timing everything (its runtime "
                        "and threads)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--epochs", default="2,2,1", help="W,S,F: warm-up, search and fine-tune epochs")
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=None, help="default: all 10k test images")
    p.add_argument("--device", default="cpu", help="training device: cpu | cuda | cuda:N")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--rounds", type=int, default=7, help="interleaved measurement rounds")
    p.add_argument("--samples", type=int, default=30, help="timed samples per file and round")
    p.add_argument("--methods", default="dense,joint,width,magnitude",
                   help="configs to train (dense always comes first: the others start from it)")
    p.add_argument("--joint-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra overrides of the joint run only, e.g. task.kd_alpha=0.2 (default: the recipe's)")
    p.add_argument("--tiny", action="store_true", help="seconds-scale settings: one seed, tiny data and model")
    p.add_argument("--results", default="docs/results", help="where the measure stage writes its CSV")
    args = p.parse_args(argv)
    if args.tiny:
        args.seeds, args.width, args.blocks, args.epochs = args.seeds[:1], 8, 1, "1,1,1"
        args.train_limit, args.test_limit, args.rounds, args.samples = 256, 256, 2, 5
        args.budget = "latency_ms=0.9x"  # fixed ops (upsampling, the 28 px tail) dominate an 8-channel model
    return args


# ------------------------------------------------------------------------------------------------- train stage
class Trainer:
    """What the configs of one sweep share: settings, the pricing table, and the one way to train (pluto.compress)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.w, self.s, self.f = (int(e) for e in args.epochs.split(","))
        self.table = LatencyTable.load(args.table)
        self.on_gpu = args.device.startswith("cuda")

    def overrides(self, seed: int) -> list[str]:
        a = self.args
        out = ["recipe=fmnist_sr_cpu", f"data.train_limit={a.train_limit}", f"data.test_limit={a.test_limit or 'null'}",
               f"seed={seed}", f"trainer.threads={a.threads}", f"trainer.device={a.device}", "logger=none"]
        if a.data_root:
            out.append(f"data.root={a.data_root}")
        if self.on_gpu:  # this CPU's latency is measured in --stage measure, not on the GPU host's CPU
            out += ["hw.measure=off", "hw.adapt=off"]
        return out

    def edsr(self, width: int | None = None) -> torch.nn.Module:
        return pluto.create_model("edsr", in_channels=1, input_size=14, width=width or self.args.width,
                                  blocks=self.args.blocks)

    def compress(self, folder: Path, seed: int, model, constraints=None, table=None, epochs=(0, 0, 0), extra=(),
                 **options):
        warmup, search, finetune = epochs
        return pluto.compress(model, table, constraints or {"latency_ms": None}, data="fashion_mnist_sr", task="sr",
                              teacher=options.pop("teacher", None), run_dir=folder / "run",
                              epochs={"warmup": warmup, "search": search, "finetune": finetune},
                              overrides=[*self.overrides(seed), *extra], **options)

    def data(self) -> tuple[torch.Tensor, DataLoader]:
        """Calibration images (the first 256 training inputs) and the test loader, built once."""
        if not hasattr(self, "_data"):
            from pluto.data import build_datasets

            a = self.args
            train, test, _ = build_datasets("fashion_mnist_sr", a.data_root, train_limit=256, test_limit=a.test_limit)
            self._data = next(iter(DataLoader(train, batch_size=256)))[0], DataLoader(test, batch_size=500)
        return self._data

    def ptq(self, folder: Path, model: torch.nn.Module) -> dict:
        """The model as an int8 QDQ deployment too (post-training quantization, calibrated on training images):
        its ONNX file, its PSNR (onnxruntime, test set) and predicted latency; the measure stage deploys whichever of
        fp32 and int8 measures faster, as the pipeline does for the dense reference."""
        from pluto.cost.measure import deployable_onnx
        from pluto.decisions.bits import prepare_qat
        from pluto.materialize.export import OnnxModel
        from pluto.tasks.sr import SuperResolution

        calibration, test = self.data()
        q = prepare_qat(copy.deepcopy(model).cpu().eval(), bits=8, calibrate=calibration)
        path = deployable_onnx(q, INPUT, folder / "run" / "model_int8_ptq.onnx")
        psnr = SuperResolution(compute_ssim=False).evaluate(OnnxModel(path), test, "cpu")["psnr"]
        return {"onnx_int8": str(path.relative_to(folder.parent.parent)), "psnr_int8": psnr,
                "predicted_int8_latency_ms": self.predicted(q)}

    def predicted(self, model: torch.nn.Module) -> float:
        """The table's latency (ms) of a concrete model (QAT layers at their bits, the rest fp32)."""
        from pluto.optimizer.report import float_and_bits

        model, bits = float_and_bits(model.cpu().eval())
        return CostModel(model, INPUT, self.table, "fp32").of_model(model, "latency_ms", bits)


def macs(model: torch.nn.Module) -> float:
    return float(total_macs(extract_ops(copy.deepcopy(model).cpu().eval(), INPUT)))


def row_of(result, folder: Path, predicted: float, **extra) -> dict:
    """result.json of one config: the deployed ONNX file's PSNR (onnxruntime) and its costs."""
    onnx = folder / "run" / ("model_int8.onnx" if (folder / "run" / "model_int8.onnx").exists() else "model_fp32.onnx")
    m = result.metrics
    psnr = m.get(f"onnx_{'int8' if onnx.name == 'model_int8.onnx' else 'fp32'}_psnr", m["psnr"])
    return {"psnr": psnr, "torch_psnr": m["psnr"], "ssim": m.get("ssim"), "macs": m["macs"], "params": m["params"],
            "predicted_latency_ms": predicted, "onnx": str(onnx.relative_to(folder.parent.parent)), **extra}


def closest(candidates, cost, goals) -> list:
    """Per goal, the candidate whose cost is closest (duplicates dropped, order kept)."""
    costs = {c: cost(c) for c in candidates}
    picked = [min(candidates, key=lambda c: abs(costs[c] - g)) for g in goals]
    return list(dict.fromkeys(picked))


def train_config(t: Trainer, seed: int, config: str, run) -> dict | None:
    """Train one config into ``<out>/seed<k>/<config>`` unless its result.json exists; returns its result."""
    folder = Path(t.args.out) / f"seed{seed}" / config
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    if folder.exists():  # killed part-way: train it again from its start
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.time()
    torch.manual_seed(seed)
    try:
        row = run(folder)
    except Exception as exc:  # one failing config must not end the sweep
        (folder / "error.txt").write_text(traceback.format_exc())
        print(f"!! seed {seed} {config} failed: {type(exc).__name__}: {exc}", flush=True)
        return None
    row.update(seed=seed, config=config, method=config.split("_")[0], train_device=t.args.device,
               train_seconds=round(time.time() - start, 1))
    done.write_text(json.dumps(row, indent=1, default=float))
    print(f"-- seed {seed} {config:>16}: PSNR {row['psnr']:.2f} dB, MACs {row['macs'] / 1e6:.3g} M, predicted "
          f"{row['predicted_latency_ms']:.4f} ms ({row['train_seconds']:.0f} s)", flush=True)
    return row


def train_seed(t: Trainer, seed: int) -> None:
    w, s, f = t.w, t.s, t.f
    metric, _, target = t.args.budget.partition("=")
    dense_weights = Path(t.args.out) / f"seed{seed}" / "dense" / "weights.pt"

    def dense(folder: Path) -> dict:
        r = t.compress(folder, seed, t.edsr(), epochs=(w + s + f, 0, 0), prune=False, quantize=False, distill=False)
        torch.save(r.model.cpu().state_dict(), folder / "weights.pt")
        return row_of(r, folder, t.predicted(r.model), **t.ptq(folder, r.model))

    if train_config(t, seed, "dense", dense) is None:
        return

    def joint(folder: Path) -> dict:
        r = t.compress(folder, seed, t.edsr(), {metric: target, **({} if metric == "latency_ms" else
                                                                  {"latency_ms": None})},
                       table=t.args.table, epochs=(0, s, f), teacher="self", init_from=str(dense_weights),
                       extra=t.args.joint_set)
        (verdict,) = [v for v in r.report["constraints"] if v["metric"] == metric]
        return row_of(r, folder, t.predicted(r.model), budget=t.args.budget, holds=verdict["holds"],
                      measured_latency_ms_train=verdict.get("measured") if metric == "latency_ms" else None)

    methods = {m.strip() for m in t.args.methods.split(",")}
    joint_row = train_config(t, seed, "joint", joint) if methods & {"joint", "width", "magnitude"} else None
    if joint_row is None:  # the baselines' ladder is placed around the joint model
        return
    goals = [g * joint_row["predicted_latency_ms"] for g in LADDER]

    def baseline(folder: Path, model: torch.nn.Module, epochs: int, **extra) -> dict:
        r = t.compress(folder, seed, model, epochs=(epochs, 0, 0), prune=False, quantize=False, distill=False)
        return row_of(r, folder, t.predicted(r.model), **t.ptq(folder, r.model), **extra)

    def cheaper(model: torch.nn.Module) -> float:  # predicted latency of the faster of fp32 and int8
        from pluto.decisions.bits import prepare_qat

        q = prepare_qat(copy.deepcopy(model).eval(), bits=8, calibrate=torch.rand(8, *INPUT[1:]))
        return min(t.predicted(model), t.predicted(q))

    for width in closest(range(1, t.args.width + 1), lambda k: cheaper(t.edsr(k)), goals) if "width" in methods else []:
        train_config(t, seed, f"width_w{width}", lambda folder, k=width: baseline(folder, t.edsr(k),
                                                                                   w + 2 * s + 2 * f, width=k))

    from pluto.decisions.channels import DependencyGraph, prune_by_importance

    if "magnitude" not in methods:
        return
    dense_model = t.edsr()
    dense_model.load_state_dict(torch.load(dense_weights, weights_only=True))
    graph = DependencyGraph.build(dense_model, torch.zeros(INPUT))

    def pruned(ratio: float) -> torch.nn.Module:
        return prune_by_importance(dense_model, graph, ratio=ratio, table=t.table) if ratio else \
            copy.deepcopy(dense_model)

    for ratio in closest([i / 40 for i in range(40)], lambda q: cheaper(pruned(q)), goals):
        train_config(t, seed, f"magnitude_r{round(100 * ratio)}", lambda folder, q=ratio: baseline(
            folder, pruned(q), s + f, ratio=q))


def train_stage(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    t = Trainer(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "settings.json").write_text(json.dumps(vars(args), indent=1))
    start = time.time()
    for seed in args.seeds:
        train_seed(t, seed)
    print(f"train stage done in {time.time() - start:.0f} s: {args.out}")


# ----------------------------------------------------------------------------------------------- measure stage
def collect(out: Path) -> pd.DataFrame:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("seed*/*/result.json"))]
    if not rows:
        raise SystemExit(f"no result.json under {out}/seed<k>/<config>/: run --stage train first")
    return pd.DataFrame(rows)


def psnr_at(points: pd.DataFrame, latency: float) -> tuple[float, bool]:
    """PSNR at ``latency`` (ms), linear between the two measured ladder points around it; (value, bracketed).
    Outside the ladder: the nearest point's PSNR, flagged not bracketed."""
    pts = points.sort_values("latency_ms")
    x, y = pts["latency_ms"].to_numpy(), pts["psnr"].to_numpy()
    if len(x) == 0:
        return math.nan, False
    inside = bool(x[0] <= latency <= x[-1])
    return float(np.interp(latency, x, y)), inside


def deployed(frame: pd.DataFrame) -> pd.DataFrame:
    """Each config as deployed: the faster measured of its fp32 file and its int8 PTQ file (``latency_ms``, ``psnr``
    of that file); the joint model as searched; the dense reference keeps its fp32 PSNR (the uncompressed quality)
    with the cheaper latency."""
    frame = frame.copy()
    int8 = frame["latency_int8_ms"] < frame["latency_fp32_ms"]  # NaN (no PTQ file): False
    frame["deployed"] = np.where(int8, "int8 PTQ", np.where(frame["config"] == "joint", "as searched", "fp32"))
    frame["latency_ms"] = np.where(int8, frame["latency_int8_ms"], frame["latency_fp32_ms"])
    frame["fp32_psnr"] = frame["psnr"]
    if "psnr_int8" in frame:
        frame["psnr"] = np.where(int8 & (frame["config"] != "dense"), frame["psnr_int8"], frame["psnr"])
    return frame


def compare(frame: pd.DataFrame) -> pd.DataFrame:
    """Per seed: the joint run and each baseline at the joint model's measured latency, relative to dense."""
    rows = []
    for seed, per in frame.groupby("seed"):
        dense, joint = per[per.config == "dense"], per[per.config == "joint"]
        if dense.empty or joint.empty:
            continue
        d, j = dense.iloc[0], joint.iloc[0]
        ref = d.latency_ms  # the cheaper of its fp32 and int8 deployments

        def rel(psnr: float, macs: float, latency: float) -> dict:
            return {"psnr": psnr, "psnr_drop_pct": 100 * (1 - psnr / d.psnr), "macs_reduction_pct":
                    100 * (1 - macs / d.macs), "latency_ms": latency, "latency_reduction_pct": 100 * (1 - latency / ref)}

        rows.append({"seed": seed, "method": "joint", "bracketed": True, **rel(j.psnr, j.macs, j.latency_ms)})
        for method in ("width", "magnitude"):
            ladder = per[per.method == method]
            if ladder.empty:
                continue
            psnr, inside = psnr_at(ladder, j.latency_ms)
            macs_at = float(np.interp(j.latency_ms, *ladder.sort_values("latency_ms")[["latency_ms", "macs"]].T.values))
            rows.append({"seed": seed, "method": method, "bracketed": inside, **rel(psnr, macs_at, j.latency_ms)})
    return pd.DataFrame(rows)


def measure_stage(args: argparse.Namespace) -> pd.DataFrame:
    from pluto.cost.machine import describe
    from pluto.cost.measure import Measurer

    out = Path(args.out)
    frame = collect(out)
    measurer = Measurer(LatencyTable.load(args.table), samples=args.samples, rounds=args.rounds)
    ok, why = measurer.reachable()
    if not ok:
        raise SystemExit(f"cannot measure here: {why}")
    files = list(frame["onnx"]) + [p for p in frame.get("onnx_int8", pd.Series(dtype=object)).dropna()]
    print(f"timing {len(files)} ONNX files in {args.rounds} interleaved rounds on {describe()} ...", flush=True)
    timed = dict(zip(files, measurer.measure_interleaved([out / f for f in files], INPUT, progress=True)))
    frame["latency_ms"] = [timed[f].latency_ms for f in frame["onnx"]]
    frame["latency_iqr_ms"] = [timed[f].latency_iqr_ms for f in frame["onnx"]]
    frame["latency_fp32_ms"] = frame["latency_ms"]  # the file the run exported (the joint's: its int8/fp32 mix)
    frame["latency_int8_ms"] = [timed[f].latency_ms if isinstance(f, str) else math.nan
                                for f in frame.get("onnx_int8", [math.nan] * len(frame))]
    frame = deployed(frame)
    settings = json.loads((out / "settings.json").read_text()) if (out / "settings.json").exists() else {}
    cols = ["seed", "config", "deployed", "psnr", "fp32_psnr", "psnr_int8", "macs", "latency_ms", "latency_fp32_ms",
            "latency_int8_ms", "predicted_latency_ms", "train_seconds"]
    comparison = compare(frame)
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.float_format", "{:.4g}".format):
        print(f"\nx2 SR of Fashion-MNIST, EDSR {settings.get('width')} ch x {settings.get('blocks')} blocks, epochs "
              f"{settings.get('epochs')}, {settings.get('train_limit')} training images, budget "
              f"{settings.get('budget')}; trained on {settings.get('device')}, measured on {describe()} "
              f"({measurer.table.runtime}, {measurer.threads} thread(s), {dt.date.today().isoformat()})")
        print(frame[[c for c in cols if c in frame]].sort_values(["seed", "config"]).to_string(index=False))
        if not comparison.empty:
            print("\nat the joint model's measured latency (baselines: PSNR linear between the ladder points around "
                  "it; 'bracketed' false = nearest point):")
            print(comparison.to_string(index=False))
            metrics = ["psnr", "psnr_drop_pct", "macs_reduction_pct", "latency_reduction_pct"]
            summary = comparison.groupby("method", sort=False)[metrics].agg(["mean", "std"])
            print(f"\nmean +- std over seeds {sorted(int(s) for s in comparison.seed.unique())}:")
            for method, r in summary.iterrows():
                print(f"  {method:>9}: " + ", ".join(f"{m} {r[(m, 'mean')]:.2f} +- {r[(m, 'std')]:.2f}"
                                                     for m in metrics))
        print(SEED_FIGURES)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    from pluto.cost.machine import cpu_facts

    slug = "".join(ch if ch.isalnum() else "_" for ch in str(cpu_facts().get("cpu_model", "cpu"))).strip("_").lower()
    stem = results / f"sr_evidence_{dt.date.today().isoformat()}_{slug}{'_tiny' if args.tiny else ''}"
    frame.to_csv(f"{stem}_runs.csv", index=False)
    comparison.to_csv(f"{stem}.csv", index=False)
    print(f"wrote {stem}.csv and {stem}_runs.csv")
    return comparison


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.stage in ("train", "all"):
        train_stage(args)
    if args.stage in ("measure", "all"):
        measure_stage(args)


if __name__ == "__main__":
    main()
