r"""Accuracy vs *measured* latency: the joint optimizer against single-technique baselines (issues 7, 13).

Two stages, so training can run on a GPU and latency is measured on the chip the table describes:

``--stage train``   trains every (method, latency target, seed) config of ``--model`` on the same data and epoch
                    budget, exports each result to ONNX and writes
                    ``<out>/<table>/<method>/<target>/seed<k>/result.json`` (accuracy, predicted latency, MACs,
                    params, ONNX path); ``<out>/results.csv`` gathers them. Resumable across sessions: a config
                    whose ``result.json`` exists is skipped; a failing config logs its traceback to ``error.txt``
                    and the sweep goes on. Seeds run one after the other (seed 0 complete first); each seed's
                    dense model is trained once, cached in ``<out>/<table>/_dense/seed<k>/model.pt``, and every
                    method of that seed starts from it (or, trained from scratch, uses the same seed).
``--stage measure`` times every exported ONNX on *this* CPU with pluto's ``Measurer.measure_interleaved``: all files
                    round-robin in shuffled order for ``--repeats`` rounds, latency = median of the round
                    medians (drift on a shared machine moves every method alike); re-evaluates ONNX accuracy;
                    prints per config, mean +- std over seeds per method/target, the joint-vs-best-baseline
                    gain at equal measured latency (paired by seed) and the joint ablations (MACs-constrained,
                    retrained from scratch); saves plots and CSVs ``docs/results/pareto_<table>_<model>_<date>_
                    <device>*.{png,csv}``.
``--stage all``     both, one after the other.

Methods (``--methods``, comma-separated; default all). Every method builds ``--model`` (any registry model the
channel graph traces); widths are changed through pluto's channel graph, never a per-model builder:

=============== =====================================================================================
joint           pluto's Lagrangian run: pruning + mixed-precision QAT (``--joint-bits``) + KD, from the dense model
joint_macs      the same run with a MACs constraint (no latency) at the MACs of the joint point of the same
                target and seed (runs after it): at equal MACs, how much slower is the hardware-agnostic result?
joint_scratch   the joint point's hardened architecture (widths + bits) re-initialised and trained from scratch for
                the same total epochs (Liu et al. 2019), deployed at its bits: search vs training
joint_fp        (only when named) the joint run without QAT: pruning + KD, fp32 deployment
nas             joint run on the MBConv supernet, op choice only (no pruning, no QAT, no KD), fp32
prune           joint run, channel gates only (no QAT, no KD), fp32
qat             joint run, bit-widths only (no pruning, no KD)
uniform         every channel group's width scaled by one factor (the largest predicted under the target), fresh
                weights, trained from scratch at its own lr (``--scratch-lrs``), PTQ
uniform_depth   depth and width scaled together (models with skippable residual blocks): for each number of dropped
                blocks (each stage's identity blocks in turn, ResNet-20 -> 14 -> 8, ``depth.uniform_order``) the
                widest width factor predicted under the target; the one with the most MACs trains from scratch
                like ``uniform``
magnitude       dense model, one-shot L1 channel pruning (``prune_by_importance``) to the target, fine-tune, PTQ
torch_pruning   same with Torch-Pruning's MagnitudePruner (only if ``import torch_pruning`` works)
ptq             dense model, post-training int8 quantization (one point)
dense           dense model, fp32 (one point, the reference)
optuna          Optuna TPE over per-stage width factors (a stage: the channel groups of one full width, e.g.
                ResNet-20's 16/32/64) + per-stage bits (+ the number of dropped blocks, in ``uniform_order``,
                when the joint runs decide depth), the table's predicted latency a hard constraint; trials
                train ``--proxy-epochs`` and score PTQ accuracy on a held-out 10% of the training set; the best
                is retrained in full
=============== =====================================================================================

Epoch budget: every method sees ``--epochs + --finetune-epochs`` passes over the data: the dense model is trained
``--epochs``; joint / joint_macs / prune / qat start from it with warmup 0 + search S + finetune F - S
(F = ``--finetune-epochs``, S = F // 2); magnitude / torch_pruning fine-tune F; uniform / joint_scratch / the
optuna winner train ``--epochs + --finetune-epochs`` from scratch. "PTQ" means int8 on a table with int8
entries, else the baseline stays fp32.

ResNet-20 on this CPU (issue 13), v2 (2026-12-07: converged dense start, targets below the int8 dense model, depth
decisions; README "ResNet-20 on this CPU, v2"): two processes, one per core (``--threads 1``), resumable (a config
whose result.json exists is skipped; ``--time-budget``: no config starts after it), ONNX files committed with the
results (``git add -f``); then measure with nothing else running::

    C="--stage train --tables cpu_ort_xeon_amx --model resnet20 --seeds 0,1,2 --targets 0.13,0.19,0.25 \
       --data-root /usr/share/datasets/fashion-mnist --train-limit 10000 --epochs 15 --finetune-epochs 3 \
       --warmup-steps 50 --test-limit 5000 --threads 1 --out docs/results/pareto-resnet20-v2"
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/pareto.py $C --methods dense,ptq,joint,joint_macs,joint_scratch &
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/pareto.py $C \
        --methods uniform_depth,magnitude,torch_pruning,uniform,optuna &       # pip install -e .[bench] for Torch-Pruning
    .venv/bin/python scripts/pareto.py --stage measure --tables cpu_ort_xeon_amx --model resnet20 \
        --out docs/results/pareto-resnet20-v2 --data-root /usr/share/datasets/fashion-mnist --test-limit 5000 --repeats 5

v3 (2026-12-07): the joint arms again, the joint runs one at a time with the other core idle (in v2 the other core
trained while a joint run measured in the loop: its landing measurements read ~1.2x the quiet ones, so v2's joint
models sit at 0.80-0.86x of their targets when timed quietly); the baselines are v2's (symlinked, same dense models,
data and budget), all measured together::

    V2=../../pareto-resnet20-v2/cpu_ort_xeon_amx; mkdir -p docs/results/pareto-resnet20-v3/cpu_ort_xeon_amx
    for m in _dense dense ptq uniform_depth optuna magnitude torch_pruning uniform; do
        ln -sfn $V2/$m docs/results/pareto-resnet20-v3/cpu_ort_xeon_amx/$m; done
    C3="${C/pareto-resnet20-v2/pareto-resnet20-v3}"
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/pareto.py $C3 --methods joint       # nothing else running
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/pareto.py $C3 --methods joint_macs &
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/pareto.py $C3 --methods joint_scratch &
    .venv/bin/python scripts/pareto.py --stage measure ... --out docs/results/pareto-resnet20-v3 --tag resnet20-v3

v4 (2026-12-07, afternoon): the joint arms with the measured precision polish (``compress.polish_precision``: the
fp32 layers the search keeps move to int8 when the chip measures the model faster, before the landing), alone on the
machine as in v3; baselines v2's, ``joint_macs`` v3's (symlinked); ``joint_scratch`` retrains v4's architectures::

    V2=../../pareto-resnet20-v2/cpu_ort_xeon_amx; mkdir -p docs/results/pareto-resnet20-v4/cpu_ort_xeon_amx
    for m in _dense dense ptq uniform_depth optuna magnitude torch_pruning uniform; do
        ln -sfn $V2/$m docs/results/pareto-resnet20-v4/cpu_ort_xeon_amx/$m; done
    ln -sfn ../../pareto-resnet20-v3/cpu_ort_xeon_amx/joint_macs docs/results/pareto-resnet20-v4/cpu_ort_xeon_amx/
    C4="${C/pareto-resnet20-v2/pareto-resnet20-v4}"
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/pareto.py $C4 --methods joint       # nothing else running
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/pareto.py $C4 --methods joint_scratch --seeds 0 &
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/pareto.py $C4 --methods joint_scratch --seeds 1,2 &
    .venv/bin/python scripts/pareto.py --stage measure ... --out docs/results/pareto-resnet20-v4 --tag resnet20-v4

v5 (2026-12-07, evening): the joint arm again with the next-block landing, on the table with unaligned grids, alone on
the machine; baselines v2's, ``joint_macs`` v3's (symlinked as for v4, into ``pareto-resnet20-v5``); ``joint_scratch``
not re-run::

    C5="${C/pareto-resnet20-v2/pareto-resnet20-v5}"
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/pareto.py $C5 --methods joint       # nothing else running
    .venv/bin/python scripts/pareto.py --stage measure ... --out docs/results/pareto-resnet20-v5 --tag resnet20-v5

v6 (2026-12-08, the AVX2 AMD EPYC ``a11df4053e64``, where int8 is the *slower* precision: dense ResNet-20 fp32 0.78 ms,
int8 0.84 ms): the table of this machine kind, two targets at 0.32x / 0.51x the dense fp32 model, the strongest
baselines of v5 (``uniform_depth``, ``optuna``) and the joint arms, v2's dense models (same seeds, data, budget)::

    O=docs/results/pareto-resnet20-v6-epyc; mkdir -p $O/cpu_ort_epyc
    ln -sfn ../../pareto-resnet20-v2/cpu_ort_xeon_amx/_dense $O/cpu_ort_epyc/_dense
    C6="${C/cpu_ort_xeon_amx/cpu_ort_epyc}"; C6="${C6/0.13,0.19,0.25/0.25,0.40}"; C6="${C6/pareto-resnet20-v2/pareto-resnet20-v6-epyc}"
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/pareto.py $C6 --methods dense,ptq,joint,joint_macs &
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/pareto.py $C6 --methods uniform_depth,optuna &
    # then, on core 1 when it is free: optuna for seed 2, and the depth ablations (joint_scratch not run in v6):
    for K in 3 1; do mkdir -p $O-depth$K/cpu_ort_epyc; ln -sfn ../../pareto-resnet20-v2/cpu_ort_xeon_amx/_dense \
        $O-depth$K/cpu_ort_epyc/_dense; OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/pareto.py \
        ${C6/$O/$O-depth$K} --methods joint --joint-override compress.depth_lr_scale=$K; done   # K=3: seed 0 only
    # K=1 beside the baselines: $O-lr1/cpu_ort_epyc holds links to $O's _dense, dense, ptq, uniform_depth, optuna and
    # to $O-depth1's joint; then --stage measure ... --out $O-lr1 --tag resnet20-v6-epyc-depthlr1
    .venv/bin/python scripts/pareto.py --stage measure --tables cpu_ort_epyc --model resnet20 --out $O \
        --data-root /usr/share/datasets/fashion-mnist --test-limit 5000 --repeats 5 --tag resnet20-v6-epyc

(the width-only baselines are infeasible at all three targets: at 8 channels everywhere ResNet-20 is predicted
0.251 ms int8; ``--targets 0.28 --methods magnitude,torch_pruning`` adds them at a target they reach.) The v1 sweep
(6 + 2 epochs, table-unit targets 0.27-0.65 ms, trained on the AMD EPYC) is ``docs/results/pareto-resnet20``.

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
antlr4-python3-runtime==4.9.3``), then the call, with ``carry=[".fmnist", ".whl"]`` (to resume a sweep, also
carry its folder, e.g. ``results/pareto-resnet20``, and pass it as ``--out``; the CPU table's configs are
trained there and measured later here, on the chip it describes. The GPU host's CPU is not the table's, so its
joint runs say NOT MEASURED and search on the table's prediction alone: no measured correction, no landing)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site; PYTHONUNBUFFERED=1 python3 scripts/pareto.py --stage train --device cuda \
      --model resnet20 --seeds 0,1,2 --data-root .fmnist --train-limit 30000 --out /tmp/pareto --time-budget 480; \
      tar czf $OUT/pareto.tgz -C /tmp pareto

Issue 13's GPU regime (resnet18, then mobilenet_v2; batch 1 and batch 256): one seed per device call, both H100
tables, trained, measured (CUDA-graph replay at each table's batch; ``measured.json`` per config) and brought back
without model files, so later sessions resume from the small files (a config whose ``result.json`` exists is
skipped; a GPU table's ``measured.json`` is read back by ``--stage measure``)::

    P=docs/results/pareto-gpu-resnet18; mkdir -p $P     # carry=[".fmnist", ".whl", "docs/results/pareto-gpu-resnet18"]
    ... pip install as below ...; TABLES="h100_cudagraph h100_cudagraph_b256" STEPS=train,measure \
      bash scripts/pareto_gpu.sh /tmp/p 420 --model resnet18 --seeds K --n-targets 3 --data-root .fmnist; \
      cp -rn /tmp/p/merged/. $P/; tar czf $OUT/p.tgz --exclude='*.pt' --exclude='*.onnx' $P

then here (measures every ONNX on this CPU, prints the tables, writes docs/results/pareto_*)::

    mkdir -p results && tar xzf /work/.device/.../pareto.tgz -C results
    .venv/bin/python scripts/pareto.py --stage measure --model resnet20 --out results/pareto

CPU-only smoke (synthetic data, 2 targets, tiny; ``--model resnet20`` works the same)::

    .venv/bin/python scripts/pareto.py --smoke --stage all --out /tmp/pareto-smoke
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import importlib.util
import json
import math
import re
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

from pluto.cost.model import CostModel  # noqa: E402
from pluto.cost.ops import extract_ops, total_macs, total_params  # noqa: E402
from pluto.cost.table import LatencyTable  # noqa: E402
from pluto.data import DataSpec, build_datasets  # noqa: E402
from pluto.decisions.channels import DependencyGraph  # noqa: E402
from pluto.engine.loop import TrainState, batches_per_epoch, evaluate, train_epochs  # noqa: E402
from pluto.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from pluto.errors import InfeasibleConstraintError  # noqa: E402
from pluto.models import create_model  # noqa: E402

METHODS = ("joint", "joint_macs", "joint_scratch", "nas", "prune", "qat", "uniform", "uniform_depth", "magnitude",
           "torch_pruning", "ptq", "dense", "optuna")
EXTRA_METHODS = ("joint_fp",)  # run only when named in --methods
JOINT_METHODS = ("joint", "joint_fp")  # compared against every baseline
ABLATIONS = ("joint_macs", "joint_scratch")  # controls of the joint run: compared with it, not counted as baselines
AFTER_JOINT = ("joint_macs", "joint_scratch")  # read the joint result of the same target and seed
SINGLE_POINT = ("ptq", "dense")
TABLES = {"cpu_ort": "cpu_ort_int8", "cpu_ort_epyc": "cpu_ort_int8", "cpu_ort_xeon_amx": "cpu_ort_int8", "h100_cudagraph": "h100_cudagraph"}  # table folder -> configs/hw name


class MissingJoint(RuntimeError):
    """A joint ablation ran before the joint point it needs (rerun after it)."""


# ---------------------------------------------------------------------------------------------- setup
@dataclass
class Sweep:
    """Everything a config runner needs: data, table, model, budget, the seed. Built once per table (and seed)."""

    args: argparse.Namespace
    table_name: str
    table: LatencyTable
    train: Any
    test: Any
    spec: DataSpec
    device: torch.device
    trainer: Any  # the composed trainer config (optimizer, lr, schedule)
    out: Path
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)  # shared by every seed: the channel graph, model kwargs

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

    def holdout(self) -> tuple[Subset, DataLoader]:
        """The first 90% of the training set and a loader over the other 10% (proxy trainings score on it)."""
        cut = int(len(self.train) * 0.9)
        val = Subset(self.train, range(cut, len(self.train)))
        return Subset(self.train, range(cut)), DataLoader(val, batch_size=512, shuffle=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("train", "measure", "all"), default="all")
    p.add_argument("--out", default="results/pareto", help="folder for every run, ONNX file and CSV (tar-able)")
    p.add_argument("--model", default="small_cnn", help="registry model every method builds (configs/model/<name>"
                                                        ".yaml gives its arguments), e.g. resnet20")
    p.add_argument("--tables", default="cpu_ort", help="comma-separated table folders under latency_tables/ "
                                                       "(cpu_ort, h100_cudagraph)")
    p.add_argument("--table-root", default=str(ROOT / "latency_tables"), help="folder holding the tables")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--targets", default="auto", help="latency targets in ms, comma-separated, or 'auto' "
                                                     "(--n-targets values between the model at width 0.25 and dense; "
                                                     "kept in <out>/<table>/targets.json for later sessions)")
    p.add_argument("--n-targets", type=int, default=5)
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each method x target x seed is one config")
    p.add_argument("--epochs", type=int, default=5, help="baseline training epochs (from scratch / dense)")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tune epochs after one-shot pruning")
    p.add_argument("--joint-epochs", default="auto", help="warmup,search,finetune epochs of joint runs; auto: "
                   "0,S,F-S with S = F//2 (F = --finetune-epochs), starting from the shared dense model (the supernet "
                   "trained --epochs for nas), i.e. the same budget as magnitude pruning + fine-tune")
    p.add_argument("--joint-depth", default="auto", choices=("auto", "on", "off"),
                   help="depth decisions (skip residual blocks) in the joint / joint_macs runs; auto: on when the "
                        "model has a skippable block")
    p.add_argument("--joint-override", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra Hydra override of the joint-family runs (repeatable; an ablation of the search, e.g. "
                        "compress.depth_lr_scale=3): recorded in each result's detail and in targets.json")
    p.add_argument("--joint-bits", default="auto", help="candidate bits of the joint/qat runs, e.g. 4,8 or 8,32; "
                   "auto: 8,32 on an int8 table (its int4 layers run on int8 kernels: no faster), 16,32 otherwise")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--data", default="fashion_mnist", help="fashion_mnist | synthetic")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--scratch-lrs", default="auto", help="candidate lrs of the from-scratch methods (uniform, "
                   "joint_scratch), comma-separated: each trains --proxy-epochs on 90%% of the training set and the "
                   "best on the other 10%% trains in full; one value: no tuning; auto: --lr/2, --lr, 2 --lr")
    p.add_argument("--snap", choices=("table", "none"), default="table", help="baselines' kept channel counts snap "
                   "to the table's align (the multiple its runtime runs on fast kernels), as the joint run's do; none: "
                   "round to the nearest channel")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear lr warm-up batches of every training")
    p.add_argument("--device", default="auto", help="training device: auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads while training (0 = default)")
    p.add_argument("--optuna-trials", type=int, default=8, help="trained (feasible) trials per target")
    p.add_argument("--proxy-epochs", "--optuna-proxy-epochs", dest="proxy_epochs", type=int, default=1,
                   help="epochs of an Optuna trial or an lr candidate")
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds; configs not started by then are "
                                                                    "skipped (rerun to resume). 0 = no limit")
    p.add_argument("--repeats", type=int, default=5, help="measure stage: rounds of the interleaved timing")
    p.add_argument("--samples", type=int, default=30, help="measure stage: samples per file over all rounds")
    p.add_argument("--no-onnx-accuracy", action="store_true", help="measure stage: skip ONNX test accuracy")
    p.add_argument("--results-dir", default=str(ROOT / "docs" / "results"), help="where plots and CSV go")
    p.add_argument("--tag", default="", help="appended to the plot/CSV names in --results-dir (e.g. cpu-mini)")
    p.add_argument("--smoke", action="store_true", help="synthetic data, 2 targets, 1-2 epochs each: minutes on CPU")
    args = p.parse_args(argv)
    args.seed_list = [int(k) for k in args.seeds.split(",") if k.strip()]
    if not args.seed_list:
        raise SystemExit(f"--seeds {args.seeds!r} names no seed; pass e.g. --seeds 0,1,2")
    for override in args.joint_override:
        if "=" not in override or override.startswith("="):
            raise SystemExit(f"--joint-override {override!r} is not KEY=VALUE; e.g. --joint-override "
                             "compress.depth_lr_scale=3")
    if args.joint_override:  # a key the config does not have fails here, not minutes into the first joint run
        try:
            _compose(["compress=joint", *args.joint_override])
        except Exception as exc:  # noqa: BLE001 - Hydra's composition errors name the key
            raise SystemExit(f"--joint-override {' '.join(args.joint_override)}: {str(exc).splitlines()[0]}")
    if args.smoke:
        args.data, args.epochs, args.finetune_epochs = "synthetic", 2, 1
        args.n_targets, args.batch_size, args.warmup_steps = min(args.n_targets, 2), 64, 4
        args.optuna_trials, args.repeats, args.samples = 2, 2, 10
        if args.methods == ",".join(METHODS):  # the soft supernet is minutes on 2 CPU cores; ask for it by name
            args.methods = ",".join(m for m in METHODS if m != "nas")
    if args.joint_epochs == "auto":  # the same passes over the data as magnitude pruning + fine-tune
        search = max(1, args.finetune_epochs // 2)
        args.joint_epochs = f"0,{search},{max(0, args.finetune_epochs - search)}"
    args.scratch_lr_list = ([args.lr / 2, args.lr, args.lr * 2] if args.scratch_lrs == "auto"
                            else [float(v) for v in args.scratch_lrs.split(",") if v.strip()])
    return args


_TABLES: dict[str, LatencyTable] = {}


def load_table(args: argparse.Namespace, name: str) -> LatencyTable:
    """Each table is loaded once (and so stays the same object for the whole sweep)."""
    if name not in _TABLES:
        from pluto.cost.adapt import for_this_machine

        # a CPU table from another machine is adapted here (cached per machine), as the joint runs' own pipeline
        # does: baselines, auto targets and the joint search then price with the same table
        _TABLES[name], _ = for_this_machine(LatencyTable.load(Path(args.table_root) / name), siblings=False)
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
def base_model(s: Sweep) -> nn.Module:
    """A fresh ``--model`` with the arguments of ``configs/model/<name>.yaml`` (as a compression run builds it)."""
    if "model_kwargs" not in s.cache:
        s.cache["model_kwargs"] = {k: v for k, v in _compose([f"model={s.args.model}"]).model.items() if k != "name"}
    return create_model(s.args.model, s.spec.num_classes, s.spec.in_channels, s.spec.input_size,
                        **s.cache["model_kwargs"])


def channel_graph(s: Sweep) -> DependencyGraph:
    """The model's channel dependency graph (pluto's): groups of channels that are kept or removed together."""
    if "graph" not in s.cache:
        s.cache["graph"] = DependencyGraph.build(base_model(s), torch.zeros(s.shape))
    return s.cache["graph"]


def width_stages(graph: DependencyGraph) -> list[list[int]]:
    """Channel groups bucketed by full width, in order of first appearance: a CNN's stages (small_cnn 32/64/128,
    ResNet-20 16/32/64, each stage's residual group and its blocks' inner groups). One width factor per stage is
    the Optuna / uniform search space."""
    stages: dict[int, list[int]] = {}
    for g in graph.groups:
        stages.setdefault(g.size, []).append(g.id)
    return list(stages.values())


def layer_stages(graph: DependencyGraph) -> dict[str, int]:
    """Every conv/linear layer -> the stage of the channels it produces (of those it reads when its outputs are
    never pruned, e.g. the classifier): per-stage bit-widths apply through this map."""
    stage_of = {gid: i for i, gids in enumerate(width_stages(graph)) for gid in gids}
    out: dict[str, int] = {}
    for name, layer in graph.layers.items():
        if layer.kind not in ("conv", "linear"):
            continue
        for index in (layer.out_index, layer.in_index):
            ids = index[index >= 0] if index is not None else torch.empty(0)
            if ids.numel():
                out[name] = stage_of[graph.group_of(int(ids[0]))]
                break
    return out


def output_layers(graph: DependencyGraph) -> list[str]:
    """Conv/linear layers whose outputs are never pruned (the classifier): Torch-Pruning must ignore them too."""
    return [name for name, layer in graph.layers.items() if layer.kind in ("conv", "linear")
            and layer.out_index is not None and bool((layer.out_index < 0).all())]


def reinit(model: nn.Module) -> nn.Module:
    """Fresh weights (PyTorch's default init at each layer's current, possibly pruned, size): trained from scratch."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


