"""Stand-alone PyTorch modules that execute exactly one ``OpSpec``, for timing it in isolation.

Each unit is what the runtime runs for that op in a whole network: a convolution carries its
BatchNorm and activation (ONNX Runtime and TensorRT fold/fuse them; eager PyTorch runs them
back to back, and the unit times that too), an add takes two feature maps, a squeeze-excite
multiply takes a map and a per-channel scale, a PixelShuffle takes ``cout * r^2`` channels.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pluto.cost.ops import OpSpec
from pluto.errors import UnsupportedModelError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
    "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "tanh": nn.Tanh, "leakyrelu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    if name == "none":
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise UnsupportedModelError(f"no unit for activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class Binary(nn.Module):
    """``act(a + b)`` or ``a * b``: elementwise ops with two inputs."""

    def __init__(self, op: str, act: str = "none"):
        super().__init__()
        self.op, self.act = op, activation(act)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.act(a + b) if self.op == "add" else a * b


class Concat(nn.Module):
    """Channel concatenation of two halves (as ShuffleNet's and DenseNet's blocks join their branches)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b], dim=1)


class Split(nn.Module):
    """Channel split into two halves; the halves are added back so the runtime cannot drop the copy."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x.chunk(2, dim=1)
        return a, b


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle (2 groups): view to 5-D, swap the group axes, view back."""

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class Identity(nn.Module):
    """The empty unit: times a runtime's fixed per-call overhead, subtracted from every entry."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 0


def build_unit(op: OpSpec, batch: int = 1) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """An eval-mode module running ``op`` alone and random inputs of the right shape (batch ``batch``)."""
    c, hw = op.cout, op.hw
    if op.kind in ("conv", "dwconv"):
        groups = op.cout if op.kind == "dwconv" else op.groups
        cin = op.cout if op.kind == "dwconv" else op.cin
        layers = [nn.Conv2d(cin, op.cout, op.kernel, op.stride, op.kernel // 2, groups=groups,
                            bias=op.bias and not op.bn)]
        if op.bn:
            layers.append(nn.BatchNorm2d(op.cout))
        layers.append(activation(op.act))
        module, inputs = nn.Sequential(*layers), (torch.randn(batch, cin, hw, hw),)
    elif op.kind == "linear":
        module = nn.Sequential(nn.Linear(op.cin, op.cout, bias=op.bias), activation(op.act))
        inputs = (torch.randn(batch, op.cin),)
    elif op.kind == "pool":
        pool = nn.MaxPool2d if op.variant == "max" else nn.AvgPool2d
        module = pool(op.kernel, op.stride, op.kernel // 2 if op.kernel % 2 else 0)
        inputs = (torch.randn(batch, c, hw, hw),)
    elif op.kind == "gap":
        module, inputs = nn.Sequential(nn.AdaptiveAvgPool2d(1)), (torch.randn(batch, c, hw, hw),)
    elif op.kind == "add":
        module, inputs = Binary("add", op.act), (torch.randn(batch, c, hw, hw), torch.randn(batch, c, hw, hw))
    elif op.kind == "mul":
        module, inputs = Binary("mul"), (torch.randn(batch, c, hw, hw), torch.randn(batch, c, 1, 1))
    elif op.kind == "act":
        module, inputs = activation(op.act), (torch.randn(batch, c, hw, hw),)
    elif op.kind == "concat":
        half = max(1, c // 2)
        module, inputs = Concat(), (torch.randn(batch, half, hw, hw), torch.randn(batch, c - half, hw, hw))
    elif op.kind == "split":
        module, inputs = Split(), (torch.randn(batch, max(2, c), hw, hw),)
    elif op.kind == "shuffle":
        module, inputs = Shuffle(), (torch.randn(batch, max(2, c - c % 2), hw, hw),)
    elif op.kind == "pixel_shuffle":
        module, inputs = nn.PixelShuffle(op.kernel), (torch.randn(batch, c * op.kernel ** 2, hw, hw),)
    elif op.kind == "upsample":
        kwargs = {} if op.variant == "nearest" else {"align_corners": False}
        module, inputs = nn.Upsample(scale_factor=op.kernel, mode=op.variant, **kwargs), (torch.randn(batch, c, hw, hw),)
    elif op.kind == "bn":
        module, inputs = nn.Sequential(nn.BatchNorm2d(c), activation(op.act)), (torch.randn(batch, c, hw, hw),)
    else:
        raise UnsupportedModelError(f"no measurable unit for op kind {op.kind!r} ({op.name})")
    return module.eval(), inputs
