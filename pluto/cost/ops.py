"""The ops a latency table prices: what a traced model is made of, one ``OpSpec`` per runtime unit.

A table entry is the cost of one *unit* the runtime executes: a convolution with its BatchNorm
and activation fused (as ONNX Runtime, TensorRT and CUDA graphs of cuDNN kernels execute it), a
depthwise convolution, a linear layer, a pooling, an elementwise add, and so on. ``extract_ops``
traces a model with ``torch.fx``, propagates shapes with a real (zero) input, and folds the
conv -> bn -> act chains into single ``OpSpec`` s, so the sum of entries follows what the runtime runs.

Kinds (the table's vocabulary):

========  ===========================================================  ============
kind      what                                                         channel grid
========  ===========================================================  ============
conv      dense or grouped KxK Conv2d (+ fused BN, activation)         cin x cout
dwconv    depthwise Conv2d (groups == cin == cout) (+ BN, activation)  cout
linear    nn.Linear (+ fused activation)                                cin x cout
pool      max/avg pooling (``variant``), kernel, stride                cout
gap       global average pooling (adaptive avg pool to 1, mean)        cout
add       elementwise add of two feature maps (+ fused activation)     cout
mul       elementwise / broadcast multiply (squeeze-excite scale)      cout
act       stand-alone activation                                       cout
bn        stand-alone BatchNorm (not after a conv)                     cout
concat    channel concatenation (ShuffleNet, DenseNet, Inception)      cout (output)
split     channel split / chunk into two halves                        cout (input)
shuffle   channel shuffle (view -> transpose -> view of a 5-D map)     cout
pixel_shuffle  PixelShuffle / DepthToSpace, block ``kernel`` = r:      cout (output)
          ``cout * r^2`` channels at ``hw`` -> ``cout`` at ``r * hw``
upsample  F.interpolate / nn.Upsample by ``kernel`` = scale factor     cout
          (``variant``: nearest, bilinear, bicubic)
========  ===========================================================  ============

``hw`` is the op's *input* spatial size (square assumed; non-square maps use sqrt(H*W)).
Ops that move no data on any runtime (flatten, dropout, identity, view) are not listed.
"""
from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, replace

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from pluto.errors import UnsupportedModelError

KINDS = ("conv", "dwconv", "linear", "pool", "gap", "add", "mul", "act", "bn", "concat", "split", "shuffle",
         "pixel_shuffle", "upsample")
UPSAMPLING_KINDS = ("pixel_shuffle", "upsample")  # ops whose output is ``kernel`` times larger than their input
MATRIX_KINDS = ("conv", "linear")  # priced on a cin x cout grid; the others on a 1-D channel grid

_ACT_MODULES = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.Tanh: "tanh", nn.LeakyReLU: "leakyrelu",
}
_ACT_FUNCTIONS = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
    F.silu: "silu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.gelu: "gelu", torch.tanh: "tanh",
    F.leaky_relu: "leakyrelu",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}
_PIXEL_SHUFFLE = {F.pixel_shuffle, torch.pixel_shuffle}
_INTERPOLATE = {F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest}
_FREE_FUNCTIONS = {torch.flatten, operator.getitem, getattr, torch.reshape, F.dropout, torch.squeeze,
                   torch.unsqueeze}
_FREE_METHODS = {"view", "reshape", "flatten", "size", "contiguous", "squeeze", "unsqueeze", "dim", "__getitem__",
                 "expand_as", "expand"}
_TRANSPOSES = {torch.permute, torch.transpose, "permute", "transpose"}
_SPLITS = {torch.chunk, torch.split, "chunk", "split"}
_FREE_MODULE_NAMES = {"Identity", "Dropout", "Dropout2d", "Flatten", "Unflatten", "StochasticDepth"}