def width_model(s: Sweep, factors: tuple[float, ...]) -> nn.Module:
    """``--model`` with each stage's channel groups at ``factors[stage]`` x their width, freshly initialised.

    Built as pluto prunes: the channel graph's keep mask (first ``f * size`` channels of every group, snapped to
    :func:`channel_multiple`, at least one) and ``prune_channels``, then :func:`reinit`; so it works for any model
    the graph traces."""
    from pluto.decisions.channels.importance import snap_count
    from pluto.materialize.prune import prune_channels

    graph = channel_graph(s)
    stages = width_stages(graph)
    if len(factors) != len(stages):
        raise ValueError(f"{len(factors)} width factors for {len(stages)} stages of {s.args.model}")
    keep = torch.zeros(graph.num_channels, dtype=torch.bool)
    for gids, f in zip(stages, factors):
        for gid in gids:
            g = graph.groups[gid]
            keep[g.offset:g.offset + snap_count(g.size * f, g.size, channel_multiple(s))] = True
    return reinit(prune_channels(base_model(s), graph, keep))


def channel_multiple(s: Sweep) -> int:
    """The channel multiple baselines snap kept counts to (``--snap``): the table's align, or 1."""
    return int(s.table.align or 1) if s.args.snap == "table" else 1


def predicted_latency(s: Sweep, model: nn.Module, precision: str, bits: dict[str, int] | None = None) -> float:
    """The table's prediction (ms) for a concrete float model deployed at ``precision`` (``bits`` per layer)."""
    model = copy.deepcopy(model).cpu().eval()
    return CostModel(model, s.shape, s.table, precision).of_model(model, "latency_ms", bits or {})


