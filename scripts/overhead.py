"""Training overhead of a joint compression step against a plain step of the same model (issue 7).

A joint search step (``Compression.search_step`` in ``pluto.optimizer.pipeline``, called here) does, on top of a plain step: channel gates on
every prunable group, mixed-precision QAT (a BitWidthChoice per conv/linear, soft mixture),
a teacher forward + KD loss, the differentiable expected latency from the table, the
Lagrangian and a dual step, and an Adam step on the decision logits. This script times each
ingredient added in turn (same model, same batch, same weight optimizer), so the table shows
where the overhead comes from; figures are the median over ``--repeats`` runs of
``--steps`` steps each (after ``--warmup`` steps), in ms per step, and the ratio to plain.

At small batches a GPU step is bound by launches and host waits, so each variant is also run for
``--probe-steps`` steps (none of them a logging step) under :class:`pluto.engine.probe.StepProbe`:
``aten_ops`` and ``kernels`` per step (kernels: aten ops other than views), ``syncs`` per step (host
waits for the device; on a CPU, reads that would wait on a GPU) and ``from_python`` (tensors built
from Python data per step). ``--probe-only`` prints these counts without timing.

    .venv/bin/python scripts/overhead.py --device cpu --threads 2
    python3 scripts/overhead.py --device cuda --table h100_cudagraph      # on the H100

``--compile`` applies to every variant alike; ``step-graph`` replays each whole step (plain and joint) as a CUDA
graph, as ``train_epochs`` does under ``trainer.compile=step-graph`` (:mod:`pluto.engine.graph`).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pluto.cost.table import LatencyTable  # noqa: E402
from pluto.data import DataSpec  # noqa: E402
from pluto.engine.compile import MODES  # noqa: E402
from pluto.engine.graph import step_graphs  # noqa: E402
from pluto.engine.loop import train_step  # noqa: E402
from pluto.engine.optim import OptimizerGroup, build_optimizer  # noqa: E402
from pluto.engine.probe import StepProbe  # noqa: E402
from pluto.engine.run import RunContext  # noqa: E402
from pluto.models import create_model  # noqa: E402
from pluto.optimizer.pipeline import Compression  # noqa: E402
from pluto.train import compose  # noqa: E402

VARIANTS = (
    ("plain", dict(prune=False, quantize=False, kd=False, cost=False)),
    ("+ gates", dict(prune=True, quantize=False, kd=False, cost=False)),
    ("+ gates + QAT", dict(prune=True, quantize=True, kd=False, cost=False)),
    ("+ gates + QAT + KD", dict(prune=True, quantize=True, kd=True, cost=False)),
    ("joint (+ cost + Lagrangian)", dict(prune=True, quantize=True, kd=True, cost=True)),
)


def build_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, table: str | None, bits: tuple[int, ...],
               device: torch.device, workdir: Path, prune: bool, quantize: bool, kd: bool, cost: bool,
               compile_mode: str = "none", extra: tuple[str, ...] = ()):
    """One training step of the given variant: the pipeline's own ``Compression.search_step`` (plain: its
    ``warmup_step``; as ``Compression.planned_step`` gives them to the loop), with the weight and decision
    optimizers the pipeline's search phase builds."""
    metric = "latency_ms" if table else "macs"
    overrides = ["data=synthetic", f"data.in_channels={x.shape[1]}", f"data.input_size={x.shape[-1]}", "logger=none",
                 f"hw.table={table or 'null'}", "hw.measure=off", f"compress.prune={prune}",
                 f"compress.quantize={quantize}", f"compress.distill={kd}", f"compress.bits=[{','.join(map(str, bits))}]",
                 "constraints=none", f"trainer.compile={compile_mode}", *extra]
    if table and 8 not in bits:  # a table without int8 (the H100's fp16/fp32): deploy at fp32 by default
        overrides.append("hw.precision=fp32")
    cfg = compose(overrides)
    spec = DataSpec(num_classes=10, in_channels=x.shape[1], input_size=x.shape[-1])
    data = torch.utils.data.TensorDataset(x.cpu(), y.cpu())
    ctx = RunContext(workdir, cfg, tensorboard=False)
    comp = Compression(copy.deepcopy(model), data, None, spec, cfg, ctx, device)
    comp.prepare()
    if cost:  # half the uncompressed cost: a binding constraint, priced by the table (or MACs) every step
        from pluto.optimizer.constraints import Constraint

        comp.constraints = [Constraint(metric, metric, 0.5 * float(comp.cost_model.expected(metric).detach()))]
    if kd:
        comp.teacher.spec = "self"
        comp.teacher.build(comp.model)
    if not (prune or quantize or cost):
        net, phase, params, dparams, dopt = comp.model, "warmup", list(comp.model.parameters()), [], None
    else:
        d = comp.attach_decisions()
        net, phase, params, dparams = d.model, "search", d.weight_parameters(), d.parameters()
        dopt = comp.decision_optimizer(d)
    net.to(device).train()
    # the optimizers of the pipeline's phases (trainer.optimizer on the weights, Adam on the decision logits)
    weights = build_optimizer(params, cfg.trainer, lr=0.01, capturable=comp.capturable)
    optimizer = OptimizerGroup(weights, dopt)
    return Step(comp.state, comp.planned_step(phase), optimizer, params + dparams, int(cfg.trainer.log_every),
                (x, y), step_graphs(compile_mode, optimizer, params + dparams))


