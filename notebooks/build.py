"""Write and execute the notebooks (``quickstart.ipynb``, ``api_tour.ipynb``, ``sr.ipynb``) from the cell sources below.

The notebooks are stored *executed* (outputs included) so they read on GitHub; re-run this after an
API change:  ``.venv/bin/python notebooks/build.py`` (each notebook runs in well under a minute on CPU).
``tests/notebooks`` executes the stored notebooks again and fails on any cell error.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

SETUP = """\
import os, warnings
from pathlib import Path
import torch
warnings.filterwarnings("ignore")
# run from the repository root whichever folder the notebook was opened in
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
os.chdir(ROOT)
torch.set_num_threads(2)
_ = torch.manual_seed(0)"""

QUICKSTART = [
    ("md", """\
# pluto quickstart

Three steps, all on this CPU in under a minute:

1. **profile** a tiny latency table of *this* machine (onnxruntime, batch 1),
2. **compress** a small CNN against it with `pluto.compress` (channel pruning + distillation under a latency budget),
3. **look at the Pareto plot**: accuracy vs *measured* latency of the compressed model against plain width scaling.

Synthetic data keeps it fast; swap `data=(train, test)` for `data="fashion_mnist"` for real numbers."""),
    ("code", SETUP),
    ("md", """\
## 1. Profile a tiny table

A *space* lists the layer shapes worth measuring (here: every conv/linear of `small_cnn` at channel
counts from a grid). `profile` times each one with the runtime a deployment would use and fits a
small end-to-end calibration on whole networks. The shipped tables (`latency_tables/cpu_ort`,
`latency_tables/h100_cudagraph`) were made the same way with a larger space."""),
    ("code", """\
import tempfile
from pluto.cost.profiler import profile
from pluto.cost.space import ProfileSpace

space = ProfileSpace.from_dict({
    "name": "tiny", "channel_grid": [8, 16, 32, 64, 128], "min_width": 0.25,
    "models": [{"name": "small_cnn", "input_shape": [1, 28, 28]}],
    "calibration": {"models": True},
})
work = Path(tempfile.mkdtemp(prefix="pluto-quickstart-"))
table = profile(space, work / "tiny_cpu", device="cpu", runtime="onnxruntime", precisions=("fp32",),
                samples=5, min_sample_s=0.0005, progress=False)
print(table)
table.entries[["kind", "kernel", "hw", "cin", "cout", "latency_ms"]].head()"""),
    ("code", """\
import pluto

shape = (1, 1, 28, 28)
for width in (0.25, 0.5, 1.0):
    model = pluto.create_model("small_cnn", width=width)
    print(f"small_cnn width {width:4}: predicted {table.predict(model, shape):.4f} ms per image")"""),
    ("md", """\
## 2. Compress against the table

`pluto.compress(model, table, constraints, data=...)` runs warm-up, a Lagrangian search over channel
gates (the multiplier rises while the expected latency is over budget), hardening, fine-tuning with
distillation, and a report that **measures** the result on this machine (it is the table's device).
The verdict is taken on the measurement, not the prediction: on a busy shared machine the measured
latency can exceed the prediction, and the report then says VIOLATED."""),
    ("code", """\
from pluto.data import make_synthetic

train, test = make_synthetic(1024, seed=0), make_synthetic(256, seed=1)
dense = pluto.create_model("small_cnn")
target = round(0.6 * table.predict(dense, shape), 4)
result = pluto.compress(
    dense, table, {"latency_ms": target}, data=(train, test),
    epochs={"warmup": 1, "search": 2, "finetune": 1}, precision="fp32", quantize=False,
    run_dir=work / "run", overrides=["trainer=quick", "trainer.batch_size=64", "trainer.warmup_steps=5", "logger=none"],
)
for verdict in result.report["constraints"]:
    print(verdict["constraint"], "predicted", round(verdict["predicted"], 4), "measured", verdict["measured"],
          "holds:", verdict["holds"])
result"""),
    ("md", """\
## 3. The Pareto plot

Each point: test accuracy vs latency measured with onnxruntime on this CPU. The baseline scales every
layer's width uniformly and trains from scratch with the same number of epochs. (With synthetic data and
one-epoch budgets the accuracies say little; `scripts/pareto.py` makes the real plot, shown below when
one is in `docs/results/`.)"""),
    ("code", """\
import matplotlib.pyplot as plt
from IPython.display import display
from torch import nn
from pluto.cost.runtimes import Runtime, time_call
from pluto.engine.loop import evaluate
from torch.utils.data import DataLoader

def train_plain(model, epochs=4):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = train.tensors
    for _ in range(epochs):
        for i in range(0, len(y), 64):
            loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()