def deploy_precision(s: Sweep, bits: dict[str, int]) -> str:
    """int8 when any layer chose <= 8 bits on an int8 table, else fp32."""
    return "int8" if s.precision == "int8" and any(b <= 8 for b in bits.values()) else "fp32"


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
                 seed=s.seed, device=s.device)
    return model


def tuned_lr(s: Sweep, build: Callable[[], nn.Module]) -> tuple[float, dict[str, float]]:
    """The ``--scratch-lrs`` candidate whose ``--proxy-epochs`` training on 90% of the data scores best on the rest
    (a from-scratch baseline gets its own lr, not the fine-tune's); the only one when one is given."""
    lrs = s.args.scratch_lr_list
    if len(lrs) == 1:
        return lrs[0], {}
    sub_train, val_loader = s.holdout()
    scores: dict[str, float] = {}
    for lr in lrs:
        torch.manual_seed(s.seed)
        model = fit(s, build(), s.args.proxy_epochs, lr=lr, train=sub_train)
        scores[f"{lr:g}"] = evaluate(model, val_loader, s.device)["accuracy"]
    best = max(lrs, key=lambda lr: scores[f"{lr:g}"])
    return best, scores


def dense_path(s: Sweep) -> Path:
    return s.out / "_dense" / f"seed{s.seed}" / "model.pt"


