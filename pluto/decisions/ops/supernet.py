"""The supernet: stem -> stages of ``OpChoice`` blocks -> head, built from a :class:`SpaceConfig`.

Module names are stable and readable: ``stem``, ``stages.<stage>.<block>`` (each an
``OpChoice`` whose candidates are ``stages.<s>.<b>.candidates.<i>``) and ``head``.
:func:`pluto.decisions.ops.derive` keeps the same names, with each choice block replaced
by its chosen op, so a derived network lines up with the supernet it came from.

Architecture parameters (the logits ``alpha`` of every choice) and weights are kept
apart, because NAS trains them with different optimizers (usually Adam on ``alpha`` with
weight decay 0, SGD on weights) and often on different data splits.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from pluto.decisions.ops.candidates import ConvBNAct, build_candidate, candidate_names
from pluto.decisions.ops.choice import OpChoice
from pluto.decisions.ops.config import SpaceConfig, space_config
from pluto.errors import ConfigError


def conv_out(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded odd-kernel conv with ``stride`` (pixels)."""
    return (size - 1) // stride + 1


def build_stem(config: SpaceConfig) -> nn.Module:
    act = nn.ReLU6 if config.family == "mbconv" else nn.ReLU
    return ConvBNAct(config.in_channels, config.stem_width, 3, 1, act=act)


