"""``Measurer``: the one way pluto times (and energy-meters) a model — as the table was made, where the chip is.

Every figure that says "measured" comes from here: the compression report, the in-loop correction
of the search, the landing projection, ``pluto validate``, ``pluto measure RUN_DIR`` and the
benchmarks. A measurer is bound to a :class:`~pluto.cost.table.LatencyTable` and reproduces its
method: runtime (onnxruntime CPU / PyTorch / CUDA graph), intra-op threads, clock (thread CPU time
for single-threaded CPU inference, wall clock otherwise), batch, precision (int8 as QDQ ONNX, fp16
layers with their casts) and, where the table has energy, the same meter.

Where it runs:

- **locally**, when this machine can run the table's runtime on the table's kind of device (a CPU
  table on this CPU, a CUDA table on a visible GPU). The figures are this machine's; the
  fingerprint of the machine that measured goes with them (see :mod:`pluto.cost.machine`).
- **remotely** through ``runner``, a command template such as ``"ssh board ./bench {onnx}"``: pluto
  writes the ONNX file, substitutes ``{onnx}`` (and ``{batch}``, ``{threads}``), runs the command
  (no shell) and reads ``latency_ms [energy_mj]`` from the last line of its output, e.g. ``0.412 3.1``
  or ``latency_ms=0.412 energy_mj=3.1``.
- nowhere: :meth:`reachable` says why, and callers report "not measured".

``level=True`` (``hw.measure_level``): a local onnxruntime measurement times the table's reference kernels in the
same rounds as the model and divides by the machine's *level* (:func:`pluto.cost.adapt.machine_level`: how much
slower the kernels run now than when the table's calibration was measured). A shared 2-vCPU VM drifts (neighbours,
clocks; 2026-12-07: int8 ResNet-20 0.29-0.36 ms within hours), and a search that lands on a target by a measurement
taken at a slow moment lands short of it when the machine is faster (``scripts/measure_level.py``). The raw figure
and the level stay in ``Measurement.extra``.
"""
from __future__ import annotations

import copy
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pluto.cost.machine import cpu_facts, describe, fingerprint
from pluto.cost.runtimes import Prepared, Runtime, time_call
from pluto.cost.table import LatencyTable
from pluto.errors import ConfigError, PlutoError

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class MeasurementError(PlutoError):
    """A measurement could not be taken (runner failed, unreadable output, device missing)."""


@dataclass
class Measurement:
    """One measured model: median latency (ms) and its IQR, energy (mJ) where metered, and who measured."""

    latency_ms: float
    latency_iqr_ms: float = 0.0
    energy_mj: float | None = None
    machine: str = ""
    method: str = ""
    extra: dict = field(default_factory=dict)

    def as_metrics(self) -> dict[str, float]:
        out = {"latency_ms": self.latency_ms, "latency_iqr_ms": self.latency_iqr_ms}
        if self.energy_mj is not None:
            out["energy_mj"] = self.energy_mj
        return out


def with_fp16_layers(model: nn.Module, bits: dict[str, int]) -> nn.Module:
    """A copy in which the layers that chose 16 bits compute in half precision (casts at their boundary)."""
    model = copy.deepcopy(model)
    for name, b in bits.items():
        if b != 16:
            continue
        layer = model.get_submodule(name).half()
        layer.register_forward_pre_hook(lambda m, args: tuple(a.half() for a in args))
        layer.register_forward_hook(lambda m, args, out: out.float())
    return model


def deployable_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path,
                    weight_type: str | None = None) -> Path:
    """Write what a deployment runs: int8 QDQ ONNX for a quantization-aware model, fp32 ONNX otherwise.

    ``weight_type``: int8 weights 's8' or 'u8' (the chip's, from its table); None: this machine's choice."""
    from pluto.decisions.bits import bit_choices
    from pluto.materialize.export import export_onnx

    example = torch.randn(1, *input_shape[-3:])
    quantized = bool(bit_choices(model))
    return Path(export_onnx(copy.deepcopy(model).cpu().eval(), example, path, int8=quantized,
                            weight_type=weight_type if quantized else None))