def dense_model(s: Sweep) -> nn.Module:
    """The dense ``--model`` trained ``--epochs`` epochs (once per seed, cached): every method's starting point."""
    path = dense_path(s)
    torch.manual_seed(s.seed)
    model = base_model(s)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(s.device)
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
    path = s.out / "_supernet" / f"seed{s.seed}" / "model.pt"
    if path.exists():
        return path
    mkw = {k: v for k, v in _compose(["model=supernet_mbconv"]).model.items() if k != "name"}
    torch.manual_seed(s.seed)
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
    from pluto.cost.measure import Measurer
    from pluto.decisions.bits import ptq
    from pluto.materialize.export import export_onnx

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


def baseline_precisions(s: Sweep) -> list[str]:
    """Deployments a single-technique baseline may pick: int8 (PTQ) where the table has it, and fp32."""
    return ["int8", "fp32"] if s.precision == "int8" else ["fp32"]


def widest_under(s: Sweep, target: float, build: Callable[[float], nn.Module], lo: float, hi: float,
                 iters: int) -> tuple[float, str]:
    """The largest size x in [lo, hi] (and the precision) whose model ``build(x)`` the table predicts under
    ``target``, over :func:`baseline_precisions`: a baseline deploys fp32 where int8's quantize/dequantize overhead
    makes its small models slower (ties: int8)."""
    best: tuple[float, str] | None = None
    for precision in baseline_precisions(s):
        x = largest_under(target, lambda v: predicted_latency(s, build(v), precision), lo, hi, iters)
        fits = predicted_latency(s, build(x), precision) <= target
        if fits and (best is None or x > best[0]):
            best = (x, precision)
    if best is None:  # never deploy a model that breaks the target as if it met it
        raise InfeasibleConstraintError(f"no size in [{lo:g}, {hi:g}] is predicted under {target} ms (at "
                                        f"{lo:g}: {predicted_latency(s, build(lo), s.precision):.4g} ms)")
    return best


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


def config_folder(s: Sweep, method: str, target: float | None) -> Path:
    return s.out / method / target_tag(target) / f"seed{s.seed}"


def joint_result(s: Sweep, target: float) -> tuple[dict[str, Any], Path]:
    """The joint point of the same target and seed (its result.json and folder) that an ablation starts from."""
    folder = config_folder(s, "joint", target)
    path = folder / "result.json"
    if not path.exists():
        raise MissingJoint(f"joint @ {target_tag(target)} seed {s.seed} has no result yet ({path}); run joint first "
                           "(--methods joint,...), then rerun")
    row = json.loads(path.read_text())
    if row.get("status") != "ok":
        raise InfeasibleConstraintError(f"the joint run @ {target_tag(target)} seed {s.seed} is {row.get('status')}: "
                                        "nothing to compare with")
    return row, folder


# ---------------------------------------------------------------------------------------------- runners
def run_joint(s: Sweep, target: float, folder: Path, variant: str) -> dict[str, Any]:
    """A pluto compression run (or one of its single-decision ablations) against ``target`` ms; ``joint_macs``:
    against the MACs of the joint point of the same target and seed instead."""
    from pluto.decisions.bits import strip_quantization
    from pluto.train import execute

    w, se, f = (int(e) for e in s.args.joint_epochs.split(","))
    bits = joint_bits(s)
    flags = {"joint": dict(prune=True, quantize=True, distill=True),
             "joint_macs": dict(prune=True, quantize=True, distill=True),
             "joint_fp": dict(prune=True, quantize=False, distill=True),
             "prune": dict(prune=True, quantize=False, distill=False),
             "qat": dict(prune=False, quantize=True, distill=False),
             "nas": dict(prune=False, quantize=False, distill=False)}[variant]
    detail: dict[str, Any] = {"bits": list(bits)}
    if variant == "joint_macs":
        joint, _ = joint_result(s, target)
        constraint = ["constraints=none", f"constraints.macs={float(joint['macs'])}"]
        detail["macs_target"] = float(joint["macs"])
    else:
        constraint = ["constraints=latency", f"constraints.latency_ms={target}"]
    overrides = [
        "compress=joint", f"hw={TABLES.get(s.table_name, s.table_name)}",
        f"hw.table={Path(s.args.table_root).resolve() / s.table_name}", "hw.adapt=adapt", *constraint,
        "logger=none", f"trainer.device={s.device.type}",
        f"trainer.batch_size={s.args.batch_size}", f"trainer.lr={s.args.lr}", "trainer.resume=true",
        f"trainer.warmup_steps={s.args.warmup_steps}",
        f"trainer.threads={s.args.threads}", f"seed={s.seed}", "trainer.checkpoint_every=100000",
        f"compress.epochs.warmup={w}", f"compress.epochs.search={se}", f"compress.epochs.finetune={f}",
        f"compress.bits=[{','.join(str(b) for b in bits)}]",
        *(f"compress.{k}={str(v).lower()}" for k, v in flags.items()),
        "model=supernet_mbconv" if variant == "nas" else f"model={s.args.model}",
    ]
    if variant == "nas":
        overrides.append("compress.teacher=none")
    if variant in ("joint", "joint_macs") and joint_depth(s):
        overrides.append("compress.depth=true")
        detail["depth"] = True
    if s.args.joint_override:  # last: an ablation's override wins over the sweep's own
        overrides.extend(s.args.joint_override)
        detail["overrides"] = list(s.args.joint_override)
    if w == 0:  # start from the trained dense model (or supernet), as the pruning baselines do
        if variant == "nas":
            init = warm_supernet(s)
        else:
            dense_model(s)
            init = dense_path(s)
        overrides.append(f"compress.init_from={init.resolve()}")
    cfg = _compose(overrides)
    run_dir = folder / "run"
    metrics, final = execute(cfg, run_dir, datasets=(s.train, s.test))
    for ckpt in run_dir.glob("*.pt"):  # keep the folder small enough to ship back; joint's model.pt: joint_scratch's
        if not (variant == "joint" and ckpt.name == "model.pt"):
            ckpt.unlink()
    float_model, chosen = strip_quantization(copy.deepcopy(final).cpu())
    onnx = metrics.get("onnx")
    detail.update({"chosen_bits": chosen, "constraints_hold": metrics.get("constraints_hold")})
    decided = run_dir / "decisions.json"
    if decided.exists() and "skipped_blocks" in (trail := json.loads(decided.read_text())):
        detail["skipped_blocks"] = trail["skipped_blocks"]
    row = {"accuracy": metrics["accuracy"], "params": metrics.get("params"), "macs": metrics.get("macs"),
           "predicted_latency_ms": metrics.get("predicted_latency_ms"),
           "precision": ("int8" if "int8" in s.table.precisions else "fp16+fp32" if 16 in chosen.values() else "fp32")
           if onnx and onnx.endswith("int8.onnx") else "fp32",
           "onnx": str(Path(onnx).resolve().relative_to(Path(s.args.out).resolve())) if onnx else None,
           "runtime_model": save_runtime_model(s, float_model, chosen, folder), "detail": json.dumps(detail)}
    if metrics.get("measured_latency_ms") is not None and s.table.runtime != "onnxruntime":
        row["measured_latency_ms_train"] = metrics["measured_latency_ms"]
    return row