def build_head(config: SpaceConfig) -> nn.Sequential:
    """Optional 1x1 conv to ``head_width``, global average pool, dropout, linear classifier."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = config.stages[-1].width
    if config.head_width:
        act = nn.ReLU6 if config.family == "mbconv" else nn.ReLU
        layers["conv"] = ConvBNAct(width, config.head_width, 1, act=act)
        width = config.head_width
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["dropout"] = nn.Dropout(config.dropout)
    layers["fc"] = nn.Linear(width, config.num_classes)
    return nn.Sequential(layers)


class Supernet(nn.Module):
    """All architectures of a search space in one network, with a differentiable choice per block.

    ``block_inputs[name]`` is the batch-1 NCHW input shape of choice block ``name`` and
    ``block_specs[name]`` its ``(cin, cout, stride)``; the first block of a stage changes
    shape (so it cannot be skipped unless stride 1 and equal widths), later blocks keep it.
    """

    def __init__(self, config: SpaceConfig | Mapping[str, Any] | str | None = None, mode: str = "soft",
                 temperature: float = 1.0):
        super().__init__()
        self.config = space_config(config)
        cfg = self.config
        self.stem = build_stem(cfg)
        self.block_inputs: dict[str, tuple[int, int, int, int]] = {}
        self.block_specs: dict[str, tuple[int, int, int]] = {}
        cin, size = cfg.stem_width, cfg.input_size
        stages = []
        for s, stage in enumerate(cfg.stages):
            blocks = []
            for b in range(stage.depth):
                stride = stage.stride if b == 0 else 1
                name = f"stages.{s}.{b}"
                self.block_inputs[name] = (1, cin, size, size)
                self.block_specs[name] = (cin, stage.width, stride)
                skippable = cfg.allow_skip and stride == 1 and cin == stage.width
                names = candidate_names(cfg.family, cfg.kernels, cfg.expansions, cfg.width_multipliers, skippable)
                blocks.append(OpChoice([build_candidate(n, cin, stage.width, stride) for n in names], names,
                                       mode, temperature))
                cin, size = stage.width, conv_out(size, stride)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = build_head(cfg)
        self.head_input = (1, cin, size, size)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))

    def choice_blocks(self) -> dict[str, OpChoice]:
        """Choice-block name -> ``OpChoice``, in network order."""
        return {name: m for name, m in self.named_modules() if isinstance(m, OpChoice)}

    def choice_probabilities(self, temperature: float | None = None) -> dict[str, Tensor]:
        """Choice-block name -> differentiable probabilities over its candidates (``softmax(alpha / T)``).

        ``temperature`` overrides each block's current ``T`` (see ``OpChoice.probabilities``).
        """
        return {name: block.probabilities(temperature) for name, block in self.choice_blocks().items()}

    def architecture(self) -> dict[str, str]:
        """Choice-block name -> name of its current argmax candidate."""
        return {name: block.chosen for name, block in self.choice_blocks().items()}

    def fix_architecture(self, choices: Mapping[str, str]) -> None:
        """Fix each named block to a candidate (argmax and ``hard`` mode, see ``OpChoice.fix``); others unchanged."""
        blocks = self.choice_blocks()
        unknown = set(choices) - set(blocks)
        if unknown:
            raise ConfigError(f"unknown choice blocks {sorted(unknown)}; this supernet has {list(blocks)}")
        for name, candidate in choices.items():
            blocks[name].fix(candidate)

    def random_architecture(self, generator: torch.Generator | None = None) -> dict[str, str]:
        """A uniformly random architecture (block -> candidate), e.g. for cost-model fidelity checks."""
        out = {}
        for name, block in self.choice_blocks().items():
            out[name] = block.names[int(torch.randint(len(block.names), (), generator=generator))]
        return out

    def largest_architecture(self) -> dict[str, str]:
        """Choice-block name -> its candidate with the most weights (ties: the first), the space's biggest child:
        the self-distillation teacher of a supernet (BigNAS/OFA's sandwich rule)."""
        out = {}
        for name, block in self.choice_blocks().items():
            sizes = [sum(p.numel() for p in op.parameters()) for op in block.candidates]
            out[name] = block.names[sizes.index(max(sizes))]
        return out

    def smallest_architecture(self) -> dict[str, str]:
        """Choice-block name -> its candidate with the fewest weights (``skip`` has none; ties: the first), the
        space's smallest child: the lower slice of the sandwich rule."""
        out = {}
        for name, block in self.choice_blocks().items():
            sizes = [sum(p.numel() for p in op.parameters()) for op in block.candidates]
            out[name] = block.names[sizes.index(min(sizes))]
        return out

    @contextmanager
    def on_path(self, choices: Mapping[str, str]) -> Iterator["Supernet"]:
        """Within this context every choice block runs the candidate ``choices`` names for it, alone (a child of
        the space, trained in place with the supernet's weights); ``alpha`` and the modes stay as they are."""
        blocks = self.choice_blocks()
        if set(choices) != set(blocks):
            raise ConfigError(f"a path names one candidate per choice block; missing {sorted(set(blocks) - set(choices))}, "
                              f"unknown {sorted(set(choices) - set(blocks))}")
        for name, block in blocks.items():
            if choices[name] not in block.names:
                raise ConfigError(f"{choices[name]!r} is not a candidate of {name}; candidates: {', '.join(block.names)}")
        try:
            for name, block in blocks.items():
                block.active = block.names.index(choices[name])
            yield self
        finally:
            for block in blocks.values():
                block.active = None

    @contextmanager
    def in_mode(self, mode: str) -> Iterator["Supernet"]:
        """Every choice block in ``mode`` within this context, each back in its own mode afterwards
        (e.g. ``soft`` to calibrate the quantizers of every candidate, which ``sample`` would leave unseen)."""
        previous = {name: block.mode for name, block in self.choice_blocks().items()}
        self.set_mode(mode)
        try:
            yield self
        finally:
            for name, block in self.choice_blocks().items():
                block.mode = previous[name]

    @contextmanager
    def all_paths(self) -> Iterator["Supernet"]:
        """Within this context every choice block returns the plain sum of all its candidates.

        ``torch.fx`` can trace that forward, and its graph holds every architecture's data flow at
        once: each block's output channels are tied to every candidate's last conv and, through
        ``skip`` and the residual adds, to its input, and each candidate's inner (expansion) channels
        to its own convs. That is the graph channel pruning needs
        (:meth:`pluto.decisions.channels.DependencyGraph.build`); it is no network to train.
        """
        blocks = list(self.choice_blocks().values())
        for block in blocks:
            block.all_paths = True
        try:
            yield self
        finally:
            for block in blocks:
                block.all_paths = False

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits ``alpha`` of every choice block."""
        return [block.alpha for block in self.choice_blocks().values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an architecture logit (convs, BN affine, classifier)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def set_mode(self, mode: str) -> None:
        """Set how every choice block mixes its candidates: soft, gumbel, sample or hard."""
        for block in self.choice_blocks().values():
            block.mode = mode

    def set_temperature(self, temperature: float) -> None:
        for block in self.choice_blocks().values():
            block.temperature = temperature

    @torch.no_grad()
    def entropy(self) -> dict[str, float]:
        """Choice-block name -> entropy of its probabilities (nats); near 0 means the choice has converged."""
        out = {}
        for name, p in self.choice_probabilities().items():
            out[name] = float(-(p * p.clamp_min(1e-12).log()).sum())
        return out
