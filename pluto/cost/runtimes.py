"""Runtimes that execute a module the way a deployment would, and a careful stopwatch for them.

- ``torch``: PyTorch eager, ``inference_mode``, fixed intra-op threads (CPU) or one CUDA stream.
- ``cudagraph``: the module captured once in a CUDA graph and replayed (batch-1 GPU deployment;
  eager GPU is CPU-dispatch bound at ~70 us/op and says nothing about the chip).
- ``onnxruntime``: exported to ONNX (opset 17, BN folded by ORT's graph optimizer), CPU execution
  provider, fixed threads; ``int8`` is static QDQ quantization by ``onnxruntime.quantization``
  calibrated on random data (latency does not depend on the calibration values).

``time_call`` warms up, then takes ``samples`` samples, each long enough (>= ``min_sample_s``)
that timer resolution does not matter, rejects outliers by Tukey's fences (1.5 IQR), and
returns the median and IQR of one call in milliseconds.
"""
from __future__ import annotations

import io
import math
import platform
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from pluto.errors import ConfigError

RUNTIMES = ("torch", "cudagraph", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Timing:
    """One call's time: median and interquartile range in ms over ``n`` kept samples."""

    median_ms: float
    iqr_ms: float
    n: int


@dataclass
class Prepared:
    """A ready-to-run workload: ``run()`` does ``calls`` inferences; ``sync()`` waits for the device."""

    run: Callable[[], object]
    sync: Callable[[], None]
    calls: int = 1


def time_call(work: Prepared, samples: int = 30, warmup_s: float = 0.05, min_sample_s: float = 0.002,
              clock: str = "wall") -> Timing:
    """Median/IQR time of one inference of ``work`` in ms, after warm-up and outlier rejection.

    ``clock``: 'wall' (``perf_counter``) or 'thread' (CPU time of the calling thread). Single-threaded
    CPU inference runs on the calling thread, so its thread time is its latency on an idle core,
    without the time slices other processes take on a shared machine (a 10 ms network on a
    2-core VM at load 13 read 27 ms wall but 6.9 ms thread time; 0.3 ms units were unaffected).
    """
    now = time.thread_time if clock == "thread" else time.perf_counter
    work.sync()
    start, warm = time.perf_counter(), 0
    while warm < 3 or time.perf_counter() - start < warmup_s:
        work.run()
        warm += 1
    work.sync()
    per_run = (time.perf_counter() - start) / warm
    inner = max(1, math.ceil(min_sample_s / max(per_run, 1e-7)))
    times = np.empty(samples)
    for i in range(samples):
        t0 = now()
        for _ in range(inner):
            work.run()
        work.sync()
        times[i] = (now() - t0) / (inner * work.calls)
    q1, q3 = np.percentile(times, [25, 75])
    fence = 1.5 * (q3 - q1)
    kept = times[(times >= q1 - fence) & (times <= q3 + fence)]
    kq1, kmed, kq3 = np.percentile(kept, [25, 50, 75])
    return Timing(float(kmed * 1e3), float((kq3 - kq1) * 1e3), int(kept.size))


def export_onnx(module: nn.Module, inputs: tuple[Tensor, ...]) -> bytes:
    """ONNX bytes of ``module`` (TorchScript exporter: ~100x faster than dynamo for thousands of units)."""
    buffer = io.BytesIO()
    names = [f"x{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buffer, input_names=names, output_names=["y"], opset_version=17,
                          dynamo=False, do_constant_folding=True)
    return buffer.getvalue()


def quantize_qdq(model_bytes: bytes, inputs: tuple[Tensor, ...], weight_type: str | None = None) -> bytes:
    """Static int8 QDQ quantization (per-tensor activations, per-channel weights) with random calibration.

    Weights are of the type pluto's int8 export writes on this chip (``weight_type`` None:
    :func:`pluto.cost.machine.int8_weight_type`): uint8 (U8U8 kernels) on x86 CPUs without VNNI, whose
    U8S8 kernels saturate int16 partial sums (a trained small_cnn lost 3 points, 93.2 % -> 90.2 %);
    int8 (U8S8) with VNNI / AMX, where those kernels are exact and faster. So a table prices the kernels
    a deployment runs.
    """
    from pluto.cost.machine import int8_weight_type
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    import tempfile
    from pathlib import Path

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{f"x{i}": t.numpy() for i, t in enumerate(inputs)} for _ in range(2)])

        def get_next(self):
            return next(self.batches, None)

    import logging

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static logs a pre-processing hint per call
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model_bytes)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8 if int8_weight_type(weight_type) == "s8" else QuantType.QUInt8)
        return onnx.load(str(dst)).SerializeToString()