class Step:
    """One training step exactly as ``pluto.engine.loop.train_epochs`` runs it (``train_step``: the step function,
    zero_grad, backward, gradient clipping, both optimizers), whose named regions ``--profile`` reads; under
    ``--compile step-graph`` replayed as the loop replays it (``StepGraphs``: its replays have no named regions)."""

    def __init__(self, state, step_fn, optimizer: OptimizerGroup, params: list, log_every: int, batch, graphs=None):
        self.state, self.step_fn, self.optimizer, self.params = state, step_fn, optimizer, params
        self.log_every, self.batch, self.graphs = log_every, batch, graphs

    def __call__(self) -> None:
        if self.graphs is not None:  # trainer.compile=step-graph: as train_epochs runs it
            self.graphs.step(self.step_fn, *self.batch)
        else:
            train_step(self.step_fn, *self.batch, self.optimizer, self.params)
        self.state.global_step += 1


def profile_steps(step: Step, n: int, device: torch.device, detail: int = 0) -> dict[str, float]:
    """Per step over ``n`` steps under ``torch.profiler``: host (CPU) ms of each named region (the step's parts
    and, in a joint step, ``search/forward`` and ``search/lagrangian``) and, on a GPU, the device's kernel ms and
    kernel launches; ``detail``: also print the ``detail`` kernels that take the most device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    out = {f"{e.key.split('/', 1)[1]}_ms": e.cpu_time_total / 1e3 / n for e in events
           if e.key.startswith(("step/", "search/")) and e.device_type == cpu}
    if device.type == "cuda":
        # device-side spans of annotations (ours, torch's "Optimizer.step#SGD.step") are not kernels
        annotations = {e.key for e in events if e.device_type == cpu and e.cpu_time_total > 0
                       and (e.key.startswith(("step/", "search/")) or "#" in e.key)}
        kernels = [e for e in events if e.device_type == cuda and e.key not in annotations
                   and e.self_device_time_total > 0]
        out["kernels_ms"] = sum(e.self_device_time_total for e in kernels) / 1e3 / n
        out["kernel_launches"] = sum(e.count for e in kernels) / n
        if detail:
            top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:detail]
            print(f"--- top {detail} kernels per step ({n} steps): us, launches, name")
            for e in top:
                print(f"  {e.self_device_time_total / n:8.1f} {e.count / n:6.1f}  {e.key[:110]}")
    return out


def probe_steps(step, n: int):
    """Aten ops, kernels, syncs and tensors from Python data per step over ``n`` steps, skipping the steps
    that log (the loop logs every ``trainer.log_every`` steps, and logging reads values on the host)."""
    probe = StepProbe()
    while probe.report.calls < n:
        if (step.state.global_step + 1) % step.log_every == 0:
            step()
            continue
        probe.call(step)
    return probe.report


def time_steps(step, steps: int, device: torch.device) -> float:
    """Mean ms per step over ``steps`` steps (device synchronized at both ends)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default="small_cnn", help="registry name (small_cnn, resnet18, mobilenet_v2, ...)")
    p.add_argument("--table", default="auto", help="table folder under --table-root (auto: cpu_ort_xeon_amx on cpu, "
                                                   "h100_cudagraph on cuda); 'none' prices MACs analytically")
    p.add_argument("--table-root", default=str(ROOT / "latency_tables"))
    p.add_argument("--bits", default="auto", help="candidate bits, e.g. 4,8 (auto: 4,8 with an int8 table, else 16,32)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--input-size", type=int, default=28)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (set explicitly for stable timings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-steps", type=int, default=3, help="steps counted by the op/sync probe (0: no probe)")
    p.add_argument("--probe-only", action="store_true", help="print the probe's counts, time nothing")
    p.add_argument("--probe-detail", type=int, default=0, help="also print each variant's N most frequent ops "
                                                                "and every sync with the line that caused it")
    p.add_argument("--compile", default="none", choices=MODES,
                   help="trainer.compile for every variant (the pipeline's torch.compile of the step's model)")
    p.add_argument("--variants", default="all", help="comma-separated subset of plain,gates,qat,kd,joint (plain "
                                                      "always runs: the ratios are to it); all: every variant")
    p.add_argument("--profile", type=int, default=0, help="also run N steps of each variant under torch.profiler "
                   "and add the host ms of the step's parts (and the GPU's kernel ms) per step to the table")
    p.add_argument("--override", action="append", default=[], help="extra config override for every variant, "
                   "e.g. compress.kd.teacher_precision=fp32 (repeatable)")
    p.add_argument("--csv", default=None, help="also write the table here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA GPU is visible; use --device cpu")
    table_name = args.table if args.table != "auto" else ("h100_cudagraph" if device.type == "cuda" else "cpu_ort_xeon_amx")
    table_path = None if table_name == "none" else str(Path(args.table_root) / table_name)
    table = None if table_path is None else LatencyTable.load(table_path)
    if args.bits == "auto":
        bits = (4, 8) if table is None or "int8" in table.precisions else (16, 32)
    else:
        bits = tuple(int(b) for b in args.bits.split(","))
    model = create_model(args.model, 10, args.in_channels, args.input_size)
    x = torch.randn(args.batch_size, args.in_channels, args.input_size, args.input_size)
    y = torch.randint(0, 10, (args.batch_size,))
    import tempfile

    tmp = tempfile.TemporaryDirectory()
    keys = ("plain", "gates", "qat", "kd", "joint")
    wanted = set(keys) if args.variants == "all" else {"plain", *args.variants.split(",")}
    if wanted - set(keys):
        raise SystemExit(f"--variants: unknown {', '.join(sorted(wanted - set(keys)))}; choose from {', '.join(keys)}")
    steps = {name: build_step(model, x.to(device), y.to(device), table_path, bits, device,
                              Path(tmp.name) / str(i), compile_mode=args.compile,
                              extra=tuple(args.override), **flags)
             for i, (key, (name, flags)) in enumerate(zip(keys, VARIANTS)) if key in wanted}
    for step in steps.values():  # warm every variant before timing any (caches, allocator, cuDNN autotune)
        for _ in range(args.warmup):
            step()
    reports = {name: probe_steps(step, args.probe_steps) for name, step in steps.items()} if args.probe_steps > 0 \
        else {}
    counts = {name: reports[name].per_call() if reports else {} for name in steps}
    if args.probe_detail:
        for name, report in reports.items():
            print(f"--- {name}\n{report.summary(args.probe_detail)}")
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(0 if args.probe_only else args.repeats):  # interleave the variants so load drifts hit them alike
        for name, step in steps.items():
            samples[name].append(time_steps(step, args.steps, device))
    profiles = {name: profile_steps(step, args.profile, device, args.probe_detail) for name, step in steps.items()} if args.profile else {}
    rows = []
    for name in steps:
        row: dict = {"variant": name}
        if samples[name]:
            v, plain = samples[name], statistics.median(samples["plain"])
            row.update(ms_per_step=statistics.median(v), min_ms=min(v), max_ms=max(v),
                       ratio_to_plain=statistics.median(v) / plain)
        row.update(profiles.get(name, {}))
        row.update(counts[name])
        if counts[name]:
            row["kernels_to_plain"] = counts[name]["kernels"] / max(1.0, counts["plain"]["kernels"])
        rows.append(row)
    frame = pd.DataFrame(rows)
    dev_name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({args.threads} threads)"
    print(f"model {args.model}, batch {args.batch_size}x{args.in_channels}x{args.input_size}x{args.input_size}, "
          f"bits {bits}, table {table_name}, device {dev_name}, compile {args.compile}; median of {args.repeats} x {args.steps} steps; "
          f"counts per step over {args.probe_steps} probed steps")
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(frame.to_string(index=False))
    if args.csv:
        frame.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
