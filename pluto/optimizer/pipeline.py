"""One compression run as explicit stages of one object: the chip in the loop from start to verdict.

``Compression(...).run()`` runs, in order (each training stage resumable to the batch;
``state.phases_done`` records the finished ones, so a resumed run skips them):

1. ``prepare``  - load the table, the measurer (is the table's chip reachable?), the constraints
                  (relative targets such as ``0.6x`` resolved against the *measured* uncompressed
                  model; for a supernet its biggest child), the cost model; reject infeasible
                  targets before any training.
2. ``warmup``   - train the weights alone (a supernet samples one candidate per block); start from
                  ``compress.init_from`` when given. Its accuracy is the dense reference.
3. ``search``   - attach the decisions (op choice, channel gates, bit-widths) and minimize
                  task(+KD) loss + sum_i lambda_i * (c_i * E[cost_i] / target_i - 1), where
                  ``c_i`` is the smoothed measured/predicted ratio of candidates hardened and
                  measured every ``compress.measure_every`` steps (1 without a reachable chip).
4. ``harden``   - fix every decision, project it onto the corrected budget, then *land*: grow or
                  shrink the widths until the measured cost is within ``compress.land_band`` x
                  target; build the concrete model (derived ops, pruned channels, fixed bits).
5. ``finetune`` - train the concrete model with KD (QAT at its chosen bits).
6. ``deploy``   - export ONNX (int8 QDQ when quantized) and measure it on the chip.
7. ``report``   - a verdict per constraint *as measured* (never "holds" unmeasured), accuracy,
                  params/MACs, per-layer widths/bits; ``report.json``, ``layers.csv``/``.png``.

Benchmarks call the stages (``prepare()``, ``warmup()``, ``search_step`` ...) instead of copying them.

Data-parallel under ``torchrun`` (:mod:`pluto.engine.distributed`): every rank trains (the loop
averages the gradients of weights and decision logits, so decisions, costs and multipliers stay
bit-identical, checked after every epoch); measurement, landing, export and the report run once,
on rank 0, and what they decide (measured costs, the correction, the landed decisions, the
hardened model) is broadcast to the other ranks.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.profiler import record_function
from torch.utils.data import DataLoader, Dataset

from pluto.cost.expected import precision_key
from pluto.cost.measure import Measurer, MeasurementError
from pluto.cost.metrics import needs_table
from pluto.cost.model import CostModel
from pluto.cost.table import LatencyTable
from pluto.data import DataSpec
from pluto.decisions.bits.folding import fold_bn
from pluto.decisions.ops.choice import TemperatureSchedule
from pluto.decisions.ops.supernet import Supernet
from pluto.engine import distributed
from pluto.engine.compile import compile_fn
from pluto.engine.graph import PlannedStep, constant_plan
from pluto.engine.checkpoint import load_checkpoint, rng_state, set_rng_state
from pluto.engine.loop import TrainState, batches_per_epoch, train_epochs
from pluto.engine.optim import OptimizerGroup, build_optimizer, build_scheduler, fusable
from pluto.engine.run import RunContext
from pluto.errors import ConfigError, PlutoError
from pluto.optimizer.constraints import Constraint, check_feasible, constraints_from_config, relative_targets
from pluto.optimizer.decisions import Decisions, attach, build_concrete, fix_decisions, land_on_target, \
    polish_precision
from pluto.optimizer.lagrangian import LagrangianConfig, LagrangianObjective
from pluto.tasks import Classification, Task

STAGES = ("prepare", "warmup", "search", "harden", "finetune", "deploy", "report")


def load_table(cfg: DictConfig) -> LatencyTable | None:
    path = cfg.hw.table
    return LatencyTable.load(path) if path else None


def _prices_as_well(table: LatencyTable, model: nn.Module, input_shape, candidate: LatencyTable) -> bool:
    """Whether ``candidate`` prices ``model`` at every precision ``table`` prices it at (a table made on this machine
    kind replaces the configured one only then); a model whose ops cannot be listed keeps the configured table."""
    from pluto.cost.profiler import priceable

    try:
        return all(priceable(candidate, model, input_shape, p) for p in table.precisions
                   if priceable(table, model, input_shape, p))
    except Exception:  # noqa: BLE001 - e.g. a supernet's mixtures: no silent switch, the configured table is adapted
        return False


def _calibration_batch(train_set: Dataset, n: int = 256) -> Tensor:
    return next(iter(DataLoader(train_set, batch_size=n, shuffle=False)))[0]


class Teacher:
    """The KD teacher: the warmed-up model itself (``self``; for a supernet its biggest child, the sandwich
    rule's teacher, since its mixtures and sampled paths are no fixed network), a registry name, or a
    checkpoint path.

    Its forward runs without autograd, with every conv->BatchNorm pair folded into the conv (exact in eval mode;
    the module names stay, folded BNs become ``nn.Identity``, so hint taps still find their layers), at
    ``precision`` (``compress.kd.teacher_precision``, see
    :func:`pluto.optimizer.distillation.teacher_dtype`) and, on a CPU, in channels-last layout
    (oneDNN's native one); the logits come back in fp32."""

    def __init__(self, spec: str | None, data: DataSpec, device: torch.device, precision: str = "fp32"):
        from pluto.optimizer.distillation import teacher_dtype

        self.spec, self.data, self.device = spec, data, device
        self.dtype = teacher_dtype(precision, device)
        # oneDNN's native layout on a CPU; on a GPU, cuDNN's tensor-core kernels of a reduced-precision teacher
        self.channels_last = device.type == "cpu" or self.dtype is not None
        self.model: nn.Module | None = None

    def build(self, warm_model: nn.Module | None = None, images: Tensor | None = None) -> None:
        if not self.spec or self.spec == "none":
            return
        if self.spec == "self":
            self.model = _uncompressed(warm_model, images)
        else:
            from pluto.optimizer.distillation import load_teacher

            self.model = load_teacher(self.spec, self.data.num_classes, self.data.in_channels, self.data.input_size)
        self.model.to(self.device).eval()
        fold_bn(self.model, inplace=True)  # one pass fewer per conv: -7 % (ResNet-18) to -13 % of the CPU teacher
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()  # not inference_mode: hint taps keep teacher features that the loss saves for backward
    def __call__(self, x: Tensor) -> Tensor | None:
        if self.model is None:
            return None
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.model(x)
        with torch.autocast(self.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float() if torch.is_tensor(out) else out


class MeasuredCorrection:
    """What this chip charges against what the table predicts, per table metric, applied to the cost model as
    ``measured ~ offset + scale * predicted``.

    With one measurement (or measurements whose predictions lie close together) it is a ratio (``offset`` 0,
    ``scale`` a geometric EMA of measured/predicted). Once the measured candidates span predictions at least
    ``spread`` apart (the search moves from the dense model towards the target, so they do), it is a line fitted by
    least squares to the last ``window`` measurements: a chip whose per-call overhead the table misses measures
    nearly flat while the prediction falls, and a ratio would then grow without bound and price pruning that buys
    nothing. The slope stays within [1/4, 4] x the mean ratio (a noisy fit does not flip the gradient)."""

    def __init__(self, cost_model: CostModel, smoothing: float = 0.5, window: int = 6, spread: float = 1.25):
        self.cost_model, self.smoothing, self.window, self.spread = cost_model, smoothing, window, spread
        self.history: list[dict[str, float]] = []

    def update(self, measured: dict[str, float], predicted: dict[str, float], step: int) -> dict[str, float]:
        cm = self.cost_model
        for metric, value in measured.items():
            pred = predicted.get(metric)
            if pred is None or not pred > 0 or not value > 0:
                continue
            ratio = value / pred
            old = cm.correction.get(metric)
            new = ratio if old is None or cm.offset.get(metric) else math.exp(
                (1 - self.smoothing) * math.log(old) + self.smoothing * math.log(ratio))
            cm.correction[metric], cm.offset[metric] = new, 0.0
            points = [(h["predicted"], h["measured"]) for h in self.history if h["metric"] == metric]
            points = [*points, (pred, value)][-self.window:]
            xs = [x for x, _ in points]
            if len(points) >= 2 and max(xs) >= self.spread * min(xs):
                mean_ratio = math.exp(sum(math.log(y / x) for x, y in points) / len(points))
                mx, my = sum(xs) / len(xs), sum(y for _, y in points) / len(points)
                slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
                slope = min(4 * mean_ratio, max(mean_ratio / 4, slope))
                cm.correction[metric], cm.offset[metric] = slope, my - slope * mx
            self.history.append({"step": step, "metric": metric, "measured": value, "predicted": pred,
                                 "ratio": ratio, "correction": cm.correction[metric], "offset": cm.offset[metric]})
        return self.effective()

    def effective(self) -> dict[str, float]:
        """Metric -> corrected/predicted at the last measured candidate (what TensorBoard's correction/* shows)."""
        out = {}
        for metric, scale in self.cost_model.correction.items():
            last = [h["predicted"] for h in self.history if h["metric"] == metric]
            x = last[-1] if last else 1.0
            out[metric] = (self.cost_model.offset.get(metric, 0.0) + scale * x) / x
        return out

    def state_dict(self) -> dict:
        return {"correction": dict(self.cost_model.correction), "offset": dict(self.cost_model.offset),
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.cost_model.correction.update(state.get("correction", {}))
        self.cost_model.offset.update(state.get("offset", {}))
        self.history = list(state.get("history", []))


class Compression:
    """The joint compression run; see the module docstring for its stages."""

    def __init__(self, model: nn.Module, train_set: Dataset, test_loader: DataLoader, spec: DataSpec,
                 cfg: DictConfig, ctx: RunContext, device: torch.device, task: Task | None = None):
        self.model, self.train_set, self.test_loader, self.spec = model, train_set, test_loader, spec
        self.cfg, self.ctx, self.device = cfg, ctx, device
        self.c, self.t = cfg.compress, cfg.trainer
        if self.t.compile == "step-graph" and torch.device(device).type != "cuda":
            raise ConfigError(f"trainer.compile=step-graph captures each training step as a CUDA graph; the run's "
                              f"device is {device}: use trainer.compile=default (or none) there")
        self._compiled: dict[str, Any] = {}  # torch.compile-d step forwards per phase (trainer.compile)
        self.task = task or Classification(label_smoothing=self.t.label_smoothing, kd_temperature=self.c.kd.temperature,
                                           kd_alpha=self.c.kd.alpha)
        self.input_shape = spec.input_shape
        self.example = torch.zeros(self.input_shape)
        self.bits = tuple(int(b) for b in self.c.bits)
        self.calibration = _calibration_batch(train_set)
        self.state = TrainState(phase="warmup")
        self.ckpt = ctx.load()
        if self.ckpt:
            self.state = TrainState.from_dict(self.ckpt["state"])
            print(f"resuming {ctx.dir}: phase {self.state.phase}, epoch {self.state.epoch}, batch {self.state.batch}")
        self.teacher = Teacher(self.c.teacher if self.c.distill else None, spec, device,
                               self.c.kd.teacher_precision)
        self.decisions: Decisions | None = None
        self._plan: tuple | None = None  # the search step planned by search_plan, for search_run
        self.final: nn.Module | None = None
        self.trail: dict[str, Any] = {}
        self.info: dict[str, Any] = {"timing_s": {}}
        self.measured: dict[str, float] = {}

    # ---- running -------------------------------------------------------------------------
    def run(self) -> tuple[dict[str, Any], nn.Module]:
        for stage in STAGES:
            start = time.perf_counter()
            getattr(self, stage)()
            self.info["timing_s"][stage] = round(time.perf_counter() - start, 2)
        return self.result, self.final

    def _measure_every(self) -> int:
        every = self.c.measure_every
        if every == "auto":
            steps = self.c.epochs.search * batches_per_epoch(self.train_set, self.t.batch_size)
            return max(1, steps // 10)
        return int(every)

    # ---- 1. prepare ------------------------------------------------------------------------
    def prepare(self) -> None:
        c, cfg = self.c, self.cfg
        self.table = load_table(cfg)
        self.info["table"] = {"status": "none"} if self.table is None else {"status": "as shipped"}
        if self.table is not None and cfg.hw.measure != "off" and not cfg.hw.runner:
            from pluto.cost.adapt import for_this_machine

            # a CPU table made on another machine is a prior here: use a table beside it that was profiled on this
            # machine kind and prices the model, else adapt it (cached per machine) before the search; rank 0 adapts
            # and caches, the other ranks then read the cache
            covers = functools.partial(_prices_as_well, self.table, self.model, self.input_shape)
            if distributed.is_main():
                self.table, self.info["table"] = for_this_machine(self.table, auto=cfg.hw.adapt != "off",
                                                                  covers=covers, siblings=cfg.hw.adapt == "auto")
            distributed.barrier()
            if not distributed.is_main():
                self.table, self.info["table"] = for_this_machine(self.table, auto=cfg.hw.adapt != "off",
                                                                  covers=covers, siblings=cfg.hw.adapt == "auto")
        # widths snap to the channel multiple the chip's fast kernels need (the table's `align`)
        self.align = self.table.align if self.table is not None else None
        quantize_default = cfg.hw.precision if c.quantize else "fp32"
        self.cost_model = CostModel(self.model, self.input_shape, self.table, quantize_default,
                                    op_temperature=c.temperature.final)
        self.correction = MeasuredCorrection(self.cost_model, float(c.correction_smoothing))
        self.measurer: Measurer | None = None
        mode = cfg.hw.measure
        if self.table is not None and mode != "off":
            measurer = Measurer(self.table, cfg.hw.runner, samples=cfg.hw.measure_samples, rounds=cfg.hw.measure_rounds,
                                level=bool(cfg.hw.get("measure_level", False)))
            ok, why = distributed.broadcast_object(measurer.reachable() if distributed.is_main() else None)
            if ok:
                self.measurer = measurer
                print(f"measuring on {why}")
            else:
                print(f"NOT MEASURED: {why}; the run keeps the table's prediction and its verdicts say 'not measured'")
        self.info["measured_on"] = self.measurer.where() if self.measurer else None
        self.info["table"]["name"] = self.table.metadata.get("name") if self.table is not None else None
        raw_constraints = OmegaConf.to_container(cfg.constraints)
        metrics = {m for m in (raw_constraints or {}) if (raw_constraints or {}).get(m) is not None}
        if isinstance(self.model, Supernet):  # its uncompressed deployment: the biggest child (see _uncompressed)
            reference_model = _uncompressed(self.model)
            self.uncompressed = {"predicted": {m: self.cost_model.of_model(reference_model, m) for m in metrics}}
        else:
            self.uncompressed = {"predicted": {m: float(self.cost_model.expected(m).detach()) for m in metrics}}
        earlier = self._earlier_measurement()
        if earlier:  # a resumed run keeps the targets it trained for (no re-measurement that would move them)
            self.uncompressed["measured"] = earlier
            print("uncompressed model measured earlier in this run: "
                  + ", ".join(f"{k} {v:.4g}" for k, v in earlier.items() if "iqr" not in k))
        elif self.measurer is not None:
            self.uncompressed["measured"] = distributed.broadcast_object(
                self._measure_dense() if distributed.is_main() else None)
        self._seed_correction(metrics)
        relative = self.relative = relative_targets(raw_constraints)
        reference = {m: self.uncompressed.get("measured", {}).get(m, self.uncompressed["predicted"].get(m))
                     for m in metrics}
        self.constraints: list[Constraint] = constraints_from_config(raw_constraints, reference)
        if relative:
            print("relative targets: " + ", ".join(f"{m} = {f:g} x {reference[m]:.4g} = {f * reference[m]:.4g}"
                                                    for m, f in relative.items()))
        # A target below the cheapest reachable model is rejected before any training.
        probe = attach(copy.deepcopy(self.model), self.example, c.prune, False, self.bits, c.gate_init_keep)
        floor = float(self.align or 1)  # snapped widths never go below the fast multiple (or the group's size)

        def fewest(x: Tensor, gated: bool) -> float:
            # a count without a prunable channel (a classifier's outputs) is a constant, never rounded up
            return min(floor, round(float(x.detach()) / c.gate_init_keep)) if gated else float(x.detach())

        min_channels = {}
        if probe.gates is not None:
            names, cin, cout = probe.gates.channel_counts()
            gated_in, gated_out = probe.gates.gated_counts()
            min_channels = {k: (fewest(cin[i], bool(gated_in[i])), fewest(cout[i], bool(gated_out[i])))
                            for i, k in enumerate(names)}
        del probe
        allowed = None
        if c.quantize:
            allowed = {"*": list(self.bits)} if isinstance(self.model, Supernet) else \
                {op.name: list(self.bits) for op in self.cost_model.ops if op.kind in ("conv", "dwconv", "linear")}
        # the correction is one ratio measured at the uncompressed model; the cheapest model may scale otherwise
        # (per-call overheads, another precision), so only a target that both the table and the corrected table
        # call unreachable is rejected before training
        absent = None
        if c.depth:  # the cheapest model skips every skippable block
            from pluto.decisions.depth import skippable_blocks

            if isinstance(self.model, Supernet):
                raise ConfigError("compress.depth applies to plain residual models; a supernet chooses depth through "
                                  "its 'skip' candidates (set compress.depth=false)")
            absent = {name for site in skippable_blocks(self.model) for name in site.ops}
        self.minimum = {}
        for con in self.constraints:
            value = self.cost_model.minimum(con.metric, min_channels, allowed, absent)
            self.minimum[con.metric] = min(value, self.cost_model.uncorrect(con.metric, value))
        check_feasible(self.constraints, self.minimum)
        self.ctx.write_json("feasibility.json", {"minimum": self.minimum, "uncompressed": self.uncompressed,
                                                 "targets": {con.metric: con.target for con in self.constraints},
                                                 "relative": relative, "measured_on": self.info["measured_on"]})
        self._init_weights(c.init_from)
        if isinstance(self.model, Supernet):
            # sandwich: paths run through Supernet.on_path; any other forward samples one path (SPOS)
            self.model.set_mode("soft" if c.supernet_warmup_mode == "soft" else "sample")
        self.model.to(self.device)
        if c.distill and c.teacher not in ("self", None, "none"):
            self.teacher.build()
        self.task.watch(self.model, None)  # checks the task's hint layers exist before any training

    def _dense_predictions(self, metric: str) -> dict[int, float]:
        """The table's prediction of the uncompressed model deployed at each candidate bit-width it prices."""
        if self.table is None or not needs_table(metric):
            return {}
        reference = _uncompressed(self.model) if isinstance(self.model, Supernet) else self.model
        out = {}
        for b in sorted(set(self.bits) | {32}) if self.c.quantize else (32,):
            try:
                out[b] = self.cost_model.of_model(reference, metric, precision=precision_key(b))
            except (KeyError, ValueError, PlutoError):  # a precision the table has no entries for
                continue
        return out

    def _seed_correction(self, metrics: set[str]) -> None:
        """Start the measured correction from the uncompressed model's measurement (measured/predicted at the same
        precision), so the first search steps price what this chip charges instead of waiting for the first
        in-loop measurement; and note the precision of the cheapest uncompressed deployment, where the bit
        decisions start (``compress.bits_init: reference``)."""
        measured = self.uncompressed.get("measured", {})
        self.reference_bits: int | None = None
        predictions = {m: self._dense_predictions(m) for m in sorted(metrics)}
        for m, predicted in predictions.items():  # the first priced metric decides where bits start
            costs = {b: measured.get(f"{precision_key(b)}_{m}", v if not measured else math.inf)
                     for b, v in predicted.items() if b in self.bits}
            if costs and min(costs.values()) < math.inf:
                self.reference_bits = min(costs, key=costs.get)
                break
        for m, predicted in predictions.items():
            # the ratio at the deployment the search starts from (where it is measured), else over all measured
            pairs = {b: (measured[f"{precision_key(b)}_{m}"], v) for b, v in predicted.items()
                     if v > 0 and measured.get(f"{precision_key(b)}_{m}", 0) > 0}
            if self.reference_bits in pairs:
                pairs = {self.reference_bits: pairs[self.reference_bits]}
            if pairs and m not in self.cost_model.correction:  # geometric means: their ratio is the mean ratio
                mean = [math.exp(sum(math.log(p[i]) for p in pairs.values()) / len(pairs)) for i in (0, 1)]
                self.correction.update({m: mean[0]}, {m: mean[1]}, step=0)
        if self.cost_model.correction:
            print("correction from the uncompressed model's measurement: "
                  + ", ".join(f"{m} x{v:.3g}" for m, v in self.cost_model.correction.items()))

    def _earlier_measurement(self) -> dict[str, float] | None:
        """The uncompressed model's measurement of this run before it was interrupted (resume only)."""
        path = self.ctx.dir / "feasibility.json"
        if self.ckpt is None or self.measurer is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text()).get("uncompressed", {}).get("measured") or None
        except (OSError, json.JSONDecodeError):
            return None

    def _measure_dense(self) -> dict[str, float]:
        """Measured cost of the uncompressed model as deployed at the run's default precision (and fp32)."""
        out: dict[str, float] = {}
        dense = _uncompressed(self.model).cpu().eval()
        # the uncompressed deployments, kept: re-measured beside the result for relative targets (_measure_final)
        self.dense_deployed = {"fp32": dense}
        if self.c.quantize and 8 in self.bits:
            from pluto.decisions.bits import prepare_qat

            self.dense_deployed["int8"] = prepare_qat(copy.deepcopy(dense), bits=8, example_input=self.example,
                                                      calibrate=self.calibration)
        try:
            for precision, deployed in self.dense_deployed.items():
                out.update({f"{precision}_{k}": v
                            for k, v in self.measurer.measure(deployed, self.input_shape).as_metrics().items()})
        except MeasurementError as exc:
            print(f"NOT MEASURED: the uncompressed model ({exc})")
            return {}
        for metric in ("latency_ms", "energy_mj"):
            values = [out[k] for k in (f"fp32_{metric}", f"int8_{metric}") if k in out]
            if values:
                out[metric] = min(values)  # the cheapest uncompressed deployment: the target must beat it
        print("uncompressed model measured: " + ", ".join(f"{k} {v:.4g}" for k, v in out.items() if "iqr" not in k))
        return out

    def _init_weights(self, path: str | None) -> None:
        """Start from trained weights (``compress.init_from``): a state dict or a run checkpoint (``{"model": ...}``).

        Loaded on every start, resumed or not, so a resumed run rebuilds the same teacher and gate ranking."""
        if not path:
            return
        state = load_checkpoint(path)
        state = state.get("model", state) if isinstance(state, dict) else state
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1:2] or [str(exc)]
            raise ConfigError(f"compress.init_from={path} does not fit model {type(self.model).__name__} "
                              f"({first[0].strip()}); pass weights saved from the same model and data shape.") from exc

    # ---- shared training machinery ---------------------------------------------------------
    def task_loss(self, output: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        t_out = self.teacher(x)
        if t_out is not None:
            loss = self.task.distill_loss(output, t_out, y)
            return loss, {"loss/kd_total": loss.detach()}
        loss = self.task.loss(output, y)
        return loss, {"loss/task": loss.detach()}

    def _phase(self, phase: str, net: nn.Module, epochs: int, lr: float, step_fn, extra_opt=None, extra_state=None,
               weight_params=None, replicated=None, scored=None) -> None:
        """Train ``net`` for one phase, resuming inside it if the checkpoint says so.

        ``scored``: the network each epoch's test metric is of, when it is not ``net`` itself (a function
        returning it, e.g. a supernet's biggest child with its own BatchNorm statistics)."""
        state, ctx, t = self.state, self.ctx, self.t
        if phase in state.phases_done or epochs <= 0:
            if phase not in state.phases_done:
                state.phases_done = (*state.phases_done, phase)
            return
        weights = build_optimizer(weight_params if weight_params is not None else net.parameters(), t, lr=lr,
                                  capturable=self.capturable)
        optimizer = OptimizerGroup(weights, extra_opt)
        scheduler = build_scheduler(weights, t, epochs * batches_per_epoch(self.train_set, t.batch_size))
        if state.phase != phase:
            state.phase, state.epoch, state.batch = phase, 0, 0
        elif self.ckpt is not None and self.ckpt["state"]["phase"] == phase:
            net.load_state_dict(self.ckpt["model"])
            optimizer.load_state_dict(self.ckpt["optimizer"])
            scheduler.load_state_dict(self.ckpt["scheduler"])
            if extra_state is not None and "extra" in self.ckpt:
                extra_state.load_state_dict(self.ckpt["extra"])
            set_rng_state(self.ckpt["rng"])
        self.ckpt = None

        def save() -> None:
            ctx.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "state": state.to_dict(), "rng": rng_state(),
                      **({"extra": extra_state.state_dict()} if extra_state is not None else {})})

        def end_of_epoch(epoch: int) -> None:
            metrics = self.task.evaluate(scored() if scored is not None else net, self.test_loader, self.device)
            value = metrics[self.task.metric]
            ctx.logger.scalars({f"{phase}/test_{self.task.metric}": value}, state.global_step)
            print(f"{phase} epoch {epoch}/{epochs}: test {self.task.metric} {value:.2f}")

        self.task.watch(net, self.teacher.model)  # feature distillation (SR hints) hooks this phase's student
        try:
            train_epochs(net, self.train_set, step_fn, optimizer, scheduler, state, epochs, t.batch_size,
                         seed=self.cfg.seed, device=self.device, save=save, checkpoint_every=t.checkpoint_every,
                         log=ctx.logger.scalars, log_every=t.log_every, end_of_epoch=end_of_epoch,
                         sync_bn=t.sync_bn, replicated=replicated, step_graph=self.capturable)
        finally:
            self.task.watch(None, None)  # no hooks on a model that is next copied, exported or saved
        state.phases_done = (*state.phases_done, phase)
        ctx.save({"model": net.state_dict(), "state": state.to_dict(),
                  **({"extra": extra_state.state_dict()} if extra_state is not None else {})}, f"{phase}.pt")
        save()

    def _load_phase(self, net: nn.Module, name: str, extra_state=None) -> None:
        """Load a finished phase's weights (identical to the in-memory ones unless this run was resumed past it)."""
        path = self.ctx.dir / name
        if path.exists():
            ckpt = load_checkpoint(path)
            net.load_state_dict(ckpt["model"])
            if extra_state is not None and "extra" in ckpt:
                extra_state.load_state_dict(ckpt["extra"])

    # ---- 2. warmup -------------------------------------------------------------------------
    def warmup_step(self, x: Tensor, y: Tensor):
        model = self.model
        if isinstance(model, Supernet) and self.c.supernet_warmup_mode == "sandwich":
            return self.sandwich_loss(model, x, y)
        return self.compiled("warmup", model, lambda x, y: self.task_loss(model(x), x, y))(x, y)

    def compiled(self, key: str, model: nn.Module, fn):
        """``fn`` (a step's forward, running ``model``), through ``torch.compile`` when ``trainer.compile`` asks for
        it: compiled once per phase and model (see :mod:`pluto.engine.compile`)."""
        if self.t.compile == "none":
            return fn
        entry = self._compiled.get(key)
        if entry is None or entry.model is not model:
            entry = self._compiled[key] = compile_fn(fn, model, self.t.compile)
        return entry

    def sandwich_loss(self, supernet: Supernet, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The sandwich rule (BigNAS, OFA): the biggest child, the smallest and ``compress.sandwich_random`` random
        children, each a plain forward with the shared weights, their losses summed (the gradients every one of
        them would take alone, accumulated). Every step trains the biggest child, the dense reference and ``self``
        teacher, as a plain network is trained, and the smallest bounds what the search may land on; one random
        path per step (SPOS) leaves each of a short warm-up's children too few steps to learn anything."""
        paths = [supernet.largest_architecture(), supernet.smallest_architecture()]
        paths += [supernet.random_architecture() for _ in range(int(self.c.sandwich_random))]
        total, logs = None, {}
        for i, path in enumerate(paths):
            with supernet.on_path(path):
                loss, path_logs = self.task_loss(supernet(x), x, y)
            total = loss if total is None else total + loss
            if i == 0:
                logs = {f"{k}_biggest": v for k, v in path_logs.items()}
        return total, logs

    def warmup(self) -> None:
        model = self.model
        supernet = isinstance(model, Supernet)
        # a supernet's epochs report its dense reference: a sampled path per batch, with statistics that every
        # candidate collected behind other paths, scores a different random network per batch (chance, early on)
        self._phase("warmup", model, self.c.epochs.warmup, self.t.lr, self.planned_step("warmup"),
                    weight_params=model.weight_parameters() if supernet else None,
                    scored=(lambda: _uncompressed(model, self.calibration.to(self.device)).to(self.device))
                    if supernet else None)
        self._load_phase(model, "warmup.pt")
        reference = model
        if isinstance(model, Supernet):  # the dense reference of a supernet is its biggest child (see _uncompressed)
            reference = _uncompressed(model, self.calibration.to(self.device)).to(self.device)
        self.dense_reference = self.task.evaluate(reference, self.test_loader, self.device)
        if self.c.distill and self.c.teacher == "self":
            self.teacher.build(model, self.calibration.to(self.device))

    # ---- 3. search -------------------------------------------------------------------------
    def attach_decisions(self) -> Decisions:
        c = self.c
        self.decisions = attach(self.model, self.example.to(self.device), c.prune, c.quantize, self.bits,
                                c.gate_init_keep, self.calibration.to(self.device), c.gate_mode, c.gate_init,
                                c.gate_init_spread, depth=bool(c.depth), depth_init_keep=c.depth_init_keep,
                                depth_init_spread=c.depth_init_spread)
        if self.decisions.supernet is not None:  # the search needs the mixture (see pluto.decisions.ops.choice)
            self.decisions.supernet.set_mode(c.supernet_search_mode)
        start = {"uniform": None, "reference": self.reference_bits}.get(str(c.bits_init), None)
        if str(c.bits_init).isdigit():
            start = int(c.bits_init)
            if start not in self.bits:
                raise ConfigError(f"compress.bits_init={start} is not one of compress.bits={list(self.bits)}; "
                                  "pick one of them, 'reference' or 'uniform'")
        if c.quantize and start is not None and len(self.bits) > 1:  # a resumed search then loads its own logits
            from pluto.decisions.bits import bit_choices

            for choice in bit_choices(self.decisions.model).values():
                choice.lean_towards(start, float(c.bits_init_p))
        self.objective = LagrangianObjective(self.constraints, LagrangianConfig(**OmegaConf.to_container(c.lagrangian)))
        self.cost_model.to(self.device)
        steps = max(1, c.epochs.search * batches_per_epoch(self.train_set, self.t.batch_size))
        self.anneal = TemperatureSchedule(c.temperature.initial, c.temperature.final, steps)
        self.per_epoch = batches_per_epoch(self.train_set, self.t.batch_size)
        self.every = self._measure_every() if self.measurer is not None else 0
        return self.decisions

    def search_step(self, x: Tensor, y: Tensor):
        """One search step's loss and logs: :meth:`search_plan` then :meth:`search_run`."""
        self.search_plan()
        return self.search_run(x, y)

    def search_plan(self) -> tuple | None:
        """The host's part of the next search step (counting, the supernet's temperature, whether it logs or measures),
        kept for :meth:`search_run`; returns the step's kind for :class:`pluto.engine.graph.StepGraphs`: what the
        step's device work depends on (whether it logs the decisions, whether the multipliers are active and move,
        the measured correction), or None for a step that must run as is (it measures on the chip; a supernet's)."""
        d, state = self.decisions, self.state
        if d.supernet is not None:
            d.supernet.set_temperature(self.anneal(state.epoch * self.per_epoch + state.batch))
        step = state.global_step + 1  # the loop counts this step after it returns
        log = step % self.t.log_every == 0
        measure = bool(self.every) and step % self.every == 0
        lagrangian = self.objective.plan_step()
        self._plan = (log, measure, lagrangian)
        if d.supernet is not None or measure:
            return None
        cm = self.cost_model
        return log, lagrangian, tuple(sorted(cm.correction.items())), tuple(sorted(cm.offset.items()))

    def search_run(self, x: Tensor, y: Tensor):
        """The search step as :meth:`search_plan` planned it: forward, expected cost, Lagrangian and dual step."""
        if self._plan is None:
            raise PlutoError("Compression.search_run: plan the step first (search_plan), or call search_step")
        (log, measure, lagrangian), self._plan = self._plan, None
        d, state = self.decisions, self.state
        # a supernet's temperature changes every step: compiled, it would recompile every step
        forward = self.search_forward if d.supernet is not None else \
            self.compiled("search", d.model, self.search_forward)
        with record_function("search/forward"):  # named regions: scripts/overhead.py --profile
            task, logs, raw = forward(x, y)
        with record_function("search/lagrangian"):
            # the measured correction changes per measurement: applied here, outside a compiled forward
            expected = {m: self.cost_model.correct(m, v) for m, v in raw.items()}
            # the primal loss and the dual step in one compiled function when the step is compiled
            loss, lag_logs = self.objective.primal_dual(task, expected, compiled=self.t.compile != "none",
                                                        plan=lagrangian)
        step = state.global_step + 1
        if log:
            logs.update(d.logs())
        if measure:  # measured on rank 0; every rank prices with its correction
            # logged here: the loop logs a step's scalars only every trainer.log_every steps
            measured = self.measure_candidate(step) if distributed.is_main() else {}
            if measured:
                self.ctx.logger.scalars(measured, step)
            scale, offset = distributed.broadcast_object((dict(self.cost_model.correction),
                                                          dict(self.cost_model.offset)))
            self.cost_model.correction.update(scale)
            self.cost_model.offset.update(offset)
        return loss, {**logs, **{f"lagrangian/{k}": v for k, v in lag_logs.items()}}

    def planned_step(self, phase: str) -> PlannedStep:
        """The step function of ``phase`` (warmup, search, finetune) with its host part apart, for
        ``trainer.compile=step-graph`` (:mod:`pluto.engine.graph`)."""
        if phase == "search":
            return PlannedStep(self.search_plan, self.search_run)
        if phase == "warmup":
            sandwich = isinstance(self.model, Supernet) and self.c.supernet_warmup_mode == "sandwich"
            # the sandwich samples random children on the host every step: never captured
            return PlannedStep((lambda: None) if sandwich else constant_plan, self.warmup_step)
        if phase == "finetune":
            return PlannedStep(constant_plan, self.finetune_step)
        raise ConfigError(f"no step function for phase {phase!r}; phases: warmup, search, finetune")

    def search_forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The search step's forward: task (+ KD) loss, its logs and each constraint's expected cost as the table
        prices it (before the measured correction) for the current soft decisions."""
        d = self.decisions
        task, logs = self.task_loss(d.model(x), x, y)
        if not self.constraints:
            return task, logs, {}
        # priced where the decisions live (the cost model's plan keeps its grids on the training device):
        # no copy to the host and back, and the multipliers move there too; nothing here waits for the device
        channels, precisions, presence = d.channels(), d.precisions(), d.presence()
        return task, logs, {con.metric: self.cost_model.expected(con.metric, channels, precisions, raw=True,
                                                                 presence=presence)
                            for con in self.constraints}

    def measure_candidate(self, step: int) -> dict[str, float]:
        """Harden the current decisions on a copy, measure them on the chip (rank 0), update the correction (all
        ranks, from rank 0's figures, so the multipliers stay identical)."""
        measured, predicted = distributed.broadcast_object(self._measure_candidate() if distributed.is_main()
                                                           else None)
        if not measured:
            return {}
        correction = self.correction.update(measured, predicted, step)
        logs = {f"measured/{m}": v for m, v in measured.items()}
        logs.update({f"predicted/{m}": v for m, v in predicted.items()})
        logs.update({f"correction/{m}": v for m, v in correction.items()})
        return logs

    def _measure_candidate(self) -> tuple[dict[str, float], dict[str, float]]:
        d = self.decisions
        was_training = d.model.training
        saved = _hard_state(d)
        try:
            fix_decisions(d, round_to=self.align)  # argmax bits, rounded widths (live decisions; restored below)
            model, _ = build_concrete(d, self.example, self.calibration[:64])
        finally:
            _restore_hard_state(d, saved)
            d.model.train(was_training)
        model = model.cpu().eval()
        from pluto.optimizer.report import float_and_bits

        float_model, bits = float_and_bits(model)
        try:
            measured = self.measure_at_start_level(model)
        except MeasurementError as exc:
            print(f"in-loop measurement failed ({exc}); keeping the last correction")
            return {}, {}
        predicted = {con.metric: self.cost_model.of_model(float_model, con.metric, bits)
                     for con in self.constraints if con.source == "table"}
        return {m: measured[m] for m in predicted if m in measured}, predicted

    def measure_at_start_level(self, model: nn.Module) -> dict[str, float]:
        """``{metric: value}`` of ``model`` measured on the chip, for decisions against the run's targets.

        A latency target relative to the uncompressed model was resolved against that model measured at the start;
        a shared machine's speed moves 1.1-1.5x within minutes (AMD EPYC, 2026-12-08: the main job's landing measured
        its candidate at 0.97x the target in a fast phase, the verdict 1.27x beside the re-measured uncompressed
        model). So the candidate is timed in the same interleaved rounds as the uncompressed deployment the target
        was resolved against, and its latency is expressed at the start's level (``x start / now`` of that
        reference): the landing and the in-loop correction decide as the verdict will judge (:meth:`_measure_final`).
        Otherwise (absolute targets, a remote runner, a PyTorch runtime, a resumed run) one plain measurement."""
        measurer, reference = self.measurer, self._start_reference()
        if reference is None:
            return measurer.measure(model, self.input_shape).as_metrics()
        from pluto.cost.measure import deployable_onnx

        reference_file, reference_start = reference
        with tempfile.TemporaryDirectory() as tmp:
            candidate = deployable_onnx(model, self.input_shape, Path(tmp) / "candidate.onnx", measurer.weight_type())
            timed, now = measurer.measure_interleaved([candidate, reference_file], self.input_shape)
        level = now.latency_ms / reference_start
        out = timed.as_metrics()
        out.update(latency_ms=out["latency_ms"] / level, latency_iqr_ms=out["latency_iqr_ms"] / level,
                   raw_latency_ms=timed.latency_ms, reference_level=level)
        return out

    def _start_reference(self) -> tuple[Path, float] | None:
        """(ONNX file, latency at the start) of the cheapest uncompressed deployment when a relative latency target
        was resolved against it on a local onnxruntime measurer (exported once per run), else None."""
        if not self._beside_uncompressed() or self.measurer.level:
            return None
        start = self.uncompressed.get("measured", {})
        precision = min((p for p in self.dense_deployed if f"{p}_latency_ms" in start),
                        key=lambda p: start[f"{p}_latency_ms"], default=None)
        return None if precision is None else (self._dense_onnx(precision), start[f"{precision}_latency_ms"])

    def _beside_uncompressed(self) -> bool:
        """Whether the latency target is relative to the uncompressed model and that model's deployments can be timed
        in the same interleaved rounds as a candidate (local onnxruntime measurer, deployments kept at the start)."""
        measurer = self.measurer
        return getattr(self, "relative", {}).get("latency_ms") is not None \
            and bool(getattr(self, "dense_deployed", None)) and measurer is not None and not measurer.runner \
            and measurer.table.runtime == "onnxruntime"

    def _dense_onnx(self, precision: str) -> Path:
        """The uncompressed deployment at ``precision`` (``dense_deployed``) as ONNX, exported once per run into a
        folder removed with the pipeline."""
        from pluto.cost.measure import deployable_onnx

        if getattr(self, "_dense_files", None) is None:
            self._dense_dir, self._dense_files = tempfile.TemporaryDirectory(), {}
        if precision not in self._dense_files:
            self._dense_files[precision] = deployable_onnx(
                self.dense_deployed[precision], self.input_shape, Path(self._dense_dir.name) / f"{precision}.onnx",
                self.measurer.weight_type())
        return self._dense_files[precision]

    def search(self) -> None:
        d = self.attach_decisions()
        opt = self.decision_optimizer(d)
        extra = _SearchState(self.objective, self.correction)
        self._phase("search", d.model.to(self.device), self.c.epochs.search, self.t.lr * self.c.search_lr_scale,
                    self.planned_step("search"), extra_opt=opt, extra_state=extra, weight_params=d.weight_parameters(),
                    replicated=self._replicated)
        self._load_phase(d.model, "search.pt", extra)

    def decision_optimizer(self, d: Decisions) -> torch.optim.Optimizer | None:
        """Adam on the decision logits (gates, bit and op choices), or None when nothing is searched."""
        params = d.parameters()
        if not params:
            return None
        blocks = {id(p) for p in d.blocks.parameters()} if d.blocks is not None else set()
        groups = [{"params": [p for p in params if id(p) not in blocks]}]
        if blocks:  # one logit decides a whole block: it must be able to cross 0 within a short search
            groups.append({"params": [p for p in params if id(p) in blocks],
                           "lr": self.c.decision_lr * self.c.depth_lr_scale})
        return torch.optim.Adam([g for g in groups if g["params"]], lr=self.c.decision_lr, betas=(0.5, 0.999),
                                fused=fusable(params) or None, capturable=self.capturable)

    @property
    def capturable(self) -> bool:
        """Whether the training steps run as CUDA graphs (``trainer.compile=step-graph``), so the optimizers must
        be steppable inside one (:func:`pluto.engine.optim.build_optimizer`)."""
        return self.t.compile == "step-graph"

    def _replicated(self) -> list[Tensor]:
        """What must be identical on every rank besides the trained parameters: multipliers and correction."""
        values = [m.value for m in self.objective.multipliers.values()] + list(self.cost_model.correction.values()) \
            + list(self.cost_model.offset.values())
        return [torch.tensor(values, dtype=torch.float64)]

    # ---- 4. harden -------------------------------------------------------------------------
    def harden(self) -> None:
        d = self.decisions
        d.model.cpu()  # hardening is cheap and runs where the tables and the graph's indices live
        searched = d.gates.hard_flat().clone() if d.gates is not None else None  # what the search's forward kept
        fix_decisions(d, self.cost_model, self.constraints, round_to=self.align)
        if self.measurer is not None and self.c.land and distributed.is_main():
            self._land(searched)
        distributed.broadcast_module(d.model, what="hard decisions")  # rank 0's landed gates, bits and ops
        final, trail = build_concrete(d, self.example, self.calibration, copy_first=False)
        # every rank built the concrete model from the same decisions; all fine-tune rank 0's, and a rank whose
        # architecture came out different stops the run here instead of training a mismatch
        distributed.broadcast_module(final, what="hardened model")
        trail.update({k: v for k, v in d.trail.items()
                      if k in ("projection", "precision_polish", "landing", "precision_polish_after_landing",
                               "search_block_probs")})
        trail["correction"] = {"scale": dict(self.cost_model.correction), "offset": dict(self.cost_model.offset)}
        self.trail = trail
        self.final = final.to(self.device)
        self.ctx.write_json("decisions.json", trail)

    def _land(self, searched: Tensor | None) -> None:
        """On the chip (rank 0): the measured precision polish, the landing on the measured target, and the polish
        again on the landed widths (:func:`polish_precision`, :func:`land_on_target`); their notes go to the trail."""
        d = self.decisions
        polishing = self.c.polish_precision and d.quantized
        if polishing:
            self._polish("precision_polish")
        d.trail["landing"] = landing = land_on_target(
            d, self.constraints, lambda: self.measure_at_start_level(self._hard_model()),
            tuple(float(b) for b in self.c.land_band), int(self.c.land_measurements), round_to=self.align)
        if searched is not None:
            landing.update(silence_untrained(d, searched))
        status = "landed" if landing.get("landed") else f"did not land: {landing.get('why')}"
        print(f"landing on the measured target: {status} ({len(landing.get('measurements', []))} measurements)")
        if polishing:  # the landing changed widths or blocks: what is fastest can change with them (only faster)
            self._polish("precision_polish_after_landing")

    def _hard_model(self) -> nn.Module:
        """The concrete model of the current hard decisions (BatchNorm and quantizers calibrated on 64 images)."""
        return build_concrete(self.decisions, self.example, self.calibration[:64])[0].cpu().eval()

    def _polish(self, key: str) -> None:
        d = self.decisions
        notes = polish_precision(d, self.constraints, self._hard_model, lambda models: [
            m.as_metrics() for m in self.measurer.measure_models(models, self.input_shape)])
        d.trail[key] = notes
        if notes.get("layers"):
            print(f"{key.replace('_', ' ')}: {notes['chosen']} measured {notes['measured_gain']:.1%} faster "
                  f"({len(notes['layers'])} layers to a cheaper precision)")

    # ---- 5. finetune -----------------------------------------------------------------------
    def finetune_step(self, x: Tensor, y: Tensor):
        final = self.final
        return self.compiled("finetune", final, lambda x, y: self.task_loss(final(x), x, y))(x, y)

    def finetune(self) -> None:
        self._phase("finetune", self.final, self.c.epochs.finetune, self.t.lr * self.c.finetune_lr_scale,
                    self.planned_step("finetune"))
        self._load_phase(self.final, "finetune.pt")

    # ---- 6. deploy -------------------------------------------------------------------------
    def deploy(self) -> None:
        from pluto.optimizer.report import export_final

        self.metrics = self.task.evaluate(self.final, self.test_loader, self.device)
        self.final = self.final.cpu().eval()
        self.measured, self.onnx_path = {}, None
        if not distributed.is_main():  # export and measurement: once, on rank 0
            return
        from pluto.materialize.saving import save

        save(self.final, self.ctx.dir / "model.pt")  # architecture + weights + bits: pluto.load(path) restores it
        self.onnx_path = export_final(self.final, self.input_shape, self.ctx.dir) if self.c.export else None
        if self.onnx_path is not None:  # the deployed files, scored with the task metric through onnxruntime
            from pluto.materialize.export import onnx_parity

            self.metrics.update(onnx_parity(self.final, self.onnx_path, self.task, self.test_loader, self.input_shape,
                                            self.ctx.dir))
        if self.measurer is not None:
            try:
                m = self._measure_final()
                self.measured = m.as_metrics()
                self.info["measurement"] = {"machine": m.machine, "method": m.method, **m.extra}
            except MeasurementError as exc:
                print(f"NOT MEASURED: {exc}")

    def _measure_final(self):
        """The exported model's measurement. A latency target relative to the uncompressed model is re-resolved
        against that model measured in the same interleaved rounds: the verdict compares the two under one load,
        not against a reference timed minutes earlier (the main job's dense int8 read 0.123 ms at the start of a run
        and 0.152 in the runs before it on the same machine, 2026-12-07: a target of 0.7x moved by 20 %)."""
        relative = getattr(self, "relative", {}).get("latency_ms")
        measurer = copy.copy(self.measurer)
        measurer.level = False  # the verdict is the raw measurement (hw.measure_level steers the loop only)
        if self.onnx_path is None or not self._beside_uncompressed():
            return measurer.measure(self.final, self.input_shape, onnx=self.onnx_path)
        files = {"final": self.onnx_path, **{p: self._dense_onnx(p) for p in self.dense_deployed}}
        timed = dict(zip(files, measurer.measure_interleaved(list(files.values()), self.input_shape)))
        closest = min((k for k in files if k != "final"), key=lambda k: timed[k].latency_ms)
        reference = timed[closest].latency_ms
        # round by round, the result over its re-based target: how far this machine's noise reaches (the verdict is
        # the median's; rounds that straddle 1 say a re-measurement may read the other way)
        per_round = [f / r / relative for f, r in zip(timed["final"].extra.get("rounds_ms", []),
                                                      timed[closest].extra.get("rounds_ms", [])) if r > 0]
        if per_round:
            timed["final"].extra["over_target_rounds"] = [round(min(per_round), 4), round(max(per_round), 4)]
        before = next(c.target for c in self.constraints if c.metric == "latency_ms") / relative
        self.constraints = [dataclasses.replace(c, target=relative * reference) if c.metric == "latency_ms" else c
                            for c in self.constraints]
        self.uncompressed["measured_with_final"] = {f"{k}_latency_ms": timed[k].latency_ms for k in files
                                                    if k != "final"}
        self.uncompressed.setdefault("measured", {})["latency_ms"] = reference
        print(f"uncompressed model re-measured in the same rounds as the result: {reference:.4g} ms (at the start "
              f"{before:.4g}); latency target {relative:g} x {reference:.4g} = {relative * reference:.4g} ms")
        return timed["final"]

    # ---- 7. report -------------------------------------------------------------------------
    def report(self) -> None:
        from pluto.optimizer.report import final_report

        # rank 0 reports; pluto.train hands its result to the other ranks
        self.result = final_report(self) if distributed.is_main() else {}


def _uncompressed(model: nn.Module, images: Tensor | None = None) -> nn.Module:
    """A copy of the model the uncompressed reference is (relative targets, the report's ``uncompressed``, the
    ``self`` teacher): the model itself, or a supernet's biggest child, the one architecture of its space that every
    compressed child undercuts (its mixture is no deployment); with ``images`` its BatchNorm statistics are its own
    (:func:`~pluto.decisions.ops.derive.recalibrate_batchnorm`)."""
    if isinstance(model, Supernet):
        from pluto.decisions.ops.derive import derive, recalibrate_batchnorm

        child = derive(model, model.largest_architecture())
        return recalibrate_batchnorm(child, images) if images is not None else child
    return copy.deepcopy(model)


def silence_untrained(d: Decisions, searched: Tensor) -> dict[str, int]:
    """Zero what consumers read from the channels the hard decisions keep but the search's forward did not
    (``searched``: its hard keep decision before projection and landing), function-preserving (see
    :meth:`~pluto.decisions.channels.ChannelGates.silence`); returns the counts for the trail.

    Channels the search kept, that the projection onto the predicted budget removed and the measured landing
    grew back, are trained channels of the network the search trained: they come back with their weights. (Silencing
    them too, as when the silenced set was 'grown since the projection', turned a landing from a projection to the
    width floor back to full widths into the floor network with dead channels: 29 % after a fine-tune epoch where
    the same architecture restored scored 60 %+.)"""
    grown = d.gates.hard_flat() & ~searched.to(torch.bool)
    out = {"regrown_channels": int(grown.sum()), "regrown_consumer_slices_zeroed": 0}
    if bool(grown.any()):
        out["regrown_consumer_slices_zeroed"] = d.gates.silence(d.model, grown)
    return out


class _SearchState:
    """What the search checkpoints besides weights: the multipliers and the measured correction."""

    def __init__(self, objective: LagrangianObjective, correction: MeasuredCorrection):
        self.objective, self.correction = objective, correction

    def state_dict(self) -> dict:
        return {"objective": self.objective.state_dict(), "correction": self.correction.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "objective" in state:
            self.objective.load_state_dict(state["objective"])
            self.correction.load_state_dict(state.get("correction", {}))
        else:  # checkpoints written before the correction existed hold the objective alone
            self.objective.load_state_dict(state)


def _hard_state(d: Decisions) -> dict:
    """Everything :func:`fix_decisions` changes, to restore the live search afterwards."""
    state: dict[str, Any] = {"trail": dict(d.trail)}
    if d.gates is not None:
        state["gates"] = copy.deepcopy(d.gates.state_dict())
        state["gates_mode"] = d.gates.mode
    if d.blocks is not None:
        state["blocks"] = copy.deepcopy(d.blocks.state_dict())
    if d.quantized:
        from pluto.decisions.bits import bit_choices

        state["bits"] = {name: (c.chosen.clone(), c.mode) for name, c in bit_choices(d.model).items()}
    return state


def _restore_hard_state(d: Decisions, state: dict) -> None:
    d.trail = state["trail"]
    if d.gates is not None:
        d.gates.load_state_dict(state["gates"])
        d.gates.set_mode(state["gates_mode"])
    if d.blocks is not None:
        d.blocks.load_state_dict(state["blocks"])
    if d.quantized:
        from pluto.decisions.bits import bit_choices

        for name, c in bit_choices(d.model).items():
            chosen, mode = state["bits"][name]
            c.chosen.copy_(chosen)
            c.mode = mode


def compress_run(model: nn.Module, train_set: Dataset, test_loader: DataLoader, spec: DataSpec, cfg: DictConfig,
                 ctx: RunContext, device: torch.device, task: Task | None = None) -> tuple[dict[str, Any], nn.Module]:
    """Run every stage of :class:`Compression`; returns ``(metrics, compressed model)``."""
    return Compression(model, train_set, test_loader, spec, cfg, ctx, device, task).run()


__all__ = ["Compression", "STAGES", "Teacher", "MeasuredCorrection", "compress_run", "load_table", "silence_untrained"]