ROUND_SPREAD = 0.10  # rounds whose medians differ by more than this (max / min - 1) were disturbed


def spread(values: list[float]) -> float:
    """``max / min - 1`` of round medians (0 for fewer than two)."""
    return max(values) / min(values) - 1.0 if len(values) > 1 and min(values) > 0 else 0.0


class Measurer:
    """Times models on the table's chip with the table's method; see the module docstring."""

    def __init__(self, table: LatencyTable, runner: str | None = None, samples: int = 50, rounds: int = 3,
                 level: bool = False):
        if samples < 5 or rounds < 1:
            raise ConfigError(f"measurement needs samples >= 5 and rounds >= 1 (got {samples}, {rounds})")
        self.table, self.runner, self.samples, self.rounds = table, runner or None, samples, rounds
        self.level = level
        self._kernels: dict[str, list] = {}  # precision -> prepared reference kernels (level measurements)
        self.batch = int(table.metadata.get("batch") or 1)
        self.threads = int(table.metadata.get("threads") or 1)
        self.device = table.device.get("type", "cpu")

    def weight_type(self) -> str | None:
        """int8 weight type the table's chip runs: recorded in the table, else this machine's (local measurement)."""
        return (self.table.metadata.get("runtime") or {}).get("int8_weights") if self.runner else None

    # ---- where ------------------------------------------------------------------------------
    def reachable(self) -> tuple[bool, str]:
        """(can measure, why not / where): the table's chip is this machine's kind, or a runner reaches it."""
        if self.runner:
            return True, f"remote runner `{self.runner}`"
        if self.device == "cuda":
            if not torch.cuda.is_available():
                return False, (f"table {self.table.metadata.get('name')} describes GPU "
                               f"'{self.table.device.get('name')}' and no CUDA device is visible here")
            here = torch.cuda.get_device_name(0)
            if here != self.table.device.get("name"):
                return False, f"table GPU is '{self.table.device.get('name')}', this machine has '{here}'"
            return True, f"this GPU ({here})"
        made_on = self.table.metadata.get("machine", {}).get("machine") or self.table.device.get("machine")
        here = cpu_facts()["machine"]
        if made_on and made_on != here:
            return False, f"table CPU is {made_on}, this machine is {here}; pass hw.runner to measure on the chip"
        return True, f"this CPU: {describe()}"

    def where(self) -> str:
        return self.reachable()[1]

    # ---- how --------------------------------------------------------------------------------
    def _runtime(self) -> Runtime:
        return Runtime(self.table.runtime, "cuda" if self.device == "cuda" else "cpu", self.threads)

    def _prepare(self, model: nn.Module | None, onnx: Path | None, input_shape: tuple[int, ...],
                 bits: dict[str, int] | None) -> Prepared:
        rt = self._runtime()
        x = torch.randn(self.batch, *input_shape[-3:])
        if self.table.runtime == "onnxruntime":
            if onnx is None:
                raise ConfigError("onnxruntime tables time ONNX files: pass onnx= or a model to export")
            return rt.prepare_onnx(Path(onnx).read_bytes(), (x,))
        if model is None:
            raise ConfigError(f"runtime {self.table.runtime} times PyTorch modules: pass model=")
        model = with_fp16_layers(model, bits) if bits and 16 in bits.values() else copy.deepcopy(model)
        dev = "cuda" if rt.device == "cuda" else "cpu"
        return rt.prepare(model.eval().to(dev), (x.to(dev),))

    def measure(self, model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None,
                onnx: str | Path | None = None, bits: dict[str, int] | None = None) -> Measurement:
        """Measure a model (``model``: float or quantization-aware module; ``onnx``: an exported file).

        With a model and an onnxruntime table, the model is exported as it would be deployed
        (:func:`deployable_onnx`). Latency is the median over ``rounds`` rounds of ``samples`` samples.
        """
        ok, why = self.reachable()
        if not ok:
            raise MeasurementError(f"cannot measure: {why}")
        if input_shape is None:
            raise ConfigError("measure needs input_shape=(1, C, H, W)")
        with tempfile.TemporaryDirectory() as tmp:
            if onnx is None and model is not None and (self.runner or self.table.runtime == "onnxruntime"):
                onnx = deployable_onnx(model, input_shape, Path(tmp) / "model.onnx", self.weight_type())
            if self.runner:
                return self._remote(Path(onnx))
            return self._local(model, Path(onnx) if onnx else None, tuple(input_shape), bits)

    def measure_interleaved(self, onnx: list[str | Path], input_shape: tuple[int, ...], seed: int = 0,
                            progress: bool = False) -> list[Measurement]:
        """Measure several ONNX files against each other: ``rounds`` rounds of ``samples`` samples each, the files in
        a shuffled order every round (:func:`pluto.cost.profiler.measure_interleaved`), so drift on a shared machine
        moves all of them alike. Latency is the median of a file's round medians, as in :meth:`measure`."""
        ok, why = self.reachable()
        if not ok:
            raise MeasurementError(f"cannot measure: {why}")
        if self.runner:  # a remote chip times one file per call
            return [self._remote(Path(path)) for path in onnx]
        if self.table.runtime != "onnxruntime":
            raise ConfigError(f"measure_interleaved times ONNX files; table {self.table.metadata.get('name')} runs "
                              f"{self.table.runtime}: use measure(model) per model")
        from pluto.cost.profiler import interleaved_rounds

        rt = self._runtime()
        works = [self._prepare(None, Path(path), tuple(input_shape), None) for path in onnx]
        medians, iqrs = interleaved_rounds(rt, works, self.rounds, self.samples * self.rounds, seed=seed,
                                           progress=progress, desc="measure (interleaved)")
        method = (f"{self.table.runtime}, {self.threads} thread(s), {rt.clock} clock, batch {self.batch}, median of "
                  f"{self.rounds} interleaved rounds x {self.samples}")
        fp, here = fingerprint(), describe()
        return [Measurement(float(torch.tensor(m).median()), float(torch.tensor(q).median()), None, machine=here,
                            method=method, extra={"fingerprint": fp, "rounds_ms": m})
                for m, q in zip(medians, iqrs)]

    def measure_models(self, models: list[nn.Module], input_shape: tuple[int, ...]) -> list[Measurement]:
        """Several models against each other: exported as deployed and timed in interleaved rounds
        (:meth:`measure_interleaved`) on an onnxruntime table or a remote runner; one after another on a PyTorch
        runtime."""
        if self.table.runtime != "onnxruntime" and not self.runner:
            return [self.measure(m, input_shape) for m in models]
        with tempfile.TemporaryDirectory() as tmp:
            files = [deployable_onnx(m, input_shape, Path(tmp) / f"model{i}.onnx", self.weight_type())
                     for i, m in enumerate(models)]
            return self.measure_interleaved(files, input_shape)

    def _level_kernels(self, rt: Runtime, onnx: Path | None) -> tuple[str, list] | None:
        """(precision, reference kernels) to time beside the model when ``level`` is on and the table stored the
        kernels' times at its calibration for the model's precision (int8: a QDQ file), else None."""
        if not self.level or self.table.runtime != "onnxruntime" or onnx is None:
            return None
        precision = "int8" if b"QuantizeLinear" in Path(onnx).read_bytes() else "fp32"
        stored = ((self.table.metadata.get("calibration") or {}).get(precision) or {}).get("kernel_ms")
        if not stored:
            return None
        from pluto.cost.profiler import reference_workloads

        if precision not in self._kernels:  # prepared once: a run measures in the loop many times
            self._kernels[precision] = reference_workloads(rt, precision, self.batch)
        return precision, self._kernels[precision]

    def _local(self, model, onnx, input_shape, bits) -> Measurement:
        rt = self._runtime()
        work = self._prepare(model, onnx, input_shape, bits)
        kernels = self._level_kernels(rt, onnx)
        kernel_rounds: dict[str, list[float]] = {name: [] for name, _ in (kernels[1] if kernels else [])}
        medians, iqrs = [], []
        # rounds that disagree (a neighbour's burst on a shared machine) get more rounds, up to 3x, before the median
        while len(medians) < self.rounds or (spread(medians) > ROUND_SPREAD and len(medians) < 3 * self.rounds):
            t = time_call(work, samples=self.samples, clock=rt.clock)
            medians.append(t.median_ms)
            iqrs.append(t.iqr_ms)
            for name, kernel in (kernels[1] if kernels else []):  # the same round: the same load
                timing = time_call(kernel, samples=max(5, self.samples // 5), clock=rt.clock)
                kernel_rounds[name].append(timing.median_ms)
        latency = float(torch.tensor(medians).median())
        extra = {"fingerprint": fingerprint(), "rounds_ms": medians, "rounds_spread": spread(medians)}
        energy = None
        if "energy_mj" in self.table.metrics:
            from pluto.cost.energy import measure_energy, open_meter

            meter = open_meter("auto", rt.device)
            if meter is not None:  # the table's meter and sustained-loop method (NVML ticks every ~100 ms)
                energy = measure_energy(meter, work, latency / 1e3, window_s=1.0)
        if kernels:
            from pluto.cost.adapt import machine_level

            level = machine_level(self.table, kernels[0], {k: float(torch.tensor(v).median())
                                                           for k, v in kernel_rounds.items()})
            if level:
                extra.update(raw_latency_ms=latency, level=level)
                latency /= level
        return Measurement(latency, float(torch.tensor(iqrs).median()), energy, machine=describe(),
                           method=f"{self.table.runtime}, {self.threads} thread(s), {rt.clock} clock, batch "
                                  f"{self.batch}, median of {len(medians)} x {self.samples}"
                                  + (f", at the table's level (machine at {extra['level']:.3f}x)" if "level" in extra
                                     else ""),
                           extra=extra)

    def _remote(self, onnx: Path) -> Measurement:
        fields = {"onnx": str(onnx), "batch": str(self.batch), "threads": str(self.threads)}
        try:
            argv = [part.format(**fields) for part in shlex.split(self.runner)]
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"hw.runner {self.runner!r} is not a valid template ({exc}); use placeholders "
                              "{onnx}, {batch}, {threads}, e.g. 'ssh board ./bench {onnx}'") from exc
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MeasurementError(f"runner {argv[0]!r} could not run ({exc}); check hw.runner") from exc
        if done.returncode != 0:
            raise MeasurementError(f"runner `{' '.join(argv)}` exited {done.returncode}: "
                                   f"{(done.stderr or done.stdout).strip()[-300:]}")
        lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
        numbers = [float(v) for v in _NUMBER.findall(lines[-1])] if lines else []
        if not numbers or not numbers[0] > 0:
            raise MeasurementError(f"runner `{' '.join(argv)}` printed {done.stdout.strip()[-200:]!r}; its last line "
                                   "must hold latency_ms [energy_mj], e.g. '0.412 3.1'")
        return Measurement(numbers[0], 0.0, numbers[1] if len(numbers) > 1 else None, machine=f"runner: {argv[0]}",
                           method=f"remote runner `{self.runner}`")


def measurer_for(table: LatencyTable | None, runner: str | None = None, **kwargs) -> Measurer | None:
    """A measurer for ``table`` (None without a table)."""
    return Measurer(table, runner, **kwargs) if table is not None else None
