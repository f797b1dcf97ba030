"""Candidate ops a choice block can pick: MBConv, ResNet basic block, or skip.

Every candidate is a plain, torch.fx-traceable ``nn.Module`` made of Conv2d + BatchNorm2d
(+ activation) so that ``pluto.cost`` can price it op by op, and so that a derived network
is an ordinary model that exports to ONNX. Names follow the field: ``mb_k5_e6`` is an
inverted residual with a 5x5 depthwise conv and expansion 6; ``basic_k3_w0.5`` a basic
block with 3x3 convs at half inner width; ``skip`` is the identity.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

SKIP = "skip"


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation; 'same' padding for odd kernels."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU6):
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(cout),
        )
        if act is not None:
            layers["act"] = act(inplace=True)
        super().__init__(layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (x ``expansion``) -> kxk depthwise (``stride``) -> 1x1 linear project.

    The residual add is used when input and output shapes agree (stride 1, cin == cout).
    Expansion 1 drops the expand conv, as in MobileNetV2's first block.
    """

    def __init__(self, cin: int, cout: int, stride: int, kernel: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvBNAct(cin, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBNAct(hidden, cout, 1, act=None)
        self.use_residual = stride == 1 and cin == cout
        self.kernel, self.expansion = kernel, expansion

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class BasicBlock(nn.Module):
    """ResNet basic block with a kernel and inner-width choice: kxk conv (``stride``) -> kxk conv, plus shortcut.

    The inner width is ``round(cout * width_multiplier)``; the shortcut is a 1x1 conv + BN
    when the shapes change, else the identity.
    """

    def __init__(self, cin: int, cout: int, stride: int, kernel: int, width_multiplier: float = 1.0):
        super().__init__()
        mid = max(1, int(round(cout * width_multiplier)))
        self.conv1 = ConvBNAct(cin, mid, kernel, stride, act=nn.ReLU)
        self.conv2 = ConvBNAct(mid, cout, kernel, 1, act=None)
        self.shortcut = ConvBNAct(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.kernel, self.width_multiplier = kernel, width_multiplier

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def candidate_names(family: str, kernels: tuple[int, ...], expansions: tuple[int, ...],
                    width_multipliers: tuple[float, ...], skippable: bool) -> list[str]:
    """The candidate names of one choice block, in a fixed order (the order of the architecture logits)."""
    if family == "mbconv":
        names = [f"mb_k{k}_e{e}" for k in kernels for e in expansions]
    else:
        names = [f"basic_k{k}_w{w:g}" for k in kernels for w in width_multipliers]
    return names + [SKIP] if skippable else names


def build_candidate(name: str, cin: int, cout: int, stride: int) -> nn.Module:
    """A fresh module for candidate ``name`` (as produced by :func:`candidate_names`)."""
    if name == SKIP:
        return nn.Identity()
    kind, k, m = name.split("_")
    if kind == "mb":
        return InvertedResidual(cin, cout, stride, int(k[1:]), int(m[1:]))
    return BasicBlock(cin, cout, stride, int(k[1:]), float(m[1:]))