def run_joint_scratch(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    """The joint point's hardened architecture (widths and bits, from its ``run/model.pt``), re-initialised and
    trained from scratch for the total epochs of every method, then deployed at its bits (PTQ)."""
    from pluto.decisions.bits import strip_quantization
    from pluto.materialize.saving import load

    _, joint_folder = joint_result(s, target)
    saved = joint_folder / "run" / "model.pt"
    if not saved.exists():
        raise MissingJoint(f"{saved} is missing (the joint point was trained before the sweep kept it); delete "
                           f"{joint_folder} and rerun to retrain joint")
    arch, bits = strip_quantization(load(saved))
    torch.manual_seed(s.seed)
    lr, scores = tuned_lr(s, lambda: reinit(copy.deepcopy(arch)))
    torch.manual_seed(s.seed)
    model = fit(s, reinit(copy.deepcopy(arch)), s.total_epochs, lr=lr)
    precision = deploy_precision(s, bits)
    row = deploy(s, model, folder, precision, bits if precision == "int8" else None)
    row["detail"] = json.dumps({"chosen_bits": bits, "lr": lr, "lr_scores": scores})
    return row


def joint_depth(s: Sweep) -> bool:
    """Whether the joint runs decide depth too (``--joint-depth``; auto: when ``--model`` has a skippable block)."""
    if s.args.joint_depth != "auto":
        return s.args.joint_depth == "on"
    return bool(skip_sites(s))


def skip_sites(s: Sweep) -> list:
    from pluto.decisions.depth import skippable_blocks

    if "skip_sites" not in s.cache:
        s.cache["skip_sites"] = skippable_blocks(base_model(s))
    return s.cache["skip_sites"]


def depth_width_model(s: Sweep, dropped: int, width: float | tuple[float, ...]) -> nn.Module:
    """``--model`` at ``width`` x every stage's width (or one factor per stage) without its first ``dropped`` blocks
    of :func:`pluto.decisions.depth.uniform_order` (ResNet-20: 3 -> ResNet-14, 6 -> ResNet-8), freshly initialised."""
    from pluto.decisions.depth import skip_blocks, uniform_order

    factors = width if isinstance(width, tuple) else (width,) * len(width_stages(channel_graph(s)))
    model = width_model(s, factors)
    if not dropped:
        return model
    sites = skip_sites(s)
    return skip_blocks(model, sites, uniform_order(sites)[:dropped])


def run_uniform_depth(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    """Depth and width scaled together: per number of dropped blocks the widest width predicted under ``target``;
    the feasible one with the most MACs, trained from scratch at its own lr."""
    sites = skip_sites(s)
    if not sites:
        raise InfeasibleConstraintError(f"{s.args.model} has no skippable residual block: use 'uniform'")
    best = None
    for dropped in range(len(sites) + 1):
        try:
            width, precision = widest_under(s, target, lambda w: depth_width_model(s, dropped, w), 0.125, 1.0, iters=7)
        except InfeasibleConstraintError:
            continue
        macs = float(total_macs(extract_ops(depth_width_model(s, dropped, width), s.shape)))
        if best is None or macs > best[0]:
            best = (macs, dropped, round(width, 4), precision)
    if best is None:
        raise InfeasibleConstraintError(f"no depth and width of {s.args.model} is predicted under {target} ms")
    _, dropped, width, precision = best
    torch.manual_seed(s.seed)
    lr, scores = tuned_lr(s, lambda: depth_width_model(s, dropped, width))
    torch.manual_seed(s.seed)
    model = fit(s, depth_width_model(s, dropped, width), s.total_epochs, lr=lr)
    return {**deploy(s, model, folder, precision),
            "detail": json.dumps({"dropped_blocks": dropped, "width": width, "lr": lr, "lr_scores": scores})}


def run_uniform(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    """Every stage's width scaled by one factor, the largest the table predicts under ``target``, from scratch."""
    n = len(width_stages(channel_graph(s)))
    width, precision = widest_under(s, target, lambda w: width_model(s, (w,) * n), 0.125, 1.0, iters=7)
    width = round(width, 4)
    torch.manual_seed(s.seed)
    lr, scores = tuned_lr(s, lambda: width_model(s, (width,) * n))
    torch.manual_seed(s.seed)
    model = fit(s, width_model(s, (width,) * n), s.total_epochs, lr=lr)
    return {**deploy(s, model, folder, precision), "detail": json.dumps({"width": width, "lr": lr,
                                                                         "lr_scores": scores})}


def _prune_to_target(s: Sweep, target: float, prune: Callable[[nn.Module, float], nn.Module], lo: float = 0.05
                     ) -> tuple[nn.Module, float, str]:
    """The dense model pruned by the smallest ratio whose result the table predicts under ``target`` (kept fraction
    searched in [``lo``, 1])."""
    dense = dense_model(s).cpu()
    keep, precision = widest_under(s, target, lambda k: prune(dense, 1.0 - k), lo, 1.0, iters=8)
    return prune(dense, 1.0 - keep), 1.0 - keep, precision


def run_magnitude(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    from pluto.decisions.channels import prune_by_importance

    def prune(dense: nn.Module, ratio: float) -> nn.Module:
        if ratio <= 0:
            return copy.deepcopy(dense)
        return prune_by_importance(dense, channel_graph(s), ratio=min(ratio, 0.95), importance="l1",
                                   round_to=channel_multiple(s))

    model, ratio, precision = _prune_to_target(s, target, prune)
    model = fit(s, model, s.args.finetune_epochs, lr=s.args.lr * 0.2)
    return {**deploy(s, model, folder, precision), "detail": json.dumps({"ratio": round(ratio, 4)})}


def run_torch_pruning(s: Sweep, target: float, folder: Path) -> dict[str, Any]:
    import torch_pruning as tp

    outputs = output_layers(channel_graph(s))

    def prune(dense: nn.Module, ratio: float) -> nn.Module:
        model = copy.deepcopy(dense).cpu().eval()
        if ratio <= 0:
            return model
        pruner = tp.pruner.MagnitudePruner(model, torch.zeros(s.shape), importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=min(ratio, 0.95),
                                           round_to=channel_multiple(s) if channel_multiple(s) > 1 else None,
                                           ignored_layers=[model.get_submodule(n) for n in outputs])
        pruner.step()
        return model

    # Torch-Pruning rounds every layer's kept channels to the multiple, and prunes nothing at all once a ratio
    # would leave fewer than one multiple in a layer: search only ratios that keep one in the widest group
    multiple = channel_multiple(s)
    lo = max(0.05, multiple / max(g.size for g in channel_graph(s).groups)) if multiple > 1 else 0.05
    model, ratio, precision = _prune_to_target(s, target, prune, lo=lo)
    model = fit(s, model, s.args.finetune_epochs, lr=s.args.lr * 0.2)
    return {**deploy(s, model, folder, precision), "detail": json.dumps({"ratio": round(ratio, 4)})}


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
    graph = channel_graph(s)
    n_stages, stage_of = len(width_stages(graph)), layer_stages(graph)
    sub_train, val_loader = s.holdout()
    grid = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=s.seed))

    n_sites = len(skip_sites(s)) if joint_depth(s) else 0  # the joint run's decision space: depth too

    def config_of(trial) -> tuple[tuple[float, ...], dict[str, int], int]:
        widths = tuple(trial.suggest_categorical(f"w{i}", grid) for i in range(n_stages))
        stage_bits = [trial.suggest_categorical(f"b{i}", bits_choices) for i in range(n_stages)]
        dropped = trial.suggest_int("dropped", 0, n_sites) if n_sites else 0
        return widths, {layer: stage_bits[i] for layer, i in stage_of.items()}, dropped

    def present(model: nn.Module, bits: dict[str, int]) -> dict[str, int]:
        names = {n for n, _ in model.named_modules()}
        return {k: v for k, v in bits.items() if k in names}

    trained, asked = 0, 0
    while trained < s.args.optuna_trials and asked < 25 * s.args.optuna_trials:
        trial = study.ask()
        asked += 1
        widths, bits, dropped = config_of(trial)
        torch.manual_seed(s.seed)
        model = depth_width_model(s, dropped, widths)
        bits = present(model, bits)
        if predicted_latency(s, model, deploy_precision(s, bits), bits) > target:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        fit(s, model, s.args.proxy_epochs, train=sub_train)
        model = model.eval()
        if deploy_precision(s, bits) == "int8":
            model = ptq(model.to(s.device), s.calibration(256).to(s.device),
                        bits={k: v for k, v in bits.items() if v != 32})
        study.tell(trial, evaluate(model.to(s.device), val_loader, s.device)["accuracy"])
        trained += 1
    if trained == 0:
        raise InfeasibleConstraintError(f"no configuration of the Optuna space is predicted under {target} ms")
    widths, bits, dropped = config_of(study.best_trial)
    torch.manual_seed(s.seed)
    model = fit(s, depth_width_model(s, dropped, widths), s.total_epochs)
    bits = present(model, bits)
    precision = deploy_precision(s, bits)
    row = deploy(s, model, folder, precision, bits if precision == "int8" else None)
    stage_bits = [study.best_trial.params[f"b{i}"] for i in range(n_stages)]
    row["detail"] = json.dumps({"widths": widths, "bits": stage_bits, "dropped_blocks": dropped,
                                "trials_trained": trained, "trials_asked": asked, "best_val": study.best_value})
    return row


RUNNERS: dict[str, Callable[[Sweep, float, Path], dict[str, Any]]] = {
    "joint": lambda s, t, f: run_joint(s, t, f, "joint"), "nas": lambda s, t, f: run_joint(s, t, f, "nas"),
    "joint_macs": lambda s, t, f: run_joint(s, t, f, "joint_macs"), "joint_scratch": run_joint_scratch,
    "joint_fp": lambda s, t, f: run_joint(s, t, f, "joint_fp"),
    "prune": lambda s, t, f: run_joint(s, t, f, "prune"), "qat": lambda s, t, f: run_joint(s, t, f, "qat"),
    "uniform": run_uniform, "uniform_depth": run_uniform_depth, "magnitude": run_magnitude, "torch_pruning": run_torch_pruning, "ptq": run_ptq,
    "dense": run_dense, "optuna": run_optuna,
}


# ------------------------------------------------------------------------------------------ train stage
def auto_targets(s: Sweep) -> list[float]:
    """``--n-targets`` latencies spaced geometrically over the range the joint run can reach at its deployment
    precisions (int8 or fp32): from just above the model at width 0.25 to just below the dense model.

    Lower targets are infeasible for int8 deployments on a table whose int8 calibration has a large fixed
    offset (the joint run then stops at once with InfeasibleConstraintError); ask for them with --targets.
    """
    n = len(width_stages(channel_graph(s)))
    lo = min(predicted_latency(s, width_model(s, (0.25,) * n), p) for p in baseline_precisions(s))
    hi = max(predicted_latency(s, base_model(s), p) for p in s.table.precisions)
    return [round(float(t), 4) for t in np.geomspace(lo * 1.05, hi * 0.95, s.args.n_targets)]


def targets_of(s: Sweep) -> list[float]:
    """Explicit ``--targets``, else those an earlier session of this sweep chose (targets.json), else auto."""
    if s.args.targets != "auto":
        return [float(t) for t in s.args.targets.split(",")]
    info = s.out / "targets.json"
    if info.exists():
        return [float(t) for t in json.loads(info.read_text())["targets_ms"]]
    return auto_targets(s)


def plan(methods: list[str], targets: list[float]) -> list[tuple[str, float | None]]:
    """Target-major order (every method at one target, then the next), so a time-limited sweep covers all methods;
    the joint ablations right after the joint run they read."""
    order = sorted(range(len(targets)), key=lambda i: abs(i - (len(targets) - 1) / 2))  # middle targets first
    methods = sorted(methods, key=lambda m: m in AFTER_JOINT)  # stable: the rest keep their order
    configs: list[tuple[str, float | None]] = [(m, None) for m in methods if m in SINGLE_POINT]
    for i in order:
        configs += [(m, targets[i]) for m in methods if m not in SINGLE_POINT]
    return configs


def target_tag(target: float | None) -> str:
    return "na" if target is None else f"{target:.4f}ms"


def check_out(s: Sweep) -> None:
    """One model per output folder: a sweep resumed with another --model would mix two models' results."""
    info = s.out / "targets.json"
    if info.exists():
        swept = json.loads(info.read_text()).get("model", "small_cnn")
        if swept != s.args.model:
            raise SystemExit(f"{s.out} holds a sweep of {swept}, not {s.args.model}: pass --model {swept} to resume "
                             "it, or another --out")


def train_stage(args: argparse.Namespace) -> pd.DataFrame:
    start = time.time()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS) - set(EXTRA_METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS + EXTRA_METHODS)}")
    if "torch_pruning" in methods and importlib.util.find_spec("torch_pruning") is None:
        print("-- torch_pruning is not importable here: that baseline is skipped (pip install torch-pruning)")
        methods.remove("torch_pruning")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(args)
    for table_name in [t.strip() for t in args.tables.split(",") if t.strip()]:
        sweep = make_sweep(args, table_name, data)
        check_out(sweep)
        targets = targets_of(sweep)
        print(f"== {table_name}: {args.model}, targets {targets} ms, seeds {args.seed_list}; train device "
              f"{sweep.device}; methods {', '.join(methods)}", flush=True)
        budget = {k: getattr(args, k) for k in ("data", "train_limit", "epochs", "finetune_epochs", "joint_epochs",
                                                  "batch_size", "lr", "scratch_lrs", "optuna_trials", "seeds",
                                                  "joint_override")}
        info = sweep.out / "targets.json"  # a run of some --targets keeps the others an earlier session swept
        before = json.loads(info.read_text()) if info.exists() else {}
        seeds_before = str(before.get("settings", {}).get("seeds", "")).split(",")  # and the seeds (one per process)
        budget["seeds"] = ",".join(str(k) for k in sorted({int(k) for k in [*seeds_before, *args.seed_list]
                                                           if str(k).strip()}))
        (sweep.out / "targets.json").write_text(json.dumps({"model": args.model,
                                                            "targets_ms": sorted({*before.get("targets_ms", []),
                                                                                  *targets}),
                                                            "methods": list(dict.fromkeys([*before.get("methods", []),
                                                                                           *methods])),
                                                            "train_images": len(sweep.train),
                                                            "settings": budget}))
        for seed in args.seed_list:
            s = dataclasses.replace(sweep, seed=seed)  # the cache (graph, model arguments) is shared
            for method, target in plan(methods, targets):
                folder = config_folder(s, method, target)
                tag = f"{method} @ {target_tag(target)} seed {seed}"
                if (folder / "result.json").exists():
                    continue
                if args.time_budget and time.time() - start > args.time_budget:
                    print(f"-- time budget spent: skipping {tag} (rerun to resume)", flush=True)
                    continue
                t0 = time.time()
                folder.mkdir(parents=True, exist_ok=True)
                base = {"table": table_name, "model": args.model, "method": method, "target_ms": target, "seed": seed,
                        "train_device": str(s.device)}
                try:
                    torch.manual_seed(seed)
                    row = {**base, "status": "ok", **RUNNERS[method](s, target if target is not None else math.inf,
                                                                     folder)}
                except InfeasibleConstraintError as exc:
                    row = {**base, "status": "infeasible", "detail": str(exc).splitlines()[0]}
                except MissingJoint as exc:
                    print(f"-- {tag}: {exc}", flush=True)
                    continue
                except Exception as exc:  # one failing config must not end the sweep
                    (folder / "error.txt").write_text(traceback.format_exc())
                    print(f"!! {tag} failed: {type(exc).__name__}: {exc}", flush=True)
                    continue
                row["train_seconds"] = round(time.time() - t0, 2)
                (folder / "result.json").write_text(json.dumps(row, indent=1, default=float))
                acc = row.get("accuracy")
                print(f"-- {method:>13} @ {target_tag(target):>10} seed {seed}: {row['status']}"
                      + (f", acc {acc:.2f}%, predicted {row.get('predicted_latency_ms') or float('nan'):.4f} ms"
                         if acc else "")
                      + f" ({row['train_seconds']:.0f} s, {time.time() - start:.0f} s total)", flush=True)
    frame = collect(Path(args.out))
    frame.to_csv(Path(args.out) / "results.csv", index=False)
    return frame