def measured_ms(model):
    work = Runtime("onnxruntime", "cpu", 1).prepare(model.eval(), (torch.randn(shape),))
    return time_call(work, samples=10).median_ms

loader = DataLoader(test, batch_size=256)
points = []
for width in (0.25, 0.5, 1.0):
    model = train_plain(pluto.create_model("small_cnn", width=width))
    points.append((measured_ms(model), evaluate(model, loader)["accuracy"]))
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(*zip(*points), "o-", label="uniform width (baseline)")
ax.plot([result.metrics["measured_latency_ms"]], [result.metrics["accuracy"]], "k*", ms=14, label="pluto.compress")
ax.axvline(target, ls="--", color="gray", label="latency target")
ax.set_xlabel("measured latency (ms)"); ax.set_ylabel("test accuracy (%)"); ax.legend(fontsize=8)
fig.tight_layout()
display(fig)  # (pluto's report switches matplotlib to the Agg backend, so plt.show() would draw nothing)
plt.close(fig)"""),
    ("code", """\
from IPython.display import Image, display

plots = sorted(p for p in (ROOT / "docs" / "results").glob("pareto_cpu_ort_*.png") if "smoke" not in p.name)
if plots:
    print(plots[-1].name)
    display(Image(str(plots[-1])))
else:
    print("no sweep plot yet: run scripts/pareto.py (see its docstring)")"""),
]

API_TOUR = [
    ("md", """\
# pluto API tour

One cell per concept, in the order data flows: **cost** (tables, ops, expected cost with gradients) →
**decisions** (channels, bits, ops) → **materialize** (a real smaller model, ONNX) → **optimizer**
(the Lagrangian). Everything runs on CPU in seconds."""),
    ("code", SETUP),
    ("md", "## LatencyTable: measured cost of each layer shape on one chip"),
    ("code", """\
import pluto
from pluto.cost.table import LatencyTable

# the shipped H100 table (CUDA graphs, fp32/fp16, NVML energy): predictions need no GPU, only the table
table = LatencyTable.load("latency_tables/h100_cudagraph")
print(table)
print("device:", table.device["name"], "| runtime:", table.runtime, "| threads:", table.metadata.get("threads"))
model = pluto.create_model("small_cnn")
shape = (1, 1, 28, 28)
for precision in table.precisions:
    print(f"small_cnn {precision}: {table.predict(model, shape, precision=precision):.4f} ms, "
          f"{table.predict(model, shape, 'energy_mj', precision=precision):.4f} mJ predicted")"""),
    ("md", "## extract_ops: the layers a table prices, traced with torch.fx"),
    ("code", """\
import pandas as pd
from pluto.cost.ops import extract_ops

ops = extract_ops(model, shape)
pd.DataFrame([{"name": o.name, "kind": o.kind, "kernel": o.kernel, "cin": o.cin, "cout": o.cout, "macs": o.macs}
              for o in ops])"""),
    ("md", """\
## expected_cost: differentiable in the decisions

Soft decisions (expected channel counts, precision probabilities) give an expected latency whose
gradient tells each decision how much latency it buys: the signal the optimizer trains on."""),
    ("code", """\
from pluto.cost.expected import expected_cost

keep = {o.name: torch.tensor(0.75, requires_grad=True) for o in ops if o.kind in ("conv", "linear")}
channels = {o.name: (torch.tensor(float(o.cin)), keep[o.name] * o.cout) for o in ops if o.name in keep}
latency = expected_cost(table, ops, "latency_ms", channels=channels, default_precision="fp32")
latency.backward()
print(f"expected latency at 75% of the output channels: {latency.item():.4f} ms")
pd.Series({k: v.grad.item() for k, v in keep.items()}, name="d latency / d keep-fraction (ms)")"""),
    ("md", """\
## DependencyGraph + gates + materialize: channel pruning that respects coupled layers