@dataclass(frozen=True)
class OpSpec:
    """One runtime unit of a model, with the shape facts its cost depends on.

    ``name`` is the torch.fx name: the qualified module name for modules (``layer1.0.conv1``), the
    node name for functional ops (``add_3``); pruning and quantization decisions use the same keys.
    ``cin``/``cout`` are channel counts, ``hw`` the input spatial size in pixels, ``act`` the fused
    activation ('none' if none), ``bn`` whether a BatchNorm is folded in, ``variant`` the pooling type.
    """

    kind: str
    name: str
    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    hw: int = 1
    act: str = "none"
    bn: bool = False
    variant: str = ""
    bias: bool = False

    @property
    def hw_out(self) -> int:
        """Output spatial size in pixels, assuming 'same' padding (k // 2) as in all pluto spaces."""
        if self.kind in ("gap", "linear"):
            return 1
        if self.kind in UPSAMPLING_KINDS:
            return self.hw * self.kernel
        return max(1, math.ceil(self.hw / self.stride))

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one inference (batch 1): the analytic, chip-independent cost."""
        if self.kind in ("conv", "dwconv"):
            return self.kernel * self.kernel * (self.cin // self.groups) * self.cout * self.hw_out ** 2
        if self.kind == "linear":
            return self.cin * self.cout
        return 0

    @property
    def params(self) -> int:
        """Weights stored for this op after BN folding (weights + one bias per output channel)."""
        if self.kind in ("conv", "dwconv"):
            has_bias = self.bias or self.bn
            return self.kernel * self.kernel * (self.cin // self.groups) * self.cout + (self.cout if has_bias else 0)
        if self.kind == "linear":
            return self.cin * self.cout + (self.cout if self.bias else 0)
        if self.kind == "bn":
            return 2 * self.cout
        return 0

    def to_dict(self) -> dict:
        return asdict(self)

    def with_channels(self, cin: int, cout: int) -> "OpSpec":
        """The same op with other channel counts (depthwise ops keep cin == cout == groups)."""
        if self.kind == "dwconv":
            return replace(self, cin=cout, cout=cout, groups=cout)
        if self.kind in MATRIX_KINDS:
            groups = self.groups if self.groups > 1 and cin % self.groups == 0 and cout % self.groups == 0 else 1
            return replace(self, cin=cin, cout=cout, groups=groups)
        return replace(self, cin=cout, cout=cout)


def _hw(shape: torch.Size) -> int:
    if len(shape) < 4:
        return 1
    return int(round(math.sqrt(shape[-2] * shape[-1])))


def _meta_shape(node: torch.fx.Node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


def _act_of(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_module":
        module = modules[node.target]
        for cls, name in _ACT_MODULES.items():
            if type(module) is cls:
                return name
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        return _ACT_FUNCTIONS[node.target]
    if node.op == "call_method" and node.target in _ACT_METHODS:
        return _ACT_METHODS[node.target]
    return None


def _sole_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_free(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op in ("placeholder", "output", "get_attr"):
        return True
    if node.op == "call_module":
        return type(modules[node.target]).__name__ in _FREE_MODULE_NAMES
    if node.op == "call_function":
        return node.target in _FREE_FUNCTIONS or getattr(node.target, "__name__", "") in ("stochastic_depth", "dropout")
    if node.op == "call_method":
        return node.target in _FREE_METHODS
    return False


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` and record every node's output shape for a batch-1 zero input."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python control flow
        raise UnsupportedModelError(
            f"torch.fx cannot trace {type(model).__name__}: {exc}. Make the forward free of data-dependent "
            "control flow, or wrap the offending submodule with torch.fx.wrap / a leaf module.") from exc
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    was_training = model.training
    gm.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            ShapeProp(gm).propagate(torch.zeros(shape, device=param.device if param is not None else "cpu",
                                                dtype=param.dtype if param is not None else torch.float32))
    except Exception as exc:
        raise UnsupportedModelError(
            f"{type(model).__name__} fails on an input of shape {shape}: {exc}. Pass the input shape the model "
            "expects as (channels, height, width).") from exc
    finally:
        model.train(was_training)
    return gm


def extract_ops(model: nn.Module, input_shape: tuple[int, ...], strict: bool = True) -> list[OpSpec]:
    """Trace ``model`` (``input_shape`` = (C, H, W) or (N, C, H, W)) into the runtime units a table prices.

    Conv/linear nodes absorb a directly following BatchNorm and activation when they are that node's
    only consumer; an add absorbs a following activation (the ResNet ``relu(x + identity)``).
    ``strict``: raise ``UnsupportedModelError`` naming ops the tables have no kind for; with
    ``strict=False`` such ops are skipped (priced at zero).
    """
    gm = trace(model, input_shape)
    modules = dict(gm.named_modules())
    absorbed: set[torch.fx.Node] = set()
    ops: list[OpSpec] = []
    unknown: list[str] = []

    def absorb_tail(node: torch.fx.Node, allow_bn: bool) -> tuple[bool, str]:
        bn, act, tail = False, "none", node
        nxt = _sole_user(tail)
        if allow_bn and nxt is not None and nxt.op == "call_module" and isinstance(modules[nxt.target], nn.BatchNorm2d):
            bn, tail = True, nxt
            absorbed.add(nxt)
            nxt = _sole_user(tail)
        if nxt is not None and _act_of(nxt, modules) is not None:
            act = _act_of(nxt, modules)
            absorbed.add(nxt)
        return bn, act

    for node in gm.graph.nodes:
        if node in absorbed or _is_free(node, modules):
            continue
        out_shape = _meta_shape(node)
        in_nodes = [a for a in node.all_input_nodes if _meta_shape(a) is not None]
        in_shape = _meta_shape(in_nodes[0]) if in_nodes else None
        name = node.target if node.op == "call_module" else node.name
        module = modules.get(node.target) if node.op == "call_module" else None
        if out_shape is None or in_shape is None:
            continue
        channels = int(out_shape[1]) if len(out_shape) > 1 else 1
        hw = _hw(in_shape)
        if isinstance(module, nn.Conv2d):
            bn, act = absorb_tail(node, allow_bn=True)
            cin, cout, groups = module.in_channels, module.out_channels, module.groups
            kind = "dwconv" if groups == cin == cout and groups > 1 else "conv"
            ops.append(OpSpec(kind, name, cin, cout, module.kernel_size[0], module.stride[0], groups, hw, act, bn,
                              bias=module.bias is not None))
        elif isinstance(module, nn.Linear):
            bn, act = absorb_tail(node, allow_bn=False)
            ops.append(OpSpec("linear", name, module.in_features, module.out_features, act=act,
                              bias=module.bias is not None))
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) or (
                node.op == "call_function" and node.target in (F.max_pool2d, F.avg_pool2d)):
            variant = "max" if isinstance(module, nn.MaxPool2d) or node.target is F.max_pool2d else "avg"
            if module is not None:
                kernel, stride = module.kernel_size, module.stride
            else:
                kernel = node.args[1] if len(node.args) > 1 else node.kwargs["kernel_size"]
                stride = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride") or kernel
            kernel = kernel if isinstance(kernel, int) else kernel[0]
            stride = stride if isinstance(stride, int) else stride[0]
            ops.append(OpSpec("pool", name, channels, channels, kernel, stride, hw=hw, variant=variant))
        elif (isinstance(module, nn.AdaptiveAvgPool2d) or
              (node.op == "call_function" and node.target is F.adaptive_avg_pool2d) or
              (node.op == "call_method" and node.target == "mean") or
              (node.op == "call_function" and node.target is torch.mean)):
            ops.append(OpSpec("gap", name, channels, channels, hw=hw, variant="avg"))
        elif isinstance(module, nn.BatchNorm2d):
            bn, act = absorb_tail(node, allow_bn=False)
            ops.append(OpSpec("bn", name, channels, channels, hw=hw, act=act, bn=True))
        elif _act_of(node, modules) is not None:
            ops.append(OpSpec("act", name, channels, channels, hw=hw, act=_act_of(node, modules)))
        elif node.op in ("call_function", "call_method") and (node.target in _ADD or node.target in ("add", "add_")):
            bn, act = absorb_tail(node, allow_bn=False)
            ops.append(OpSpec("add", name, channels, channels, hw=_hw(out_shape), act=act))
        elif node.op in ("call_function", "call_method") and (node.target in _MUL or node.target in ("mul", "mul_")):
            ops.append(OpSpec("mul", name, channels, channels, hw=_hw(out_shape)))
        elif node.op == "call_function" and node.target in (torch.cat, torch.concat):
            ops.append(OpSpec("concat", name, channels, channels, hw=_hw(out_shape)))
        elif node.op in ("call_function", "call_method") and node.target in _SPLITS:
            c_in = int(in_shape[1]) if len(in_shape) > 1 else 1
            ops.append(OpSpec("split", name, c_in, c_in, hw=_hw(in_shape)))
        elif node.op in ("call_function", "call_method") and node.target in _TRANSPOSES:
            if len(in_shape) >= 5:  # a channel shuffle moves the whole map; 2-4-D transposes of tokens are views
                c_all = int(math.prod(in_shape[1:-2]))
                ops.append(OpSpec("shuffle", name, c_all, c_all, hw=_hw(in_shape)))
        elif isinstance(module, nn.PixelShuffle) or (node.op == "call_function" and node.target in _PIXEL_SHUFFLE):
            r = module.upscale_factor if module is not None else int(node.args[1] if len(node.args) > 1
                                                                      else node.kwargs["upscale_factor"])
            ops.append(OpSpec("pixel_shuffle", name, channels, channels, kernel=r, hw=hw))
        elif isinstance(module, nn.Upsample) or (node.op == "call_function" and node.target in _INTERPOLATE):
            mode = module.mode if module is not None else node.kwargs.get(
                "mode", node.args[3] if len(node.args) > 3 else "nearest")
            scale = _hw(out_shape) / max(1, hw)
            if scale != int(scale) or scale < 1:
                unknown.append(f"{name} (resize by {scale:g}: only integer upsampling is priced)")
                continue
            ops.append(OpSpec("upsample", name, channels, channels, kernel=int(scale), hw=hw, variant=str(mode)))
        else:
            unknown.append(f"{name} ({node.op} {getattr(node.target, '__name__', node.target)})")
    if unknown and strict:
        raise UnsupportedModelError(
            f"{type(model).__name__} has ops pluto's cost tables have no kind for: {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}. Supported kinds: {', '.join(KINDS)}; pass strict=False to "
            "price them at zero, or replace them with supported layers.")
    return ops


def total_macs(ops: list[OpSpec]) -> int:
    return sum(op.macs for op in ops)


def total_params(ops: list[OpSpec]) -> int:
    return sum(op.params for op in ops)