def collect(out: Path) -> pd.DataFrame:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/*/seed*/result.json"))]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- measure stage
GOAL_GAIN, GOAL_RATIO = 1.0, 0.7  # issue 13: >= +1.0 point at equal latency, or equal accuracy at <= 0.7x latency


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


def _seeded(frame: pd.DataFrame) -> pd.DataFrame:
    return frame if "seed" in frame else frame.assign(seed=0)


def compare(frame: pd.DataFrame, joints: tuple[str, ...] = JOINT_METHODS) -> pd.DataFrame:
    """For every joint point and baseline of the same seed: accuracy gain at equal measured latency, and latency
    ratio at equal accuracy.

    The goal holds for a pair when the gain is >= 1 point or the ratio (joint / baseline latency) is <= 0.7.
    Each method named in ``joints`` is compared with every method that is neither named there nor a joint
    ablation (:data:`ABLATIONS`); a baseline's front is made of its points of the same seed.
    """
    ok = _seeded(frame[frame["status"] == "ok"])
    rows = []
    for (table, seed, joint), per_joint in ok[ok["method"].isin(joints)].groupby(["table", "seed", "method"]):
        per_table = ok[(ok["table"] == table) & (ok["seed"] == seed)]
        joints_pts = per_joint.dropna(subset=["latency_ms", "accuracy"])
        baselines = per_table[~per_table["method"].isin(joints) & ~per_table["method"].isin(ABLATIONS)]
        for method, points in baselines.groupby("method"):
            front = pareto_front(points)
            for _, j in joints_pts.iterrows():
                base_acc = front_accuracy_at(front, j["latency_ms"])
                base_lat = front_latency_for(front, j["accuracy"])
                gain = j["accuracy"] - base_acc if not math.isnan(base_acc) else math.nan
                ratio = j["latency_ms"] / base_lat if not math.isnan(base_lat) else math.nan
                beats = (not math.isnan(gain) and gain >= GOAL_GAIN) or (not math.isnan(ratio) and ratio <= GOAL_RATIO) \
                    or (math.isnan(base_acc) and math.isnan(base_lat))
                rows.append({"table": table, "seed": seed, "joint": joint, "joint_target_ms": j["target_ms"],
                             "joint_latency_ms": j["latency_ms"],
                             "joint_accuracy": j["accuracy"], "baseline": method, "baseline_accuracy_at_latency": base_acc,
                             "accuracy_gain": gain, "baseline_latency_at_accuracy": base_lat,
                             "latency_ratio": ratio, "goal_met": bool(beats)})
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series) -> tuple[float, float]:
    v = values.dropna()
    return (float(v.mean()) if len(v) else math.nan, float(v.std(ddof=1)) if len(v) > 1 else math.nan)


