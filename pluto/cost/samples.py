"""Concrete networks drawn from the spaces the tables cover, for calibration and fidelity checks.

- ``MBConvNet``: a MobileNetV2-style network of inverted-residual blocks, each with its own
  kernel, expansion and (pruned) width; ``random_mbconv`` samples one from an ``MBConvSpace``
  (kernels 3/5/7, expansions 3/4/6, skip-to-shrink depth, widths pruned down to ``min_width``).
- ``PrunedResNet``: ResNet-18's topology (stride-1 3x3 stem, no max-pool, as the registry adapts
  it for small inputs) with per-stage output widths and per-block inner widths, i.e. what aligned
  channel pruning of resnet18 produces; ``random_resnet`` samples one.
These are plain ``nn.Module`` s of Conv2d/BatchNorm2d/ReLU(6)/Linear, traceable by torch.fx and
exportable to ONNX, so measured and predicted costs refer to exactly the same graph.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from torch import Tensor, nn


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU6):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> kxk depthwise (stride) -> 1x1 project, residual add when shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int, hidden: int):
        super().__init__()
        self.expand = conv_bn(cin, hidden, 1) if hidden != cin else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = conv_bn(hidden, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


@dataclass(frozen=True)
class BlockChoice:
    cin: int
    cout: int
    stride: int
    kernel: int
    hidden: int


class MBConvNet(nn.Module):
    """stem conv -> inverted residual blocks -> 1x1 head conv -> global pool -> linear classifier."""

    def __init__(self, stem: int, blocks: list[BlockChoice], head: int, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(in_channels, stem, 3)
        self.blocks = nn.Sequential(*[InvertedResidual(b.cin, b.cout, b.stride, b.kernel, b.hidden) for b in blocks])
        last = blocks[-1].cout if blocks else stem
        self.head = conv_bn(last, head, 1) if head else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head or last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.classifier(x.flatten(1))


@dataclass
class MBConvSpace:
    """The MobileNetV2-style NAS space: stages of (width, max depth, stride), kernel and expansion choices."""

    in_channels: int = 1
    input_size: int = 28
    stem: int = 16
    stages: list[tuple[int, int, int]] = field(default_factory=lambda: [(24, 2, 2), (32, 3, 2), (64, 3, 2), (96, 2, 1)])
    kernels: tuple[int, ...] = (3, 5, 7)
    expansions: tuple[int, ...] = (3, 4, 6)
    head: int = 256
    min_width: float = 0.25

    @classmethod
    def from_dict(cls, data: dict) -> "MBConvSpace":
        data = dict(data)
        if "stages" in data:
            data["stages"] = [tuple(s) if not isinstance(s, dict) else (s["width"], s["depth"], s.get("stride", 1))
                              for s in data["stages"]]
        for key in ("kernels", "expansions"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def max_blocks(self) -> list[BlockChoice]:
        """Every (position, kernel, expansion) block at full width: what the profiler must cover."""
        out, cin = [], self.stem
        for width, depth, stride in self.stages:
            for i in range(depth):
                for k in self.kernels:
                    for e in self.expansions:
                        out.append(BlockChoice(cin, width, stride if i == 0 else 1, k, cin * e))
                cin = width
        return out


def _prune(rng: random.Random, width: int, min_width: float, align: int = 1) -> int:
    """A random kept width in [min_width * width, width], rounded to a multiple of ``align``."""
    kept = width * rng.uniform(min_width, 1.0)
    return min(width, max(align, int(round(kept / align)) * align)) if align > 1 else max(1, int(round(kept)))


def random_mbconv(rng: random.Random, space: MBConvSpace, prune: bool = True, align: int = 1) -> MBConvNet:
    """A random subnet: per block kernel and expansion, stage depth in [1, max], widths pruned (to ``align``)."""
    stem = _prune(rng, space.stem, space.min_width, align) if prune else space.stem
    blocks, cin = [], stem
    for width, depth, stride in space.stages:
        out = _prune(rng, width, space.min_width, align) if prune else width
        for i in range(rng.randint(1, depth)):
            e, k = rng.choice(space.expansions), rng.choice(space.kernels)
            hidden = cin * e
            if prune:
                hidden = _prune(rng, hidden, space.min_width, align)
            blocks.append(BlockChoice(cin, out, stride if i == 0 else 1, k, hidden))
            cin = out
    head = _prune(rng, space.head, space.min_width, align) if prune and space.head else space.head
    return MBConvNet(stem, blocks, head, space.in_channels)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, mid, 3, stride, act=nn.ReLU)
        self.conv2 = conv_bn(mid, cout, 3, act=None)
        self.downsample = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.downsample(x))


class PrunedResNet(nn.Module):
    """ResNet-18 for small inputs with ``widths`` per stage (4) and ``inner`` widths per block (8)."""

    def __init__(self, widths: list[int], inner: list[int], in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(in_channels, widths[0], 3, act=nn.ReLU)
        blocks, cin = [], widths[0]
        for s, width in enumerate(widths):
            for i in range(2):
                blocks.append(BasicBlock(cin, inner[2 * s + i], width, 2 if (s > 0 and i == 0) else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


RESNET18_WIDTHS = (64, 128, 256, 512)


def random_resnet(rng: random.Random, in_channels: int = 1, min_width: float = 0.25, align: int = 1) -> PrunedResNet:
    """ResNet-18 with each stage width and each block's inner width kept at a random fraction in [min_width, 1].

    About 30% are uniformly width-scaled (one fraction for all layers), the rest pruned layer by layer."""
    uniform = rng.random() < 0.3
    scale = rng.uniform(min_width, 1.0)
    fixed = lambda w: max(align, int(round(w * scale / align)) * align)  # noqa: E731
    widths = [fixed(w) if uniform else _prune(rng, w, min_width, align) for w in RESNET18_WIDTHS]
    inner = [fixed(w) if uniform else _prune(rng, w, min_width, align) for w in RESNET18_WIDTHS for _ in (0, 1)]
    return PrunedResNet(widths, inner, in_channels)


class PrunedFamily:
    """Random physically pruned variants of one model, pruned by pluto's own pruner (the graph is built once).

    Each dependency-graph group keeps a random fraction in [min_width, 1] of its channels (one fraction
    for all groups in ~30 % of the draws: uniform width scaling), rounded to multiples of ``align``:
    what compressed members of a model family look like to a latency table."""

    def __init__(self, name: str, input_shape: tuple[int, ...], num_classes: int = 10):
        import torch

        from pluto.decisions.channels import DependencyGraph
        from pluto.models import create_model

        self.name, self.input_shape = name, tuple(input_shape[-3:])
        self.model = create_model(name, num_classes, self.input_shape[0], self.input_shape[-1]).eval()
        self.graph = DependencyGraph.build(self.model, torch.zeros(1, *self.input_shape))

    def sample(self, rng: random.Random, min_width: float = 0.25, align: int = 1,
               uniform: bool | None = None) -> nn.Module:
        import torch

        from pluto.materialize.prune import prune_channels

        uniform = rng.random() < 0.3 if uniform is None else uniform
        scale = rng.uniform(min_width, 1.0)
        keep = torch.zeros(self.graph.num_channels, dtype=torch.bool)
        for group in self.graph.groups:
            frac = scale if uniform else rng.uniform(min_width, 1.0)
            k = max(1, int(round(group.size * frac)))
            if align > 1 and group.size >= align:
                k = min(group.size, max(align, int(round(k / align)) * align))
            chosen = rng.sample(range(group.size), min(k, group.size))
            keep[[group.offset + i for i in chosen]] = True
        return prune_channels(self.model, self.graph, keep).eval()
