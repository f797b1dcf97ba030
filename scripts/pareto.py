r"""Accuracy vs *measured* latency: the joint optimizer against single-technique baselines (issue 7).

Two stages, so training can run on a GPU and latency is measured on the chip the table describes:

``--stage train``   trains every (method, latency target) config on the same data and epoch budget,
                    exports each result to ONNX and writes ``<out>/<table>/<method>/<target>/result.json``
                    (accuracy, predicted latency, params, ONNX path); ``<out>/results.csv`` gathers them.
                    Resumable: a config whose ``result.json`` exists is skipped; a failing config logs its
                    traceback to ``error.txt`` and the sweep goes on. Everything lands under ``--out``.
``--stage measure`` times every exported ONNX on *this* CPU with onnxruntime at the table's threads
                    (median of ``--repeats`` medians), re-evaluates ONNX accuracy on the test set, prints
                    a pandas table, the joint-vs-baseline comparison (each baseline's Pareto front
                    interpolated at the joint's measured latencies), and saves Pareto plots
                    ``docs/results/pareto_<table>_<date>_<device>.png`` (+ the CSV beside them).
``--stage all``     both, one after the other.

Methods (``--methods``, comma-separated; default all):

=============== =====================================================================================
joint           pluto's Lagrangian run: pruning + mixed-precision QAT (``--joint-bits``) + KD
joint_fp        (only when named) the joint run without QAT: pruning + KD, fp32 deployment
nas             joint run on the MBConv supernet, op choice only (no pruning, no QAT, no KD), fp32
prune           joint run, channel gates only (no QAT, no KD), fp32
qat             joint run, bit-widths only (no pruning, no KD)
uniform         small_cnn with every layer's width scaled to meet the target, trained from scratch, PTQ
magnitude       dense model, one-shot L1 channel pruning to the target, fine-tune, PTQ
torch_pruning   same with Torch-Pruning's MagnitudePruner (only if ``import torch_pruning`` works)
ptq             dense model, post-training int8 quantization (one point)
dense           dense model, fp32 (one point, the reference)
optuna          Optuna TPE over per-stage width multipliers + per-stage bits with the table's predicted
                latency as a hard constraint; trials train ``--optuna-proxy-epochs`` and score PTQ
                accuracy on a held-out 10% of the training set; the best is retrained in full
=============== =====================================================================================

Epoch budget (defaults): joint warmup 1 + search 2 + finetune 2 = 5 epochs; uniform/dense/optuna final
5 epochs; magnitude/torch_pruning prune the 5-epoch dense model and fine-tune 2 epochs (7 in all, so
the pruning baselines get more training than the joint). "PTQ" means int8 on a table with int8
entries, else the baseline stays fp32.

GPU command for the lead (ONE device call, <= ~9 min on one H100: configs not started after
``--time-budget`` seconds are skipped and a rerun resumes them). The device image has no Fashion-MNIST and
no hydra-core / omegaconf / optuna / torch-pruning: before the call, here::

    mkdir -p .fmnist && cp /usr/share/datasets/fashion-mnist/*.gz .fmnist/
    printf '/.fmnist/\n/.whl/\n' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 optuna==5.0.0 alembic==1.20.1 \
        SQLAlchemy==2.1.9 Mako==1.4.3 colorlog==6.12.0 torch-pruning==1.6.1

(antlr4-python3-runtime 4.9.3 is an sdist only: build its wheel with ``pip wheel --no-deps -w .whl
antlr4-python3-runtime==4.9.3``), then the call, with ``carry=[".fmnist", ".whl"]``::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site; PYTHONUNBUFFERED=1 python3 scripts/pareto.py --stage train --device cuda \
      --data-root .fmnist --train-limit 30000 --out /tmp/pareto --time-budget 480; \
      tar czf $OUT/pareto.tgz -C /tmp pareto

then here (measures every ONNX on this CPU, prints the tables, writes docs/results/pareto_*)::

    mkdir -p results && tar xzf /work/.device/.../pareto.tgz -C results
    .venv/bin/python scripts/pareto.py --stage measure --out results/pareto

CPU-only smoke (synthetic data, 2 targets, ~1-2 min)::

    .venv/bin/python scripts/pareto.py --smoke --stage all --out /tmp/pareto-smoke
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pluto.cost.ops import extract_ops, total_macs, total_params  # noqa: E402
from pluto.cost.table import LatencyTable  # noqa: E402
from pluto.data import DataSpec, build_datasets  # noqa: E402
from pluto.engine.loop import TrainState, batches_per_epoch, evaluate, train_epochs  # noqa: E402
from pluto.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from pluto.errors import InfeasibleConstraintError  # noqa: E402
from pluto.models import create_model  # noqa: E402
from pluto.cost.model import CostModel  # noqa: E402

METHODS = ("joint", "nas", "prune", "qat", "uniform", "magnitude", "torch_pruning", "ptq", "dense", "optuna")
EXTRA_METHODS = ("joint_fp",)  # run only when named in --methods
JOINT_METHODS = ("joint", "joint_fp")  # compared against every other method
SINGLE_POINT = ("ptq", "dense")
TABLES = {"cpu_ort": "cpu_ort_int8", "cpu_ort_epyc": "cpu_ort_int8", "cpu_ort_xeon_amx": "cpu_ort_int8", "h100_cudagraph": "h100_cudagraph"}  # table folder -> configs/hw name
STAGE_LAYERS = (("features.0.0", "features.1.0"), ("features.3.0", "features.4.0"), ("features.6.0", "classifier.2"))
BASE_CHANNELS = (32, 64, 128)


# ---------------------------------------------------------------------------------------------- setup
@dataclass
class Sweep:
    """Everything a config runner needs: data, table, budget. Built once per table."""

    args: argparse.Namespace
    table_name: str
    table: LatencyTable
    train: Any
    test: Any
    spec: DataSpec
    device: torch.device
    trainer: Any  # the composed trainer config (optimizer, lr, schedule)
    out: Path
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.spec.input_shape

    @property
    def precision(self) -> str:
        """Deployment precision of the baselines: int8 where the table has int8 entries."""
        return "int8" if "int8" in self.table.precisions else "fp32"

    def test_loader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=512, shuffle=False)

    @property
    def total_epochs(self) -> int:
        """Passes over the data every method gets: the dense model's epochs plus the fine-tune after pruning."""
        return self.args.epochs + self.args.finetune_epochs

    def calibration(self, n: int = 512) -> torch.Tensor:
        return next(iter(DataLoader(self.train, batch_size=n, shuffle=False)))[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("train", "measure", "all"), default="all")
    p.add_argument("--out", default="results/pareto", help="folder for every run, ONNX file and CSV (tar-able)")
    p.add_argument("--tables", default="cpu_ort", help="comma-separated table folders under latency_tables/ "
                                                       "(cpu_ort, h100_cudagraph)")
    p.add_argument("--table-root", default=str(ROOT / "latency_tables"), help="folder holding the tables")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--targets", default="auto", help="latency targets in ms, comma-separated, or 'auto' "
                                                     "(--n-targets values between the cheapest and the dense model)")
    p.add_argument("--n-targets", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5, help="baseline training epochs (from scratch / dense)")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tune epochs after one-shot pruning")
    p.add_argument("--joint-epochs", default="auto", help="warmup,search,finetune epochs of joint runs; auto: "
                   "0,S,F-S with S = F//2 (F = --finetune-epochs), starting from the shared dense model (the supernet "
                   "trained --epochs for nas), i.e. the same budget as magnitude pruning + fine-tune")
    p.add_argument("--joint-bits", default="auto", help="candidate bits of the joint/qat runs, e.g. 4,8 or 8,32; "
                   "auto: 8,32 on an int8 table (its int4 layers run on int8 kernels: no faster), 16,32 otherwise")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--data", default="fashion_mnist", help="fashion_mnist | synthetic")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=100, help="linear lr warm-up batches of every training")
    p.add_argument("--device", default="auto", help="training device: auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads while training (0 = default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optuna-trials", type=int, default=8, help="trained (feasible) trials per target")
    p.add_argument("--optuna-proxy-epochs", type=int, default=1)
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds; configs not started by then are "
                                                                    "skipped (rerun to resume). 0 = no limit")
    p.add_argument("--repeats", type=int, default=3, help="measure stage: repeats of each latency median")
    p.add_argument("--samples", type=int, default=30, help="measure stage: samples per latency median")
    p.add_argument("--no-onnx-accuracy", action="store_true", help="measure stage: skip ONNX test accuracy")
    p.add_argument("--results-dir", default=str(ROOT / "docs" / "results"), help="where plots and CSV go")
    p.add_argument("--tag", default="", help="appended to the plot/CSV names in --results-dir (e.g. cpu-mini)")
    p.add_argument("--smoke", action="store_true", help="synthetic data, 2 targets, 1 epoch each: ~1-2 min on CPU")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.epochs, args.finetune_epochs = "synthetic", 2, 1
        args.n_targets, args.batch_size, args.warmup_steps = min(args.n_targets, 2), 64, 4
        args.optuna_trials, args.repeats, args.samples = 2, 1, 10
        if args.methods == ",".join(METHODS):  # the soft supernet is minutes on 2 CPU cores; ask for it by name
            args.methods = ",".join(m for m in METHODS if m != "nas")
    if args.joint_epochs == "auto":  # the same passes over the data as magnitude pruning + fine-tune
        search = max(1, args.finetune_epochs // 2)
        args.joint_epochs = f"0,{search},{max(0, args.finetune_epochs - search)}"
    return args


_TABLES: dict[str, LatencyTable] = {}


def load_table(args: argparse.Namespace, name: str) -> LatencyTable:
    """Each table is loaded once (and so stays the same object for the whole sweep)."""
    if name not in _TABLES:
        _TABLES[name] = LatencyTable.load(Path(args.table_root) / name)
    return _TABLES[name]


def _compose(overrides: list[str]):
    from pluto.train import compose

    return compose(overrides)


def load_data(args: argparse.Namespace):
    if args.data == "synthetic":
        return build_datasets("synthetic", num_samples=512)
    return build_datasets(args.data, args.data_root, args.train_limit, args.test_limit)


def make_sweep(args: argparse.Namespace, table_name: str, data) -> Sweep:
    from pluto.engine.run import pick_device

    table = load_table(args, table_name)
    trainer = _compose([f"trainer.batch_size={args.batch_size}", f"trainer.lr={args.lr}",
                        f"trainer.warmup_steps={args.warmup_steps}"]).trainer
    train, test, spec = data
    out = Path(args.out) / table_name
    out.mkdir(parents=True, exist_ok=True)
    return Sweep(args, table_name, table, train, test, spec, pick_device(args.device), trainer, out)


def joint_bits(s: Sweep) -> tuple[int, ...]:
    if s.args.joint_bits != "auto":
        return tuple(int(b) for b in s.args.joint_bits.split(","))
    return (8, 32) if "int8" in s.table.precisions else (16, 32)


# ----------------------------------------------------------------------------------------- building blocks
def staged_cnn(spec: DataSpec, widths: tuple[float, float, float]) -> nn.Module:
    """small_cnn with its three stages' channels scaled separately (the Optuna / uniform search space)."""
    from pluto.models.small_cnn import _conv_bn_relu

    model = create_model("small_cnn", spec.num_classes, spec.in_channels, spec.input_size)
    c = [max(4, int(round(w * b))) for w, b in zip(widths, BASE_CHANNELS)]
    model.features = nn.Sequential(
        _conv_bn_relu(spec.in_channels, c[0]), _conv_bn_relu(c[0], c[0]), nn.MaxPool2d(2),
        _conv_bn_relu(c[0], c[1]), _conv_bn_relu(c[1], c[1]), nn.MaxPool2d(2),
        _conv_bn_relu(c[1], c[2]), nn.AdaptiveAvgPool2d(1))
    model.classifier[2] = nn.Linear(c[2], spec.num_classes)
    return model


def predicted_latency(s: Sweep, model: nn.Module, precision: str, bits: dict[str, int] | None = None) -> float:
    """The table's prediction (ms) for a concrete float model deployed at ``precision`` (``bits`` per layer)."""
    model = copy.deepcopy(model).cpu().eval()
    return CostModel(model, s.shape, s.table, precision).of_model(model, "latency_ms", bits or {})


def fit(s: Sweep, model: nn.Module, epochs: int, lr: float | None = None, train=None) -> nn.Module:
    """Plain cross-entropy training (the same loop, optimizer and schedule as a compression run)."""
    train = s.train if train is None else train
    model.to(s.device)
    if epochs <= 0:
        return model
    opt = build_optimizer(model.parameters(), s.trainer, lr)
    sched = build_scheduler(opt, s.trainer, epochs * batches_per_epoch(train, s.trainer.batch_size))
    ce = nn.CrossEntropyLoss()

    def step(x, y):
        return ce(model(x), y), {}

    train_epochs(model, train, step, opt, sched, TrainState(phase="train"), epochs, s.trainer.batch_size,
                 seed=s.args.seed, device=s.device)
    return model


def dense_model(s: Sweep) -> nn.Module:
    """The dense small_cnn trained ``--epochs`` epochs, shared by magnitude / torch_pruning / ptq / dense."""
    path = s.out / "_dense" / "model.pt"
    model = create_model("small_cnn", s.spec.num_classes, s.spec.in_channels, s.spec.input_size)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(s.device)
    torch.manual_seed(s.args.seed)
    fit(s, model, s.args.epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return model


def save_runtime_model(s: Sweep, model: nn.Module, bits: dict[str, int], folder: Path) -> str | None:
    """For tables whose runtime is not onnxruntime (CUDA graphs): a TorchScript of what that runtime times, fp16
    layers included, so ``--stage measure`` re-times every config on the table's chip with nothing else running."""
    from pluto.cost.measure import with_fp16_layers

    if s.table.runtime == "onnxruntime":
        return None
    runnable = with_fp16_layers(model, bits) if 16 in bits.values() else copy.deepcopy(model)
    dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    with torch.no_grad():
        traced = torch.jit.trace(runnable.to(dev).eval(), torch.randn(*s.shape, device=dev))
    path = folder / "model_runtime.ts"
    torch.jit.save(traced, str(path))
    return str(path.resolve().relative_to(Path(s.args.out).resolve()))


def warm_supernet(s: Sweep) -> Path:
    """The MBConv supernet trained ``--epochs`` epochs with uniformly sampled paths (SPOS), shared by the NAS runs of every target as the dense model is shared by the pruning baselines."""
    path = s.out / "_supernet" / "model.pt"
    if path.exists():
        return path
    mkw = {k: v for k, v in _compose(["model=supernet_mbconv"]).model.items() if k != "name"}
    torch.manual_seed(s.args.seed)
    model = create_model("supernet", s.spec.num_classes, s.spec.in_channels, s.spec.input_size, **mkw)
    arch = model.arch_parameters()
    for p in arch:
        p.requires_grad_(False)
    model.set_mode("sample")  # single-path one-shot: a uniformly sampled candidate per block and step
    fit(s, model, s.args.epochs)
    for p in arch:
        p.requires_grad_(True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return path


def deploy(s: Sweep, model: nn.Module, folder: Path, precision: str, bits: dict[str, int] | None = None,
           qmodel: nn.Module | None = None) -> dict[str, Any]:
    """PTQ (when int8), test accuracy, ONNX export, predicted (and, on the table's chip, measured) latency."""
    from pluto.decisions.bits import ptq
    from pluto.materialize.export import export_onnx
    from pluto.cost.measure import Measurer

    example = torch.randn(*s.shape)
    if precision == "int8" and qmodel is None:  # calibrate on the training device: MSE step search is heavy on CPU
        layer_bits = {k: v for k, v in (bits or {}).items() if v != 32}
        qmodel = ptq(model.to(s.device).eval(), s.calibration(256).to(s.device), bits=layer_bits if bits else 8)
    model = model.cpu().eval()
    folder.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        onnx = export_onnx(qmodel, example, folder / "model_int8.onnx", int8=True)
        evaluated = qmodel
    else:
        onnx = export_onnx(model, example, folder / "model_fp32.onnx", int8=False)
        evaluated = model
    accuracy = evaluate(evaluated.to(s.device), s.test_loader(), s.device)["accuracy"]
    ops = extract_ops(model, s.shape)
    row = {"accuracy": accuracy, "params": float(total_params(ops)), "macs": float(total_macs(ops)),
           "predicted_latency_ms": predicted_latency(s, model, precision, bits), "precision": precision,
           "onnx": str(Path(onnx).relative_to(Path(s.args.out)))}
    row["runtime_model"] = save_runtime_model(s, model, {}, folder)
    measurer = Measurer(s.table)
    if s.table.runtime != "onnxruntime" and measurer.reachable()[0]:
        row["measured_latency_ms_train"] = measurer.measure(model, s.shape, onnx=onnx).latency_ms
    return row


def largest_under(target: float, predict: Callable[[float], float], lo: float, hi: float, iters: int = 10) -> float:
    """Largest x in [lo, hi] with predict(x) <= target (predict grows with x); lo when none does."""
    if predict(hi) <= target:
        return hi
    if predict(lo) > target:
        return lo
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if predict(mid) <= target else (lo, mid)
    return lo


# ---------------------------------------------------------------------------------------------- runners
def run_joint(s: Sweep, target: float, folder: Path, variant: str) -> dict[str, Any]:
    """A pluto compression run (or one of its single-decision ablations) against ``target`` ms."""
    from pluto.train import execute

    w, se, f = (int(e) for e in s.args.joint_epochs.split(","))
    bits = joint_bits(s)
    flags = {"joint": dict(prune=True, quantize=True, distill=True),
             "joint_fp": dict(prune=True, quantize=False, distill=True),
             "prune": dict(prune=True, quantize=False, distill=False),
             "qat": dict(prune=False, quantize=True, distill=False),
             "nas": dict(prune=False, quantize=False, distill=False)}[variant]
    overrides = [
        "compress=joint", f"hw={TABLES.get(s.table_name, s.table_name)}",
        f"hw.table={Path(s.args.table_root).resolve() / s.table_name}", "constraints=latency",
        f"constraints.latency_ms={target}", "logger=none", f"trainer.device={s.device.type}",
        f"trainer.batch_size={s.args.batch_size}", f"trainer.lr={s.args.lr}", "trainer.resume=true",
        f"trainer.warmup_steps={s.args.warmup_steps}",
        f"trainer.threads={s.args.threads}", f"seed={s.args.seed}", "trainer.checkpoint_every=100000",
        f"compress.epochs.warmup={w}", f"compress.epochs.search={se}", f"compress.epochs.finetune={f}",
        f"compress.bits=[{','.join(str(b) for b in bits)}]",
        *(f"compress.{k}={str(v).lower()}" for k, v in flags.items()),
        "model=supernet_mbconv" if variant == "nas" else "model=small_cnn",
    ]
    if variant == "nas":
        overrides.append("compress.teacher=none")
    if w == 0:  # start from the trained dense model (or supernet), as the pruning baselines do
        if variant == "nas":
            init = warm_supernet(s)
        else:
            dense_model(s)
            init = s.out / "_dense" / "model.pt"
        overrides.append(f"compress.init_from={init.resolve()}")
    cfg = _compose(overrides)
    run_dir = folder / "run"
    metrics, final = execute(cfg, run_dir, datasets=(s.train, s.test))
    for ckpt in run_dir.glob("*.pt"):  # keep the folder small enough to ship back
        ckpt.unlink()
    from pluto.decisions.bits import strip_quantization

    float_model, chosen = strip_quantization(copy.deepcopy(final).cpu())
    onnx = metrics.get("onnx")
    row = {"accuracy": metrics["accuracy"], "params": metrics.get("params"), "macs": metrics.get("macs"),
           "predicted_latency_ms": metrics.get("predicted_latency_ms"),
           "precision": ("int8" if "int8" in s.table.precisions else "fp16+fp32" if 16 in chosen.values() else "fp32")
           if onnx and onnx.endswith("int8.onnx") else "fp32",
           "onnx": str(Path(onnx).resolve().relative_to(Path(s.args.out).resolve())) if onnx else None,
           "runtime_model": save_runtime_model(s, float_model, chosen, folder),
           "detail": json.dumps({"bits": list(bits), "chosen_bits": chosen,
                                 "constraints_hold": metrics.get("constraints_hold")})}
    if metrics.get("measured_latency_ms") is not None and s.table.runtime != "onnxruntime":
        row["measured_latency_ms_train"] = metrics["measured_latency_ms"]
    return row


def run_uniform(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    def pred(w: float) -> float:
        return predicted_latency(s, staged_cnn(s.spec, (w, w, w)), s.precision)

    width = round(largest_under(target, pred, 0.125, 1.0, iters=7), 4)
    torch.manual_seed(s.args.seed)
    model = fit(s, staged_cnn(s.spec, (width,) * 3), s.total_epochs)
    return {**deploy(s, model, folder, s.precision), "detail": json.dumps({"width": width})}


def _prune_to_target(s: Sweep, target: float, prune: Callable[[nn.Module, float], nn.Module]) -> tuple[nn.Module, float]:
    dense = dense_model(s).cpu()
    ratio = 1.0 - largest_under(target, lambda keep: predicted_latency(s, prune(dense, 1.0 - keep), s.precision),
                                0.05, 1.0, iters=8)
    return prune(dense, ratio), ratio


def run_magnitude(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    from pluto.decisions.channels import DependencyGraph, prune_by_importance

    graph_cache: dict[str, Any] = {}

    def prune(dense: nn.Module, ratio: float) -> nn.Module:
        if "graph" not in graph_cache:
            graph_cache["graph"] = DependencyGraph.build(dense, torch.zeros(s.shape))
        if ratio <= 0:
            return copy.deepcopy(dense)
        return prune_by_importance(dense, graph_cache["graph"], ratio=min(ratio, 0.95), importance="l1")

    model, ratio = _prune_to_target(s, target, prune)
    model = fit(s, model, s.args.finetune_epochs, lr=s.args.lr * 0.2)
    return {**deploy(s, model, folder, s.precision), "detail": json.dumps({"ratio": round(ratio, 4)})}


def run_torch_pruning(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    import torch_pruning as tp

    def prune(dense: nn.Module, ratio: float) -> nn.Module:
        model = copy.deepcopy(dense).cpu().eval()
        if ratio <= 0:
            return model
        pruner = tp.pruner.MagnitudePruner(model, torch.zeros(s.shape), importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=min(ratio, 0.95), ignored_layers=[model.classifier[2]])
        pruner.step()
        return model

    model, ratio = _prune_to_target(s, target, prune)
    model = fit(s, model, s.args.finetune_epochs, lr=s.args.lr * 0.2)
    return {**deploy(s, model, folder, s.precision), "detail": json.dumps({"ratio": round(ratio, 4)})}


def run_ptq(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    return deploy(s, dense_model(s), folder, s.precision)


def run_dense(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    return deploy(s, dense_model(s), folder, "fp32")


def run_optuna(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    """TPE over per-stage widths and bits; the table's prediction is a hard constraint checked before training."""
    import optuna
    from pluto.decisions.bits import ptq

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bits_choices = [b for b in joint_bits(s) if b in (4, 8, 32)] if s.precision == "int8" else [32]
    n = len(s.train)
    cut = int(n * 0.9)
    sub_train, val = Subset(s.train, range(cut)), Subset(s.train, range(cut, n))
    val_loader = DataLoader(val, batch_size=512, shuffle=False)
    grid = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=s.args.seed))

    def config_of(trial) -> tuple[tuple[float, ...], dict[str, int]]:
        widths = tuple(trial.suggest_categorical(f"w{i}", grid) for i in range(3))
        stage_bits = [trial.suggest_categorical(f"b{i}", bits_choices) for i in range(3)]
        return widths, {layer: b for layers, b in zip(STAGE_LAYERS, stage_bits) for layer in layers}

    def precision_of(bits: dict[str, int]) -> str:
        return "int8" if any(b != 32 for b in bits.values()) else "fp32"

    trained, asked = 0, 0
    while trained < s.args.optuna_trials and asked < 25 * s.args.optuna_trials:
        trial = study.ask()
        asked += 1
        widths, bits = config_of(trial)
        model = staged_cnn(s.spec, widths)
        if predicted_latency(s, model, precision_of(bits), bits) > target:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        torch.manual_seed(s.args.seed)
        fit(s, model, s.args.optuna_proxy_epochs, train=sub_train)
        model = model.eval()
        if precision_of(bits) == "int8":
            model = ptq(model.to(s.device), s.calibration(256).to(s.device),
                        bits={k: v for k, v in bits.items() if v != 32})
        study.tell(trial, evaluate(model.to(s.device), val_loader, s.device)["accuracy"])
        trained += 1
    if trained == 0:
        raise InfeasibleConstraintError(f"no configuration of the Optuna space is predicted under {target} ms")
    widths, bits = config_of(study.best_trial)
    torch.manual_seed(s.args.seed)
    model = fit(s, staged_cnn(s.spec, widths), s.total_epochs)
    row = deploy(s, model, folder, precision_of(bits), bits if precision_of(bits) == "int8" else None)
    row["detail"] = json.dumps({"widths": widths, "bits": [bits[layers[0]] for layers in STAGE_LAYERS],
                                "trials_trained": trained, "trials_asked": asked, "best_val": study.best_value})
    return row


RUNNERS: dict[str, Callable[[Sweep, float, Path], dict[str, Any]]] = {
    "joint": lambda s, t, f: run_joint(s, t, f, "joint"), "nas": lambda s, t, f: run_joint(s, t, f, "nas"),
    "joint_fp": lambda s, t, f: run_joint(s, t, f, "joint_fp"),
    "prune": lambda s, t, f: run_joint(s, t, f, "prune"), "qat": lambda s, t, f: run_joint(s, t, f, "qat"),
    "uniform": run_uniform, "magnitude": run_magnitude, "torch_pruning": run_torch_pruning, "ptq": run_ptq,
    "dense": run_dense, "optuna": run_optuna,
}


# ------------------------------------------------------------------------------------------ train stage
def auto_targets(s: Sweep) -> list[float]:
    """``--n-targets`` latencies spaced geometrically over the range the joint run can reach at its deployment
    precision (int8 on an int8 table): from just above small_cnn at width 0.25 to just below the dense model.

    Lower targets are infeasible for int8 deployments on a table whose int8 calibration has a large fixed
    offset (the joint run then stops at once with InfeasibleConstraintError); ask for them with --targets.
    """
    lo = predicted_latency(s, staged_cnn(s.spec, (0.25,) * 3), s.precision)
    hi = max(predicted_latency(s, staged_cnn(s.spec, (1.0,) * 3), p) for p in s.table.precisions)
    return [round(float(t), 4) for t in np.geomspace(lo * 1.05, hi * 0.95, s.args.n_targets)]


def targets_of(s: Sweep) -> list[float]:
    if s.args.targets == "auto":
        return auto_targets(s)
    return [float(t) for t in s.args.targets.split(",")]


def plan(s: Sweep, methods: list[str], targets: list[float]) -> list[tuple[str, float | None]]:
    """Target-major order (every method at one target, then the next), so a time-limited sweep covers all methods."""
    order = sorted(range(len(targets)), key=lambda i: abs(i - (len(targets) - 1) / 2))  # middle targets first
    configs: list[tuple[str, float | None]] = [(m, None) for m in methods if m in SINGLE_POINT]
    for i in order:
        configs += [(m, targets[i]) for m in methods if m not in SINGLE_POINT]
    return configs


def target_tag(target: float | None) -> str:
    return "na" if target is None else f"{target:.4f}ms"


def train_stage(args: argparse.Namespace) -> pd.DataFrame:
    start = time.time()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS) - set(EXTRA_METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS + EXTRA_METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(args)
    for table_name in [t.strip() for t in args.tables.split(",") if t.strip()]:
        s = make_sweep(args, table_name, data)
        targets = targets_of(s)
        print(f"== {table_name}: targets {targets} ms; train device {s.device}; methods {', '.join(methods)}", flush=True)
        budget = {k: getattr(args, k) for k in ("data", "train_limit", "epochs", "finetune_epochs", "joint_epochs",
                                                  "batch_size", "lr", "optuna_trials", "seed")}
        (s.out / "targets.json").write_text(json.dumps({"targets_ms": targets, "methods": methods,
                                                        "train_images": len(s.train), "settings": budget}))
        for method, target in plan(s, methods, targets):
            folder = s.out / method / target_tag(target)
            if (folder / "result.json").exists():
                continue
            if args.time_budget and time.time() - start > args.time_budget:
                print(f"-- time budget spent: skipping {method} @ {target_tag(target)} (rerun to resume)", flush=True)
                continue
            t0 = time.time()
            folder.mkdir(parents=True, exist_ok=True)
            base = {"table": table_name, "method": method, "target_ms": target, "train_device": str(s.device)}
            try:
                torch.manual_seed(args.seed)
                row = {**base, "status": "ok", **RUNNERS[method](s, target if target is not None else math.inf, folder)}
            except InfeasibleConstraintError as exc:
                row = {**base, "status": "infeasible", "detail": str(exc).splitlines()[0]}
            except Exception as exc:  # one failing config must not end the sweep
                (folder / "error.txt").write_text(traceback.format_exc())
                print(f"!! {method} @ {target_tag(target)} failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            row["train_seconds"] = round(time.time() - t0, 2)
            (folder / "result.json").write_text(json.dumps(row, indent=1, default=float))
            acc = row.get("accuracy")
            print(f"-- {method:>13} @ {target_tag(target):>10}: {row['status']}"
                  + (f", acc {acc:.2f}%, predicted {row.get('predicted_latency_ms', float('nan')):.4f} ms" if acc else "")
                  + f" ({row['train_seconds']:.0f} s, {time.time() - start:.0f} s total)", flush=True)
    frame = collect(Path(args.out))
    frame.to_csv(Path(args.out) / "results.csv", index=False)
    return frame


def collect(out: Path) -> pd.DataFrame:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/*/result.json"))]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- measure stage
def measure_onnx(table: LatencyTable, path: Path, shape: tuple[int, ...], repeats: int, samples: int
                 ) -> tuple[float, float]:
    """Median over ``repeats`` rounds (ms) on this CPU with the table's method (pluto's Measurer); also the spread."""
    from pluto.cost.measure import Measurer

    m = Measurer(table, samples=samples, rounds=repeats).measure(input_shape=shape, onnx=path)
    rounds = m.extra["rounds_ms"]
    return m.latency_ms, float(max(rounds) - min(rounds))


def measure_runtime_model(table: LatencyTable, path: Path, shape: tuple[int, ...], repeats: int
                          ) -> tuple[float, float, float]:
    """Median over ``repeats`` of the table runtime's latency (ms) of a saved TorchScript, its spread, and energy (mJ)."""
    from pluto.cost.measure import Measurer

    model = torch.jit.load(str(path), map_location="cuda" if table.device.get("type") == "cuda" else "cpu")
    runs = [Measurer(table, rounds=1).measure(model, shape) for _ in range(repeats)]
    lats = [r.latency_ms for r in runs]
    energies = [r.energy_mj for r in runs if r.energy_mj is not None]
    return float(np.median(lats)), float(max(lats) - min(lats)), float(np.median(energies)) if energies else math.nan


def onnx_accuracy(path: Path, test) -> float:
    from pluto.engine.loop import in_memory_tensors
    from pluto.materialize.export import onnx_session, run_onnx

    x, y = in_memory_tensors(test) or (torch.stack([test[i][0] for i in range(len(test))]),
                                       torch.tensor([int(test[i][1]) for i in range(len(test))]))
    session = onnx_session(path, threads=max(1, torch.get_num_threads()))
    batch = session.get_inputs()[0].shape[0]  # fp32 exports of compression runs have a fixed batch of 1
    logits = run_onnx(session, x, batch_size=batch if isinstance(batch, int) and batch > 0 else 512)
    return float(100.0 * (logits.argmax(1) == y.numpy()).mean())


def pareto_front(points: pd.DataFrame, x: str = "latency_ms", y: str = "accuracy") -> pd.DataFrame:
    """Points no other point beats on both axes (lower latency, higher accuracy), sorted by latency."""
    pts = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    keep, best = [], -math.inf
    for idx, row in pts.iterrows():
        if row[y] > best:
            keep.append(idx)
            best = row[y]
    return pts.loc[keep]


def front_accuracy_at(front: pd.DataFrame, latency: float) -> float:
    """A baseline's accuracy at ``latency`` by linear interpolation of its front; NaN below its fastest point."""
    if front.empty or latency < front["latency_ms"].iloc[0]:
        return math.nan
    return float(np.interp(latency, front["latency_ms"], front["accuracy"]))


def front_latency_for(front: pd.DataFrame, accuracy: float) -> float:
    """The latency at which a baseline's front first reaches ``accuracy`` (interpolated); NaN if it never does."""
    if front.empty or front["accuracy"].max() < accuracy:
        return math.nan
    if accuracy <= front["accuracy"].iloc[0]:
        return float(front["latency_ms"].iloc[0])
    return float(np.interp(accuracy, front["accuracy"], front["latency_ms"]))


def compare(frame: pd.DataFrame, joints: tuple[str, ...] = JOINT_METHODS) -> pd.DataFrame:
    """For every joint point and baseline: accuracy gain at equal measured latency, and latency ratio at equal accuracy.

    The goal holds for a pair when the gain is >= 1 point or the ratio (joint / baseline latency) is <= 0.6.
    Each method named in ``joints`` is compared with every method not named there.
    """
    ok = frame[frame["status"] == "ok"]
    rows = []
    for (table, joint), per_joint in ok[ok["method"].isin(joints)].groupby(["table", "method"]):
        per_table = ok[ok["table"] == table]
        joints_pts = per_joint.dropna(subset=["latency_ms", "accuracy"])
        for method, points in per_table[~per_table["method"].isin(joints)].groupby("method"):
            front = pareto_front(points)
            for _, j in joints_pts.iterrows():
                base_acc = front_accuracy_at(front, j["latency_ms"])
                base_lat = front_latency_for(front, j["accuracy"])
                gain = j["accuracy"] - base_acc if not math.isnan(base_acc) else math.nan
                ratio = j["latency_ms"] / base_lat if not math.isnan(base_lat) else math.nan
                beats = (not math.isnan(gain) and gain >= 1.0) or (not math.isnan(ratio) and ratio <= 0.6) \
                    or (math.isnan(base_acc) and math.isnan(base_lat))
                rows.append({"table": table, "joint": joint, "joint_target_ms": j["target_ms"],
                             "joint_latency_ms": j["latency_ms"],
                             "joint_accuracy": j["accuracy"], "baseline": method, "baseline_accuracy_at_latency": base_acc,
                             "accuracy_gain": gain, "baseline_latency_at_accuracy": base_lat,
                             "latency_ratio": ratio, "goal_met": bool(beats)})
    return pd.DataFrame(rows)


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]


def plot(frame: pd.DataFrame, table: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = frame[(frame["table"] == table) & (frame["status"] == "ok")].dropna(subset=["latency_ms", "accuracy"])
    markers = dict(zip(METHODS + EXTRA_METHODS, "o^sDvP*XhHp"))
    for method, pts in points.groupby("method"):
        front = pareto_front(pts)
        style = dict(lw=2.5, zorder=5, **({"color": "black"} if method == "joint" else {})) \
            if method in JOINT_METHODS else dict(lw=1, alpha=0.8)
        line, = ax.plot(front["latency_ms"], front["accuracy"], marker=markers.get(method, "o"), label=method, **style)
        ax.scatter(pts["latency_ms"], pts["accuracy"], marker=markers.get(method, "o"), facecolors="none",
                   edgecolors=line.get_color(), alpha=0.6)
    ax.set_xlabel("measured latency (ms, batch 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title} ({dt.date.today().isoformat()})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure_stage(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pluto.cost.measure import Measurer
    from pluto.cost.runtimes import cpu_name

    out = Path(args.out)
    frame = collect(out)
    wanted = [t.strip() for t in args.tables.split(",") if t.strip()]
    frame = frame[frame["table"].isin(wanted)].reset_index(drop=True) if not frame.empty else frame
    if frame.empty:
        raise SystemExit(f"no result.json under {out}/<{'|'.join(wanted)}>/<method>/<target>/; run --stage train "
                         "first (or name the trained tables with --tables)")
    test = None if args.no_onnx_accuracy else load_data(args)[1]
    here = cpu_name()
    measured, spread, onnx_acc, energy = [], [], [], []
    for _, row in frame.iterrows():
        lat = sp = acc = en = math.nan
        onnx = row.get("onnx")
        table = load_table(args, row["table"])
        if isinstance(onnx, str) and (out / onnx).exists():
            shape = (1, *load_data_shape(test, args))
            if table.runtime == "onnxruntime":
                lat, sp = measure_onnx(table, out / onnx, shape, args.repeats, args.samples)
            if test is not None:
                acc = onnx_accuracy(out / onnx, test)
        runtime_model = row.get("runtime_model")
        folder = out / row["table"] / row["method"] / target_tag(None if pd.isna(row["target_ms"]) else row["target_ms"])
        if table.runtime != "onnxruntime" and isinstance(runtime_model, str) and (out / runtime_model).exists() \
                and Measurer(table).reachable()[0]:
            lat, sp, en = measure_runtime_model(table, out / runtime_model, (1, *load_data_shape(test, args)),
                                                args.repeats)
            (folder / "measured.json").write_text(json.dumps({"latency_ms": lat, "latency_spread_ms": sp,
                                                              "energy_mj": en, "measured_on": table.device.get("name"),
                                                              "date": dt.date.today().isoformat()}))
        elif table.runtime != "onnxruntime" and (folder / "measured.json").exists():  # timed on the table's chip
            done = json.loads((folder / "measured.json").read_text())
            lat, sp, en = done["latency_ms"], done["latency_spread_ms"], done["energy_mj"]
        if math.isnan(lat) and not pd.isna(row.get("measured_latency_ms_train", math.nan)):
            lat = float(row["measured_latency_ms_train"])
        measured.append(lat)
        spread.append(sp)
        onnx_acc.append(acc)
        energy.append(en)
    frame["latency_ms"], frame["latency_spread_ms"], frame["onnx_accuracy"] = measured, spread, onnx_acc
    frame["energy_mj"] = energy
    frame["torch_accuracy"] = frame.get("accuracy")
    frame["accuracy"] = frame["onnx_accuracy"].where(frame["onnx_accuracy"].notna(), frame["torch_accuracy"])
    frame["measured_on"] = here
    cols = ["table", "method", "target_ms", "status", "accuracy", "torch_accuracy", "latency_ms", "latency_spread_ms",
            "predicted_latency_ms", "energy_mj", "params", "precision", "train_seconds"]
    table_view = frame[[c for c in cols if c in frame]].sort_values(["table", "method", "target_ms"])
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.float_format", "{:.4g}".format):
        print("\n== accuracy (ONNX on the test set) vs measured latency on " + here)
        print(table_view.to_string(index=False))
        comparison = compare(frame)
        if not comparison.empty:
            print("\n== joint vs each baseline (front interpolated at the joint's measured latency; goal: "
                  "gain >= 1 point or latency ratio <= 0.6)")
            print(comparison.to_string(index=False))
            for (table, joint), per in comparison.groupby(["table", "joint"]):
                met = per.groupby("baseline")["goal_met"].agg(["sum", "count"])
                print(f"{table}: {joint} points meeting the goal, per baseline: "
                      + ", ".join(f"{b} {int(r['sum'])}/{int(r['count'])}" for b, r in met.iterrows()))
    date = dt.date.today().isoformat()
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    previous = out / "measured.csv"
    if previous.exists():  # keep tables measured earlier (e.g. on another chip) beside this run's
        old = pd.read_csv(previous)
        frame = pd.concat([old[~old["table"].isin(wanted)], frame], ignore_index=True)
    frame.to_csv(previous, index=False)
    for table in wanted:
        if table not in set(frame["table"]):
            continue
        tbl = load_table(args, table)
        device = here if tbl.runtime == "onnxruntime" else tbl.device.get("name", table)
        train_dev = ",".join(sorted(frame.loc[frame["table"] == table, "train_device"].astype(str).unique()))
        stem = f"pareto_{table}_{date}_{device_slug(device)}"
        if args.smoke:
            stem += "_smoke"
        if args.tag:
            stem += f"_{args.tag}"
        info_file = out / table / "targets.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        budget = info.get("settings", {})
        setting = (f"{budget.get('data', args.data)}, {info.get('train_images', '?')} train images, "
                   f"epochs {budget.get('epochs', '?')} (joint {budget.get('joint_epochs', '?')})")
        plot(frame, table, results / f"{stem}.png",
             f"{table}: small_cnn, {setting}\ntrained on {train_dev}, latency measured on {device}")
        frame[frame["table"] == table].to_csv(results / f"{stem}.csv", index=False)
        if not comparison.empty:
            comparison[comparison["table"] == table].to_csv(results / f"{stem}_comparison.csv", index=False)
        print(f"saved {results / (stem + '.png')}")
    return frame, comparison


def load_data_shape(test, args: argparse.Namespace) -> tuple[int, ...]:
    if test is not None:
        return tuple(test[0][0].shape)
    return (1, 28, 28)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage in ("train", "all"):
        frame = train_stage(args)
        print(f"\n{len(frame)} results in {args.out}/results.csv")
    if args.stage in ("measure", "all"):
        measure_stage(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
