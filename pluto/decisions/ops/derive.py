"""From supernet to a plain network: keep only the chosen op of every choice block.

The derived network (:class:`ChildNet`) has the same module names as the supernet
(``stem``, ``stages.<s>.<b>``, ``head``) with each ``OpChoice`` replaced by a copy of its
chosen candidate (``nn.Identity`` for ``skip``), and the same weights, so its output equals
the supernet's in ``hard`` mode. It contains no architecture logits and traces with
torch.fx, so the cost model, the pruner and the ONNX exporter treat it like any model.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from pluto.decisions.ops.candidates import build_candidate, candidate_names
from pluto.decisions.ops.config import SpaceConfig, space_config
from pluto.decisions.ops.supernet import Supernet, build_head, build_stem
from pluto.errors import ConfigError


class ChildNet(nn.Module):
    """One architecture of a search space: stem -> stages -> head.

    ``architecture`` maps each block name to the chosen candidate (e.g. ``mb_k5_e6``), the
    trail of what NAS decided; ``config`` is the space it came from.
    """

    def __init__(self, stem: nn.Module, stages: nn.Sequential, head: nn.Module, architecture: dict[str, str],
                 config: SpaceConfig):
        super().__init__()
        self.stem, self.stages, self.head = stem, stages, head
        self.architecture = dict(architecture)
        self.config = config

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))

    def extra_repr(self) -> str:
        return f"architecture={self.architecture}"


def derive(supernet: Supernet, choices: Mapping[str, str] | None = None) -> ChildNet:
    """A new network with only the chosen ops of ``supernet`` (argmax of ``alpha`` unless ``choices`` given).

    Weights are copied, so fine-tuning the result leaves the supernet untouched.
    """
    blocks = supernet.choice_blocks()
    choices = dict(choices) if choices is not None else supernet.architecture()
    missing = set(blocks) - set(choices)
    if missing:
        raise ConfigError(f"no choice given for blocks {sorted(missing)}; pass a choice for every block "
                          f"(see Supernet.architecture())")
    stages = nn.Sequential()
    for s, stage in enumerate(supernet.stages):
        kept = nn.Sequential()
        for b in range(len(stage)):
            name = f"stages.{s}.{b}"
            block = blocks[name]
            if choices[name] not in block.names:
                raise ConfigError(f"{choices[name]!r} is not a candidate of {name}; candidates: {', '.join(block.names)}")
            kept.append(copy.deepcopy(block.candidates[block.names.index(choices[name])]))
        stages.append(kept)
    return ChildNet(copy.deepcopy(supernet.stem), stages, copy.deepcopy(supernet.head), choices, supernet.config)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Tensor, batch_size: int = 128) -> nn.Module:
    """Recompute every BatchNorm's running statistics of ``model`` from ``images`` (in place; returns it).

    A child derived from a supernet trained on sampled paths (SPOS) carries statistics that each
    candidate collected behind *other* paths, often too few of them: in eval mode it can score at
    chance although its weights are trained. Its own statistics (a cumulative average over
    ``images``, as SPOS does before evaluating a child) fix that.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size].to(device))
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    return model.train(was_training)


def build_child(config: SpaceConfig | Mapping[str, Any] | str | None, architecture: Mapping[str, str]) -> ChildNet:
    """A freshly initialised :class:`ChildNet` for ``architecture``, without building the supernet.

    Use it to load a derived checkpoint: ``build_child(cfg, arch).load_state_dict(state)``.
    """
    cfg = space_config(config)
    specs = _block_specs(cfg)
    unknown = set(architecture) - set(specs)
    missing = set(specs) - set(architecture)
    if unknown or missing:
        raise ConfigError(f"architecture does not match the space: unknown blocks {sorted(unknown)}, "
                          f"missing blocks {sorted(missing)}")
    stages = nn.Sequential()
    for s, stage in enumerate(cfg.stages):
        kept = nn.Sequential()
        for b in range(stage.depth):
            name = f"stages.{s}.{b}"
            cin, cout, stride = specs[name]
            allowed = candidate_names(cfg.family, cfg.kernels, cfg.expansions, cfg.width_multipliers,
                                      cfg.allow_skip and stride == 1 and cin == cout)
            if architecture[name] not in allowed:
                raise ConfigError(f"{architecture[name]!r} is not a candidate of {name} ({cin}->{cout} channels, "
                                  f"stride {stride}); candidates: {', '.join(allowed)}")
            kept.append(build_candidate(architecture[name], cin, cout, stride))
        stages.append(kept)
    return ChildNet(build_stem(cfg), stages, build_head(cfg), dict(architecture), cfg)


def _block_specs(cfg: SpaceConfig) -> dict[str, tuple[int, int, int]]:
    specs, cin = {}, cfg.stem_width
    for s, stage in enumerate(cfg.stages):
        for b in range(stage.depth):
            specs[f"stages.{s}.{b}"] = (cin, stage.width, stage.stride if b == 0 else 1)
            cin = stage.width
    return specs