class Runtime:
    """Prepares modules for timing on one device with one runtime, thread count and precision set."""

    def __init__(self, name: str, device: str = "cpu", threads: int = 1):
        if name not in RUNTIMES:
            raise ConfigError(f"unknown runtime {name!r}; use one of {', '.join(RUNTIMES)}")
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"unknown device {device!r}; use cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA GPU is visible; profile on a GPU machine or use --device cpu")
        if name == "cudagraph" and device != "cuda":
            raise ConfigError("runtime cudagraph needs --device cuda")
        if name == "onnxruntime" and device != "cpu":
            raise ConfigError("runtime onnxruntime is profiled on --device cpu here; use cudagraph for the GPU")
        self.name, self.device, self.threads = name, device, threads
        self.clock = "thread" if device == "cpu" and threads == 1 else "wall"
        if device == "cpu":
            torch.set_num_threads(threads)

    def check_precision(self, precision: str) -> None:
        allowed = {"torch": ("fp32", "fp16") if self.device == "cuda" else ("fp32",),
                   "cudagraph": ("fp32", "fp16"), "onnxruntime": ("fp32", "int8")}[self.name]
        if precision not in allowed:
            raise ConfigError(f"runtime {self.name} on {self.device} runs {', '.join(allowed)}, not {precision}; "
                              f"pick --precision from those (int8 on CPU: --runtime onnxruntime).")

    def prepare(self, module: nn.Module, inputs: tuple[Tensor, ...], precision: str = "fp32",
                unroll: int = 1) -> Prepared:
        """A workload running ``module`` on ``inputs``; ``unroll`` > 1 repeats it inside one CUDA graph."""
        self.check_precision(precision)
        module = module.eval()
        if self.name == "onnxruntime":
            return self._prepare_ort(module, inputs, precision)
        dtype = torch.float16 if precision == "fp16" else torch.float32
        # fp32 keeps each layer's own dtype: mixed-precision models carry fp16 layers with casts at their edges.
        module = module.to(self.device, dtype) if precision == "fp16" else module.to(self.device)
        inputs = tuple(t.to(self.device, dtype) for t in inputs)
        if self.device == "cpu":
            def run():
                with torch.inference_mode():
                    return module(*inputs)
            return Prepared(run, lambda: None)
        if self.name == "torch":
            def run_cuda():
                with torch.inference_mode():
                    return module(*inputs)
            return Prepared(run_cuda, torch.cuda.synchronize)
        return self._prepare_graph(module, inputs, unroll)

    def _prepare_graph(self, module: nn.Module, inputs: tuple[Tensor, ...], unroll: int) -> Prepared:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):
                module(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            outputs = [module(*inputs) for _ in range(unroll)]
        torch.cuda.synchronize()
        prepared = Prepared(graph.replay, torch.cuda.synchronize, calls=unroll)
        prepared.keep = (graph, module, inputs, outputs)  # type: ignore[attr-defined]
        return prepared

    def _prepare_ort(self, module: nn.Module, inputs: tuple[Tensor, ...], precision: str) -> Prepared:
        model = export_onnx(module, inputs)
        if precision == "int8":
            model = quantize_qdq(model, inputs)
        return self.prepare_onnx(model, inputs)

    def prepare_onnx(self, model: bytes, inputs: tuple[Tensor, ...]) -> Prepared:
        """A workload running serialized ONNX ``model`` in an ORT CPU session with this runtime's threads."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feeds = {node.name: t.numpy() for node, t in zip(session.get_inputs(), inputs)}
        return Prepared(lambda: session.run(None, feeds), lambda: None)

    def describe(self) -> dict:
        """Runtime facts for a table's metadata."""
        info = {"name": self.name, "torch": torch.__version__, "python": platform.python_version(),
                "clock": self.clock}
        if self.name == "onnxruntime":
            import onnxruntime as ort

            from pluto.cost.machine import INT8_KERNELS, int8_weight_type

            weights = int8_weight_type()
            info.update(onnxruntime=ort.__version__, providers=["CPUExecutionProvider"], opset=17,
                        int8=f"static QDQ, per-channel {'int8' if weights == 's8' else 'uint8'} weights "
                             f"({INT8_KERNELS[weights]} kernels), uint8 activations, random calibration",
                        int8_weights=weights)
        if self.device == "cuda":
            info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        return info


def device_info(device: str) -> dict:
    """Device facts for a table's metadata: kind, chip name, core counts."""
    import os

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return {"type": "cuda", "name": props.name, "multiprocessors": props.multi_processor_count,
                "memory_gib": round(props.total_memory / 2 ** 30, 1), "host_cpu": cpu_name()}
    return {"type": "cpu", "name": cpu_name(), "logical_cpus": os.cpu_count(), "machine": platform.machine()}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