def gain_over_best(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per joint point: the gain over the *best* baseline at its measured latency (the baseline whose front is most
    accurate there), paired by seed, then mean +- std over seeds; and the latency ratio to the baseline that reaches
    the joint's accuracy fastest. ``goal_met``: mean gain >= 1 point or mean ratio <= 0.7."""
    if comparison.empty:
        return pd.DataFrame()
    per_seed = []
    for (table, joint, target, seed), rows in comparison.groupby(["table", "joint", "joint_target_ms", "seed"]):
        at = rows.dropna(subset=["baseline_accuracy_at_latency"])
        fast = rows.dropna(subset=["latency_ratio"])
        best = at.loc[at["baseline_accuracy_at_latency"].idxmax()] if len(at) else None
        per_seed.append({"table": table, "joint": joint, "target_ms": target, "seed": seed,
                         "latency_ms": rows["joint_latency_ms"].iloc[0], "accuracy": rows["joint_accuracy"].iloc[0],
                         "best_baseline": best["baseline"] if best is not None else None,
                         "gain": best["accuracy_gain"] if best is not None else math.nan,
                         "ratio": fast["latency_ratio"].max() if len(fast) else math.nan})
    per_seed = pd.DataFrame(per_seed)
    rows = []
    for (table, joint, target), g in per_seed.groupby(["table", "joint", "target_ms"]):
        gain, gain_sd = _mean_std(g["gain"])
        ratio, ratio_sd = _mean_std(g["ratio"])
        rows.append({"table": table, "joint": joint, "target_ms": target, "seeds": len(g),
                     "latency_ms": g["latency_ms"].mean(), "accuracy": g["accuracy"].mean(),
                     "best_baselines": ",".join(sorted(set(g["best_baseline"].dropna()))),
                     "gain_vs_best": gain, "gain_vs_best_std": gain_sd,
                     "latency_ratio_vs_best": ratio, "latency_ratio_vs_best_std": ratio_sd,
                     "goal_met": bool((not math.isnan(gain) and gain >= GOAL_GAIN)
                                      or (not math.isnan(ratio) and ratio <= GOAL_RATIO))})
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std over seeds per table / method / target: accuracy, measured and predicted latency, MACs."""
    ok = _seeded(frame[frame["status"] == "ok"]).copy()
    ok["target"] = ok["target_ms"].map(lambda t: "na" if pd.isna(t) else f"{t:.4f}")
    rows = []
    for (table, method, target), g in ok.groupby(["table", "method", "target"]):
        acc, acc_sd = _mean_std(g["accuracy"])
        lat, lat_sd = _mean_std(g["latency_ms"])
        rows.append({"table": table, "method": method, "target_ms": g["target_ms"].iloc[0], "seeds": len(g),
                     "accuracy": acc, "accuracy_std": acc_sd, "latency_ms": lat, "latency_std": lat_sd,
                     "predicted_latency_ms": g["predicted_latency_ms"].mean() if "predicted_latency_ms" in g else math.nan,
                     "macs": g["macs"].mean() if "macs" in g else math.nan,
                     "energy_mj": g["energy_mj"].mean() if "energy_mj" in g else math.nan})
    return pd.DataFrame(rows)


def ablations(frame: pd.DataFrame) -> pd.DataFrame:
    """The joint run against its controls, per target, paired by seed (mean +- std over seeds):
    joint_macs (MACs ratio ~1 by construction; latency ratio > 1: how much slower the MACs-constrained result runs
    at equal MACs) and joint_scratch (accuracy joint - scratch: what the search's training adds)."""
    ok = _seeded(frame[frame["status"] == "ok"])
    joint = ok[ok["method"] == "joint"].set_index(["table", "target_ms", "seed"])
    rows = []
    for method in ABLATIONS:
        other = ok[ok["method"] == method].set_index(["table", "target_ms", "seed"])
        both = joint.merge(other, how="inner", left_index=True, right_index=True, suffixes=("_joint", "_abl"))
        if both.empty:
            continue
        both = both.assign(macs_ratio=both["macs_abl"] / both["macs_joint"],
                           latency_ratio=both["latency_ms_abl"] / both["latency_ms_joint"],
                           accuracy_joint_minus=both["accuracy_joint"] - both["accuracy_abl"])
        for (table, target), g in both.groupby(level=["table", "target_ms"]):
            row = {"table": table, "ablation": method, "target_ms": target, "seeds": len(g)}
            for col in ("macs_ratio", "latency_ratio", "accuracy_joint_minus"):
                row[col], row[f"{col}_std"] = _mean_std(g[col])
            rows.append(row)
    return pd.DataFrame(rows)


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]


def plot(summary: pd.DataFrame, table: str, path: Path, title: str) -> None:
    """Mean over seeds per method and target (error bars: std), each method's front of means as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = summary[summary["table"] == table].dropna(subset=["latency_ms", "accuracy"])
    markers = dict(zip(METHODS + EXTRA_METHODS, "o^sDvP*XhHpd<>"))
    for method, pts in points.groupby("method"):
        front = pareto_front(pts)
        style = dict(lw=2.5, zorder=5, **({"color": "black"} if method == "joint" else {})) \
            if method in JOINT_METHODS else dict(lw=1, alpha=0.8, ls="--" if method in ABLATIONS else "-")
        line, = ax.plot(front["latency_ms"], front["accuracy"], marker=markers.get(method, "o"), label=method, **style)
        ax.errorbar(pts["latency_ms"], pts["accuracy"], xerr=pts["latency_std"].fillna(0),
                    yerr=pts["accuracy_std"].fillna(0), fmt="none", ecolor=line.get_color(), alpha=0.5)
    ax.set_xlabel("measured latency (ms, batch 1)")
    ax.set_ylabel("test accuracy (%), mean +- std over seeds")
    ax.set_title(f"{title} ({dt.date.today().isoformat()})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure_table(args: argparse.Namespace, out: Path, frame: pd.DataFrame, test) -> pd.DataFrame:
    """Latency (and energy) of one table's configs: ORT files interleaved here, runtime models on the table's GPU."""
    from pluto.cost.measure import Measurer

    table = load_table(args, frame["table"].iloc[0])
    shape = (1, *load_data_shape(test, args))
    frame = frame.copy()
    frame["latency_ms"], frame["latency_iqr_ms"], frame["energy_mj"] = math.nan, math.nan, math.nan
    has_onnx = [i for i, onnx in frame["onnx"].items() if isinstance(onnx, str) and (out / onnx).exists()] \
        if "onnx" in frame else []
    if table.runtime == "onnxruntime" and has_onnx:
        measurer = Measurer(table, samples=args.samples, rounds=args.repeats)
        timed = measurer.measure_interleaved([out / frame.at[i, "onnx"] for i in has_onnx], shape, progress=True)
        for i, m in zip(has_onnx, timed):
            frame.at[i, "latency_ms"], frame.at[i, "latency_iqr_ms"] = m.latency_ms, m.latency_iqr_ms
    for i, row in frame.iterrows():
        folder = out / row["table"] / row["method"] / target_tag(None if pd.isna(row["target_ms"]) else row["target_ms"]) \
            / f"seed{int(row['seed'])}"
        runtime_model = row.get("runtime_model")
        if table.runtime != "onnxruntime" and isinstance(runtime_model, str) and (out / runtime_model).exists() \
                and Measurer(table).reachable()[0]:
            lat, sp, en = measure_runtime_model(table, out / runtime_model, shape, args.repeats)
            (folder / "measured.json").write_text(json.dumps({"latency_ms": lat, "latency_spread_ms": sp,
                                                              "energy_mj": en, "measured_on": table.device.get("name"),
                                                              "date": dt.date.today().isoformat()}))
            frame.at[i, "latency_ms"], frame.at[i, "energy_mj"] = lat, en
        elif table.runtime != "onnxruntime" and (folder / "measured.json").exists():  # timed on the table's chip
            done = json.loads((folder / "measured.json").read_text())
            frame.at[i, "latency_ms"], frame.at[i, "energy_mj"] = done["latency_ms"], done["energy_mj"]
        if math.isnan(frame.at[i, "latency_ms"]) and not pd.isna(row.get("measured_latency_ms_train", math.nan)):
            frame.at[i, "latency_ms"] = float(row["measured_latency_ms_train"])
    onnx_acc = pd.Series(math.nan, index=frame.index)
    if test is not None:
        for i in has_onnx:
            onnx_acc[i] = onnx_accuracy(out / frame.at[i, "onnx"], test)
    frame["onnx_accuracy"] = onnx_acc
    return frame


def measure_stage(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pluto.cost.runtimes import cpu_name

    out = Path(args.out)
    frame = collect(out)
    wanted = [t.strip() for t in args.tables.split(",") if t.strip()]
    frame = frame[frame["table"].isin(wanted)].reset_index(drop=True) if not frame.empty else frame
    if frame.empty:
        raise SystemExit(f"no result.json under {out}/<{'|'.join(wanted)}>/<method>/<target>/seed<k>/; run --stage "
                         "train first (or name the trained tables with --tables)")
    test = None if args.no_onnx_accuracy else load_data(args)[1]
    here = cpu_name()
    frame = pd.concat([measure_table(args, out, per, test) for _, per in frame.groupby("table", sort=False)])
    frame["torch_accuracy"] = frame.get("accuracy")
    frame["accuracy"] = frame["onnx_accuracy"].where(frame["onnx_accuracy"].notna(), frame["torch_accuracy"])
    frame["measured_on"] = here
    summary, comparison = summarize(frame), compare(frame)
    gains, ablated = gain_over_best(comparison), ablations(frame)
    cols = ["table", "method", "target_ms", "seed", "status", "accuracy", "torch_accuracy", "latency_ms",
            "latency_iqr_ms", "predicted_latency_ms", "macs", "energy_mj", "params", "precision", "train_seconds"]
    with pd.option_context("display.width", 220, "display.max_rows", 1000, "display.float_format", "{:.4g}".format):
        print("\n== accuracy (ONNX on the test set) vs measured latency (interleaved) on " + here)
        print(frame[[c for c in cols if c in frame]].sort_values(["table", "method", "target_ms", "seed"])
              .to_string(index=False))
        print("\n== mean +- std over seeds")
        print(summary.to_string(index=False))
        if not gains.empty:
            print(f"\n== joint vs the best baseline at its measured latency, paired by seed (goal: gain >= "
                  f"{GOAL_GAIN:g} point or latency ratio <= {GOAL_RATIO:g})")
            print(gains.to_string(index=False))
            for (table, joint), per in gains.groupby(["table", "joint"]):
                print(f"{table}: {joint} meets the goal at {int(per['goal_met'].sum())} of {len(per)} targets")
        if not ablated.empty:
            print("\n== joint ablations (ratios ablation / joint; accuracy joint - ablation), paired by seed")
            print(ablated.to_string(index=False))
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
        per = frame[frame["table"] == table]
        train_dev = ",".join(sorted(per["train_device"].astype(str).unique()))
        model = ",".join(sorted(per["model"].dropna().astype(str).unique())) if "model" in per else args.model
        stem = f"pareto_{table}_{device_slug(model)}_{date}_{device_slug(device)}"
        if args.smoke:
            stem += "_smoke"
        if args.tag:
            stem += f"_{args.tag}"
        info_file = out / table / "targets.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        budget = info.get("settings", {})
        setting = (f"{budget.get('data', args.data)}, {info.get('train_images', '?')} train images, "
                   f"epochs {budget.get('epochs', '?')} (joint {budget.get('joint_epochs', '?')}), "
                   f"seeds {budget.get('seeds', '?')}")
        plot(summary, table, results / f"{stem}.png",
             f"{table}: {model}, {setting}\ntrained on {train_dev}, latency measured on {device} (interleaved)")
        per.to_csv(results / f"{stem}.csv", index=False)
        for name, part in (("summary", summary), ("comparison", comparison), ("gain", gains), ("ablation", ablated)):
            if not part.empty:
                part[part["table"] == table].to_csv(results / f"{stem}_{name}.csv", index=False)
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
