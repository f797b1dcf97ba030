"""Convert a QAT/PTQ model into a plain model whose quantized layers export as ONNX QuantizeLinear/DequantizeLinear.

:func:`to_qdq_model` folds each conv's BatchNorm into it for real, freezes the learned steps,
and swaps each quantized conv/linear for a :class:`QDQConv2d` / :class:`QDQLinear` that computes
``conv(DQ(Q(x)), DQ(Q(w)))`` with ``torch.fake_quantize_*`` ops, which the ONNX exporter writes as
``QuantizeLinear -> DequantizeLinear`` pairs. onnxruntime fuses ``DQ -> Conv -> Q`` into
``QLinearConv`` (real int8 kernels), so a layer runs in int8 when its output also goes through a
Q node (the next quantized layer's input, possibly behind ReLU / max-pool).

Bit-widths below 8 have no kernels in onnxruntime: 4-bit layers (W4A8, the default) are
exported as int8 kernels whose weight values lie in the 4-bit range ``[-8, 7]`` and are
**flagged simulated**: they compute exactly what the 4-bit model does, at int8 speed and with
int8 storage in the file. W4A4 layers additionally clip their input to 16 levels before an 8-bit
Q; that Clip keeps onnxruntime from fusing int8 kernels, so they run dequantized in fp32
(exact values, flagged simulated). fp16 layers are exported as fp32 kernels on fp16-rounded values (the CPU
provider has no fast fp16 conv), also flagged simulated.

Weights are written as int8 (``'s8'``, zero point 0: U8S8 kernels) or as the same values shifted into
uint8 (``'u8'``, zero point 128: U8U8 kernels), as :func:`pluto.cost.machine.int8_weight_type` picks for
the chip: U8S8 saturates int16 partial sums on x86 CPUs without VNNI, and is the fast exact kernel with
VNNI / AMX. Both compute the same values wherever they are exact.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pluto.cost.machine import int8_weight_type
from pluto.decisions.bits import bit_choices, chosen_bits, strip_quantization
from pluto.decisions.bits.folding import folded_weight_and_bias
from pluto.decisions.bits.quantizer import integer_range
from pluto.errors import ConfigError, UnsupportedModelError

# weight type -> (QuantizeLinear range, zero point): the symmetric int8 grid as int8, or shifted by 128 into uint8
ONNX_WEIGHT_GRID = {"s8": ((-128, 127), 0), "u8": ((0, 255), 128)}
ONNX_ACT_RANGE = (0, 255)  # uint8 QuantizeLinear


@dataclass
class LayerExport:
    """How one layer was exported: its trained bit-width, the kernel onnxruntime runs, and whether that is simulated."""

    name: str
    bits: int
    kernel: str  # 'int8' | 'fp32'
    simulated: bool  # True when the kernel is not the layer's precision (4-bit on int8, fp16 on fp32)
    note: str = ""
    activation_bits: int = 32

    def as_dict(self) -> dict:
        return asdict(self)


class _QDQBase(nn.Module):
    """Holds the integer-grid weight and the input quantization of one exported layer."""

    def __init__(self, weight: Tensor, bias: Tensor | None, bits: int, act_bits: int, w_step: Tensor | None,
                 in_step: Tensor | None, in_zero_point: Tensor | None, out_step: Tensor | None = None,
                 out_zero_point: Tensor | None = None, weight_type: str = "u8"):
        super().__init__()
        self.bits, self.act_bits = bits, act_bits
        self.weight_range, weight_zero_point = ONNX_WEIGHT_GRID[weight_type]
        self.quantize_output = out_step is not None and bits <= 8
        if self.quantize_output:
            self.register_buffer("out_step", out_step.detach().abs().reshape(()).float().clone())
            self.register_buffer("out_zero_point", out_zero_point.detach().round().reshape(()).to(torch.int32))
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        if bits <= 8:
            qmin, qmax = integer_range(act_bits, signed=False)
            zp = in_zero_point.detach().round().clamp(qmin, qmax).reshape(())
            s = in_step.detach().abs().reshape(())
            self.register_buffer("w_step", w_step.detach().abs().float().clone())
            self.register_buffer("w_zero_point", torch.full((weight.shape[0],), weight_zero_point, dtype=torch.int32))
            self.register_buffer("in_step", s.float().clone())
            self.register_buffer("in_zero_point", zp.to(torch.int32))
            # 4-bit activations: clip to the 16 representable levels, then an 8-bit Q reproduces them exactly
            self.in_lo, self.in_hi = float((qmin - zp) * s), float((qmax - zp) * s)

    def _qdq_input(self, x: Tensor) -> Tensor:
        if self.bits == 32:
            return x
        if self.bits == 16:
            return x.half().float()
        if self.act_bits < 8:
            x = torch.clamp(x, self.in_lo, self.in_hi)
        return torch.fake_quantize_per_tensor_affine(x, self.in_step, self.in_zero_point, *ONNX_ACT_RANGE)

    def _qdq_output(self, y: Tensor) -> Tensor:
        if not self.quantize_output:
            return y
        return torch.fake_quantize_per_tensor_affine(y, self.out_step, self.out_zero_point, *ONNX_ACT_RANGE)

    def _qdq_weight(self) -> Tensor:
        if self.bits > 8:
            return self.weight
        return torch.fake_quantize_per_channel_affine(self.weight, self.w_step, self.w_zero_point, 0,
                                                     *self.weight_range)


class QDQConv2d(_QDQBase):
    """A conv whose input and weight pass through QuantizeLinear/DequantizeLinear when exported."""

    def __init__(self, conv: nn.Conv2d, weight: Tensor, bias: Tensor | None, bits: int, **quant):
        super().__init__(weight, bias, bits, **quant)
        if conv.padding_mode != "zeros":
            raise UnsupportedModelError(f"int8 export supports zero padding only, got padding_mode={conv.padding_mode!r}; "
                                        "use padding_mode='zeros' or keep this layer in fp32 (bits 32)")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: Tensor) -> Tensor:
        return self._qdq_output(F.conv2d(self._qdq_input(x), self._qdq_weight(), self.bias, self.stride,
                                         self.padding, self.dilation, self.groups))


class QDQLinear(_QDQBase):
    """A linear layer whose input and weight pass through QuantizeLinear/DequantizeLinear when exported."""

    def forward(self, x: Tensor) -> Tensor:
        return self._qdq_output(F.linear(self._qdq_input(x), self._qdq_weight(), self.bias))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


@torch.no_grad()
def to_qdq_model(qmodel: nn.Module, weight_type: str | None = None) -> tuple[nn.Module, list[LayerExport]]:
    """A copy of ``qmodel`` (eval mode) with BN folded and quantized layers as QDQ modules, plus the per-layer report.

    Layers still undecided use their most probable bit-width (call ``harden_bits`` first to choose
    explicitly). The copy computes, in eval mode, what ``qmodel`` computes in eval mode.
    ``weight_type``: ``'s8'`` or ``'u8'`` ONNX weights; None: this chip's (:func:`int8_weight_type`).
    """
    weight_type = int8_weight_type(weight_type)
    model = copy.deepcopy(qmodel).eval()
    choices = bit_choices(model)
    if not choices:
        raise ConfigError("model has no quantized layers; run pluto.decisions.bits.ptq(model, calib_images) or "
                          "prepare_qat(...) first, or export with int8=False")
    bits = chosen_bits(model)
    layers = {}
    for name, choice in choices.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise UnsupportedModelError(f"cannot export quantized layer {name!r} of type {type(layer).__name__}; "
                                        "int8 export supports Conv2d and Linear. Keep it at 32 bits.")
        b = bits[name]
        w, bias = layer.parametrizations.weight.original, layer.bias
        if choice.bn is not None:
            w, bias = folded_weight_and_bias(w, bias, choice.bn)
        quant = {"act_bits": b, "w_step": None, "in_step": None, "in_zero_point": None, "weight_type": weight_type}
        if b <= 8:
            act_bits = choice.activation_bits[b]
            wq, iq = choice.weight_quantizers[str(b)], choice.input_quantizers[str(act_bits)]
            if not (bool(wq.initialized) and bool(iq.initialized)):
                raise ConfigError(f"layer {name!r} was never calibrated; calibrate or train the model before export")
            w = wq(w)  # values on the integer grid of the trained step
            if choice.output_quantizer is not None:
                quant["out_step"], quant["out_zero_point"] = choice.output_quantizer.scale_and_zero_point()
            quant |= {"act_bits": act_bits, "w_step": wq.scale_and_zero_point()[0], "in_step": iq.scale_and_zero_point()[0],
                     "in_zero_point": iq.scale_and_zero_point()[1]}
        elif b == 16:
            w = w.half().float()
        layers[name] = (b, w, bias, quant, choice.bn)
    bn_modules = {id(entry[4]) for entry in layers.values() if entry[4] is not None}
    strip_quantization(model)
    bn_names = [n for n, m in model.named_modules() if id(m) in bn_modules]
    report = []
    for name, (b, w, bias, quant, _) in layers.items():
        layer = model.get_submodule(name)
        cls = QDQConv2d if isinstance(layer, nn.Conv2d) else QDQLinear
        args = (layer,) if cls is QDQConv2d else ()
        _set_submodule(model, name, cls(*args, w, bias, b, **quant))
        act_bits = quant["act_bits"]
        if b == 16:
            kernel, note = "fp32", "fp16 values on fp32 kernels (simulated)"
        elif b <= 8 and act_bits < 8:
            kernel, note = "fp32", f"W{b}A{act_bits}: clipped activations block int8 fusion; dequantized fp32 kernels (simulated)"
        elif b < 8:
            kernel, note = "int8", f"W{b}A8: {b}-bit weight values on int8 kernels (simulated: int8 speed, {b}-bit size)"
        else:
            kernel, note = ("int8", "W8A8") if b == 8 else ("fp32", "")
        report.append(LayerExport(name, b, kernel, b not in (8, 32), note, act_bits))
    for bn_name in bn_names:
        _set_submodule(model, bn_name, nn.Identity())
    return model, report
