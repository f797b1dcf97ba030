"""A differentiable choice between candidate ops (``OpChoice``, a.k.a. MixedOp) and its temperature schedule.

Each ``OpChoice`` owns one vector of architecture logits ``alpha`` (one entry per candidate).
How the block mixes its candidates is its ``mode``:

- ``"soft"``: DARTS-style mixture, ``sum_i softmax(alpha / T)_i * op_i(x)``; every candidate runs.
- ``"gumbel"``: Gumbel-softmax relaxation, ``sum_i y_i * op_i(x)`` with
  ``y = softmax((alpha + g) / T)``, ``g ~ Gumbel(0, 1)``; every candidate runs, the mixture
  approaches a one-hot sample as ``T -> 0``.
- ``"sample"``: straight-through hard Gumbel (GDAS / ProxylessNAS-like): only the sampled op
  ``k`` runs, its output is scaled by ``y_hard_k`` whose value is exactly 1 and whose gradient
  is that of the soft sample, so ``alpha`` still gets a gradient. Cheapest per step; but when a
  BatchNorm follows a block without a residual, it normalises the scale away and that block's
  ``alpha`` gets no task gradient (only the cost's): use it to train weights (SPOS), search in soft.
- ``"hard"``: only ``argmax alpha`` runs, no architecture gradient; this is what
  :func:`pluto.decisions.ops.derive` reproduces exactly.

Inside :meth:`Supernet.on_path <pluto.decisions.ops.supernet.Supernet.on_path>` every block runs
the candidate given to it alone, whatever its mode, and ``alpha`` is neither read nor changed: how
a warm-up trains chosen children (the sandwich rule) without moving the search's starting point.

Inside :meth:`Supernet.all_paths <pluto.decisions.ops.supernet.Supernet.all_paths>` every block
instead returns the plain sum of all its candidates, a forward ``torch.fx`` can trace: the union
of every architecture's data flow, which the channel dependency graph is built from.

The probabilities the cost model should weight candidates by are ``softmax(alpha / T)``
(:meth:`OpChoice.probabilities`): the expected cost of a block is ``sum_i p_i cost_i``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pluto.errors import ConfigError

MODES = ("soft", "gumbel", "sample", "hard")


class OpChoice(nn.Module):
    """Choose one of ``candidates`` (same input and output shape) through architecture logits ``alpha``.

    ``names`` label the candidates (e.g. ``mb_k3_e6``, ``skip``); ``alpha`` starts at zero,
    i.e. a uniform choice. ``temperature`` (dimensionless, > 0) sharpens (< 1) or flattens
    (> 1) the distribution; anneal it with :class:`TemperatureSchedule`.
    """

    def __init__(self, candidates: list[nn.Module], names: list[str], mode: str = "soft", temperature: float = 1.0):
        super().__init__()
        if len(candidates) != len(names) or not candidates:
            raise ConfigError(f"an OpChoice needs one name per candidate and at least one candidate, got "
                              f"{len(candidates)} candidates and {len(names)} names")
        self.candidates = nn.ModuleList(candidates)
        self.names = list(names)
        self.alpha = nn.Parameter(torch.zeros(len(candidates)))
        self.mode = mode
        self.temperature = temperature
        self.all_paths = False  # set by Supernet.all_paths (tracing the channel dependency graph)
        self.active: int | None = None  # set by Supernet.on_path: run this candidate alone, whatever the mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown OpChoice mode {mode!r}; use one of {', '.join(MODES)}")
        self._mode = mode

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not value > 0:
            raise ConfigError(f"Gumbel/softmax temperature must be > 0, got {value}")
        self._temperature = float(value)

    def probabilities(self, temperature: float | None = None) -> Tensor:
        """Differentiable candidate probabilities, in ``names`` order: ``softmax(alpha / T)``.

        ``temperature`` overrides the block's own ``T`` (e.g. price the near-final architecture
        with a low one while the forward still explores at a high one). In ``hard`` mode the
        forward runs only the argmax op, so the probabilities are its one-hot vector
        (straight-through: the value is exact, the gradient is the softmax's), which makes the
        expected cost of a fixed block its exact cost.
        """
        soft = F.softmax(self.alpha / (temperature or self.temperature), dim=0)
        if self._mode != "hard":
            return soft
        hard = F.one_hot(torch.argmax(self.alpha.detach()), len(self.names)).to(soft.dtype)
        return hard - soft.detach() + soft

    def chosen_index(self) -> int:
        """The index of the most probable candidate (ties -> first)."""
        return int(torch.argmax(self.alpha.detach()))

    @property
    def chosen(self) -> str:
        return self.names[self.chosen_index()]

    def fix(self, name: str) -> None:
        """Make ``name`` the final choice: the argmax (logits 0, +10 on ``name``) and ``hard`` mode.

        A fixed block runs only ``name`` and its probabilities are exactly one-hot; set another
        mode afterwards to search again from this choice.
        """
        if name not in self.names:
            raise ConfigError(f"{name!r} is not a candidate of this block; candidates: {', '.join(self.names)}")
        with torch.no_grad():
            self.alpha.zero_()
            self.alpha[self.names.index(name)] = 10.0
        self.mode = "hard"

    def forward(self, x: Tensor) -> Tensor:
        if self.all_paths:  # every path, unweighted: traceable, and the weights are scalars that tie no channels
            out = self.candidates[0](x)
            for op in self.candidates[1:]:
                out = out + op(x)
            return out
        if self.active is not None:
            return self.candidates[self.active](x)
        if self._mode == "hard":
            return self.candidates[self.chosen_index()](x)
        if self._mode == "sample":
            weights = F.gumbel_softmax(self.alpha, tau=self.temperature, hard=True)
            k = int(torch.argmax(weights.detach()))
            return self.candidates[k](x) * weights[k]
        if self._mode == "gumbel":
            weights = F.gumbel_softmax(self.alpha, tau=self.temperature, hard=False)
        else:
            weights = self.probabilities()
        out = weights[0] * self.candidates[0](x)
        for w, op in zip(weights[1:], self.candidates[1:]):
            out = out + w * op(x)
        return out

    def extra_repr(self) -> str:
        return f"names={self.names}, mode={self._mode!r}, temperature={self._temperature:g}"


@dataclass(frozen=True)
class TemperatureSchedule:
    """Exponential annealing of the Gumbel/softmax temperature over ``steps`` optimizer steps.

    ``T(t) = initial * (final / initial) ** min(t / steps, 1)``: it starts at ``initial``
    (soft, exploring: every candidate trained) and decays geometrically to ``final`` (close
    to one-hot, so the relaxed network approaches the derived one), then stays there.
    Defaults 5.0 -> 0.5 follow FBNet/SNAS practice. ``steps`` counts search steps, i.e.
    starting after weight warm-up.
    """

    initial: float = 5.0
    final: float = 0.5
    steps: int = 1000

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.final > 0 and self.steps > 0):
            raise ConfigError(f"temperature schedule needs initial > 0, final > 0, steps > 0; got {self}")

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0) / self.steps, 1.0)
        return self.initial * math.exp(frac * math.log(self.final / self.initial))
