"""Export to ONNX: fp32 (BN folded) or int8 QDQ that onnxruntime executes with real int8 kernels.

``export_onnx(qmodel, x, "m.int8.onnx")`` writes the quantized model with QuantizeLinear /
DequantizeLinear nodes (see :mod:`pluto.materialize.quantize`) and, beside it, ``m.int8.json``:
one entry per quantized layer saying its trained bit-width, the kernel onnxruntime runs and
whether that is *simulated* (4-bit values on int8 kernels, fp16 values on fp32 kernels), so
measured latency is never attributed to a precision the runtime did not execute.

The TorchScript-based exporter (``dynamo=False``) is used because it writes
``fake_quantize_per_{tensor,channel}_affine`` as QDQ pairs.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pluto.decisions.bits import bit_choices, fold_bn, strip_quantization
from pluto.errors import ConfigError, UnsupportedModelError
from pluto.materialize.quantize import to_qdq_model

DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _export(model: nn.Module, example_input: Tensor, path: Path, opset: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_input,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except Exception as exc:  # the exporter raises many types for unsupported ops
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"ONNX export of {type(model).__name__} failed ({type(exc).__name__}: {first}). "
                                    "Replace the unsupported op or layer, or export a traceable wrapper.") from exc
    _unique_node_names(path)


def _unique_node_names(path: Path) -> None:
    """Rename duplicate node names (some torch versions emit them; onnxruntime rejects such files)."""
    import onnx

    model = onnx.load(str(path))
    seen: dict[str, int] = {}
    changed = False
    for node in model.graph.node:
        if node.name in seen:
            seen[node.name] += 1
            node.name = f"{node.name}_{seen[node.name]}"
            changed = True
        else:
            seen[node.name] = 0
    if changed:
        onnx.save(model, str(path))


def float_export_model(model: nn.Module) -> nn.Module:
    """The float model an fp32 export runs: quantizers removed (if any), weights within the range their quantizer
    learned (:func:`clip_to_quantizer_range`), BN folded, eval mode."""
    model = copy.deepcopy(model)
    if bit_choices(model):
        clip_to_quantizer_range(model)
        model, _ = strip_quantization(model)
    return fold_bn(model.eval(), inplace=True)


@torch.no_grad()
def clip_to_quantizer_range(qmodel: nn.Module) -> int:
    """Clamp every integer-quantized layer's float weight (BN-folded, as it is quantized) into its quantizer's range
    ``[(qmin - z) s, (qmax - z) s]``, in place; returns how many weights moved.

    Why: the quantization-aware network computes with clipped weights, and a clipped weight gets no gradient
    (LSQ's straight-through estimator), so it keeps whatever value it had when QAT began, often far outside the
    range the learned step ends at. The float twin must hold the weights the network learned with, minus
    the rounding: with the stale values an fp32 export of a fine-tuned QAT model scored 55 % where the model
    scored 76 % (Fashion-MNIST MBConv child, 2026-12)."""
    from pluto.decisions.bits.choice import bn_fold_factor

    moved = 0
    for name, choice in bit_choices(qmodel).items():
        bits = choice.chosen_bits
        if bits > 8 or str(bits) not in choice.weight_quantizers:
            continue
        weight = qmodel.get_submodule(name).parametrizations.weight.original
        quantizer = choice.weight_quantizers[str(bits)]
        shape = [1] * weight.dim()
        shape[quantizer.axis if quantizer.per_channel else 0] = -1
        step, zero = (t.to(weight).reshape(shape if quantizer.per_channel else ())
                      for t in quantizer.scale_and_zero_point())
        out_channels = [1] * weight.dim()
        out_channels[0] = -1  # BN scales the output channels
        factor = bn_fold_factor(choice.bn).to(weight).reshape(out_channels) if choice.bn is not None \
            else torch.ones((), dtype=weight.dtype)
        factor = torch.where(factor.abs() < 1e-12, torch.full_like(factor, 1e-12), factor)
        folded = weight * factor
        clipped = torch.maximum(torch.minimum(folded, (quantizer.qmax - zero) * step), (quantizer.qmin - zero) * step)
        outside = clipped != folded
        moved += int(outside.sum())
        weight.copy_(torch.where(outside, clipped / factor, weight))  # in-range weights keep their exact values
    return moved


def export_onnx(qmodel: nn.Module, example_input: Tensor, path: str | os.PathLike, int8: bool = True,
                opset: int = DEFAULT_OPSET, weight_type: str | None = None) -> Path:
    """Write ``qmodel`` to ``path`` as ONNX (batch dimension dynamic); returns the path.

    ``int8=True``: the quantized model as QDQ ONNX (needs a model from ``prepare_qat`` / ``ptq``
    that has been calibrated or trained), plus the per-layer report ``<path stem>.json``.
    ``int8=False``: the float model (quantizers stripped, BN folded).
    ``weight_type``: ``'s8'`` (int8 weights, U8S8 kernels) or ``'u8'`` (uint8, U8U8); None: the one exact
    and fastest on this CPU (:func:`pluto.cost.machine.int8_weight_type`; env ``PLUTO_INT8_WEIGHTS``).
    The choice and the CPU it was made for are recorded in the JSON report.
    """
    from pluto.cost.machine import INT8_KERNELS, describe, has_vnni, int8_weight_type

    path = Path(path)
    example_input = example_input.detach().cpu()
    if int8:
        weight_type = int8_weight_type(weight_type)
        model, report = to_qdq_model(qmodel.cpu(), weight_type)
        _export(model, example_input, path, opset)
        layers = [r.as_dict() for r in report]
        meta = {"format": "onnx-qdq", "opset": opset, "int8_weights": weight_type,
                "int8_kernels": INT8_KERNELS[weight_type],
                "int8_weights_chosen_for": f"{describe()}, VNNI/AMX: {has_vnni()}", "layers": layers,
                "simulated_layers": [r["name"] for r in layers if r["simulated"]],
                "int8_kernel_layers": sum(r["kernel"] == "int8" for r in layers)}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    else:
        _export(float_export_model(qmodel.cpu()), example_input, path, opset)
    return path


def weights_to_uint8(path: str | os.PathLike, out: str | os.PathLike | None = None) -> int:
    """Rewrite a QDQ file's int8 weights as uint8 with zero point shifted by 128 (same values); returns layers changed.

    Why: onnxruntime's U8S8 int8 kernels saturate int16 partial sums on x86 CPUs without VNNI (AVX2
    only), silently costing accuracy; U8U8 kernels do not. pluto exports uint8 weights on such CPUs
    (:func:`pluto.cost.machine.int8_weight_type`); this fixes files written on a VNNI machine, before, or
    by tools that use int8 weights (e.g. ``quantize_static`` defaults), for deployment on an AVX2-only CPU.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    produced = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def value(name: str) -> np.ndarray | None:
        while name not in inits and name in produced and produced[name].op_type == "Identity":
            name = produced[name].input[0]
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = produced.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    changed = 0
    for node in list(graph.node):
        if len(node.input) < 3 or node.input[0] not in inits:
            continue
        zp = value(node.input[2])
        if zp is None or zp.dtype != np.int8:
            continue
        new_zp = f"{node.input[0]}_zero_point_u8"
        graph.initializer.append(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), new_zp))
        if node.op_type == "QuantizeLinear":  # float weight -> Q -> DQ (pluto, torch exporter)
            node.input[2] = new_zp
            for dq in consumers.get(node.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    dq.input[2] = new_zp
            changed += 1
        elif node.op_type == "DequantizeLinear" and inits[node.input[0]].data_type == TensorProto.INT8:
            w = numpy_helper.to_array(inits[node.input[0]]).astype(np.int16) + 128
            inits[node.input[0]].CopyFrom(numpy_helper.from_array(w.astype(np.uint8), node.input[0]))
            node.input[2] = new_zp
            changed += 1
    if changed:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        for init in [i for i in graph.initializer if i.name not in used]:  # the replaced int8 zero points
            graph.initializer.remove(init)
        onnx.save(model, str(out or path))
    return changed


def onnx_session(path: str | os.PathLike, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads and all graph optimizations (QDQ fusion)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ConfigError(f"ONNX file {path} does not exist; export it first (pluto export ...)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, x: Tensor | np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of ``x`` from an onnxruntime session, in batches."""
    x = x.detach().cpu().numpy() if isinstance(x, Tensor) else x
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


class OnnxModel(nn.Module):
    """An exported file run by onnxruntime behind an ``nn.Module`` forward (CPU, float32 in and out), so a task's
    ``evaluate`` scores the deployed file exactly as it scores the PyTorch model."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        super().__init__()
        self.path, self.session = Path(path), onnx_session(path, threads)

    def forward(self, x: Tensor) -> Tensor:
        return torch.from_numpy(run_onnx(self.session, x)).to(x.device)


@torch.no_grad()
def onnx_parity(model: nn.Module, onnx_path: str | os.PathLike, task, loader, input_shape: tuple[int, ...],
                out_dir: str | os.PathLike) -> dict[str, float]:
    """The task metric of the deployed ONNX file(s) on ``loader``, and their largest output difference from ``model``.

    A quantization-aware ``model`` is exported beside ``onnx_path`` as fp32 too (``model_fp32.onnx``: quantizers
    stripped, BN folded), so both deployments are scored. Keys: ``onnx_<fp32|int8>_<metric>`` and
    ``onnx_<fp32|int8>_max_abs_diff`` on the first batch, against ``model`` (int8: differs by rounding only) and
    its float twin (fp32).
    """
    model = model.cpu().eval()
    files = {"int8" if bit_choices(model) else "fp32": (Path(onnx_path), model)}
    if bit_choices(model):
        path = export_onnx(model, torch.zeros(*input_shape), Path(out_dir) / "model_fp32.onnx", int8=False)
        files["fp32"] = (path, float_export_model(model))
    x = next(iter(loader))[0].cpu()
    out: dict[str, float] = {}
    for precision, (path, reference) in files.items():
        deployed = OnnxModel(path)
        out[f"onnx_{precision}_{task.metric}"] = float(task.evaluate(deployed, loader, "cpu")[task.metric])
        out[f"onnx_{precision}_max_abs_diff"] = float((deployed(x) - reference(x)).abs().max())
    return out


def optimized_op_types(path: str | os.PathLike) -> dict[str, int]:
    """Count of each op type in the graph onnxruntime actually runs (after QDQ fusion), e.g. ``{'QLinearConv': 6}``."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