The graph finds which channels must be removed together (a conv's outputs, the next BN, the next
conv's inputs, both sides of a residual add). Gates are learnable keep-probabilities per group;
`materialize` cuts the chosen channels out for real."""),
    ("code", """\
from pluto.decisions.channels import DependencyGraph, attach_gates, width_report
from pluto.materialize.prune import materialize

net = pluto.create_model("resnet18")
graph = DependencyGraph.build(net, torch.randn(shape))
print(graph)
gates = attach_gates(net, graph)
with torch.no_grad():  # pretend a search decided to keep about half of every group
    gates.set_keep(torch.rand(graph.num_channels) < 0.5)
small = materialize(net)
count = lambda m: sum(p.numel() for p in m.parameters())
print(f"params: {count(pluto.create_model('resnet18')):,} -> {count(small):,}")
print("output still works:", tuple(small(torch.randn(2, 1, 28, 28)).shape))"""),
    ("md", """\
## prepare_qat + export: mixed-precision QAT and an int8 ONNX that onnxruntime runs with int8 kernels"""),
    ("code", """\
from pluto.decisions.bits import prepare_qat, harden_bits, bit_probabilities
from pluto.materialize.export import export_onnx, optimized_op_types
import tempfile

qmodel = prepare_qat(pluto.create_model("small_cnn"), bits=(4, 8), example_input=torch.randn(8, 1, 28, 28))
print({k: {b: round(float(p), 2) for b, p in v.items()} for k, v in list(bit_probabilities(qmodel).items())[:2]})
bits = harden_bits(qmodel)  # argmax per layer (after a search these are the learned choices)
print("chosen bits:", bits)
path = export_onnx(qmodel.eval(), torch.randn(shape), Path(tempfile.mkdtemp()) / "small_cnn.int8.onnx")
print("onnxruntime runs:", optimized_op_types(path))"""),
    ("md", """\
## Supernet + derive: NAS over MBConv blocks (kernel 3/5/7 x expansion 3/4/6, or skip)"""),
    ("code", """\
from pluto.decisions.ops import Supernet, derive

supernet = Supernet("mbconv_28")
print(len(supernet.choice_blocks()), "choice blocks;", len(supernet.arch_parameters()), "architecture logits")
child = derive(supernet)  # the argmax op of every block: a plain network
print(child.extra_repr()[:300])
print("child output:", tuple(child(torch.randn(2, 1, 28, 28)).shape))"""),
    ("md", """\
## LagrangianObjective: how a latency budget is enforced

The loss adds `lambda * (cost / target - 1)`; `dual_step` raises `lambda` while the constraint is
violated and lowers it (to 0) once it holds. A toy problem: one "width" parameter whose
task loss prefers it large and whose cost grows with it."""),
    ("code", """\
from pluto.optimizer.constraints import Constraint
from pluto.optimizer.lagrangian import LagrangianConfig, LagrangianObjective

width = torch.tensor(1.0, requires_grad=True)
objective = LagrangianObjective([Constraint("latency", "latency_ms", 0.5)], LagrangianConfig(eta=0.5))
opt = torch.optim.SGD([width], lr=0.05)
history = []
for step in range(200):
    cost = {"latency_ms": 0.8 * width ** 2}  # ms
    task = (width - 2.0) ** 2 * 0.1          # prefers width 2
    loss, logs = objective(task, cost)
    opt.zero_grad(); loss.backward(); opt.step()
    objective.dual_step({k: v.detach() for k, v in cost.items()})
    history.append((step, float(cost["latency_ms"]), objective.lambdas()["latency"]))
frame = pd.DataFrame(history, columns=["step", "latency_ms", "lambda"])
print(frame.iloc[[0, 20, 50, 100, 199]].to_string(index=False))
ax = frame.plot(x="step", y=["latency_ms", "lambda"], secondary_y="lambda", figsize=(5, 3))
ax.axhline(0.5, ls="--", color="gray");"""),
]

SR = [
    ("md", """\
# Super-resolution through the same joint run

pluto's task is a plug-in (`pluto.tasks`): classification is one task, **super-resolution** another
(L1 loss, output distillation from the dense teacher, PSNR in dB as the metric, SSIM beside it).
Everything else (channel pruning with the dependency graph, mixed-precision QAT, the Lagrangian,
ONNX export) is the same run. This notebook compresses an EDSR-style x2 network on Fashion-MNIST
(14 px inputs -> 28 px targets) in about a minute on this CPU."""),
    ("code", SETUP),
    ("md", """\
## 1. Data: (low-resolution input, high-resolution target) pairs

`fashion_mnist_sr` downsamples every 28 px image by 2x2 block means; pixels stay in [0, 1], where
PSNR is measured. Bicubic interpolation is the floor any SR model must beat."""),
    ("code", """\
import pluto
from torch.utils.data import DataLoader
from pluto.data import build_datasets
from pluto.tasks.sr import bicubic_psnr

train, test, spec = build_datasets("fashion_mnist_sr", train_limit=3000, test_limit=1000)
print(spec)
print(f"bicubic x2 PSNR on {len(test)} test images: {bicubic_psnr(DataLoader(test, batch_size=500), 2):.2f} dB")"""),
    ("md", """\
## 2. The model and its channel groups

PixelShuffle folds `r^2 = 4` channels of the upsampler conv into one output channel: the dependency
graph ties those 4 (one gate each), so a pruned upsampler still feeds a valid PixelShuffle. The global
skip ties the head, every block's last conv and the body-end conv into one group; the image-producing
tail is never pruned."""),
    ("code", """\
model = pluto.create_model("edsr", in_channels=1, input_size=14, width=16, blocks=2)
graph = pluto.DependencyGraph.build(model, torch.rand(1, 1, 14, 14))
for g in graph.groups:
    print(f"group {g.id}: {g.size:3d} gates  producers {g.producers}")
print("upsampler.0 output channel -> gate:", graph.layers["upsampler.0"].out_index[:8].tolist(), "...")"""),
    ("md", """\
## 3. Compress: prune + int8/fp32 per layer + KD, PSNR as the objective

`task="sr"` (inferred from image targets anyway). Without a latency table for the SR ops here, the
budget is analytic: 30 % of the dense model's MACs. With the SR table (`configs/space/fmnist_sr.yaml`
profiled on your CPU) pass `table=` and `{"latency_ms": "0.35x"}` instead, as `recipe=fmnist_sr_cpu` does."""),
    ("code", """\
import tempfile
work = Path(tempfile.mkdtemp(prefix="pluto-sr-"))
result = pluto.compress(
    model, None, {"macs": "0.3x"}, data=(train, test), task="sr", teacher="self", precision="int8", bits=[8, 32],
    epochs={"warmup": 2, "search": 1, "finetune": 1}, run_dir=work / "run",
    overrides=["trainer.optimizer=adamw", "trainer.lr=0.005", "trainer.weight_decay=0", "trainer.batch_size=32",
               "trainer.warmup_steps=10", "compress.lagrangian.eta=0.02", "compress.lagrangian.kp=1.0", "logger=none"],
)
m = result.metrics
print(f"PSNR {m['psnr']:.2f} dB (dense {m['dense_psnr']:.2f}), SSIM {m['ssim']:.3f}; "
      f"MACs {m['macs'] / 1e6:.2f} M; int8 ONNX PSNR {m['onnx_int8_psnr']:.2f} dB")
for verdict in result.report["constraints"]:
    print(verdict["constraint"], "->", verdict["holds"])"""),
    ("md", """\
## 4. The deployed files, timed on this CPU

The run wrote `model_int8.onnx` (QDQ) and `model_fp32.onnx` and scored both with onnxruntime (the
`onnx_*` metrics above). `Measurer` times them as the CPU table was measured (onnxruntime, 1 thread,
median of rounds); on a busy shared machine the numbers are noisy."""),
    ("code", """\
import copy
from pluto.cost.measure import Measurer
from pluto.decisions.bits import prepare_qat

measurer = Measurer(pluto.LatencyTable.load("latency_tables/cpu_ort_xeon_amx"), samples=30, rounds=3)
dense_int8 = prepare_qat(copy.deepcopy(model).cpu(), bits=8, calibrate=torch.rand(64, 1, 14, 14))
shape = (1, 1, 14, 14)
before = measurer.measure(dense_int8, shape).latency_ms
after = measurer.measure(onnx=result.run_dir / "model_int8.onnx", input_shape=shape).latency_ms
print(f"int8 latency on this CPU: dense {before:.3f} ms -> compressed {after:.3f} ms")"""),
    ("code", """\
import matplotlib.pyplot as plt
import torch.nn.functional as F
x, y = test[list(range(6))]
with torch.no_grad():
    sr = result.model.cpu().eval()(x).clamp(0, 1)
rows = {"input (14 px)": F.interpolate(x, scale_factor=2, mode="nearest"),
        "bicubic": F.interpolate(x, scale_factor=2, mode="bicubic").clamp(0, 1), "compressed EDSR": sr, "target": y}
fig, axes = plt.subplots(len(rows), 6, figsize=(7, 5))
for r, (name, images) in enumerate(rows.items()):
    for c in range(6):
        axes[r, c].imshow(images[c, 0], cmap="gray", vmin=0, vmax=1)
        axes[r, c].axis("off")
    axes[r, 0].set_title(name, fontsize=8, loc="left")
fig.tight_layout()"""),
]


def use_this_python() -> None:
    """The ``python3`` kernel spec launches ``python`` from PATH: make that this interpreter (the venv's)."""
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def build(name: str, cells: list[tuple[str, str]], timeout: int = 300) -> Path:
    use_this_python()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    path = HERE / name
    nbformat.write(nb, path)
    return path


def main(argv: list[str]) -> int:
    todo = {"quickstart.ipynb": QUICKSTART, "api_tour.ipynb": API_TOUR, "sr.ipynb": SR}
    for name in argv or list(todo):
        print("executed", build(name, todo[name]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
