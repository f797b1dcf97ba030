"""Learnable channel gates: one logit per prunable channel, applied without touching the model's modules.

Gate choice (documented per the issue): a deterministic **sigmoid gate with a straight-through
option**. Channel ``c`` has logit ``l_c`` and keep-probability ``p_c = sigmoid(l_c / temperature)``.

- ``'soft'`` mode multiplies the channel by ``p_c`` (a smooth relaxation: weights and logits both get
  gradients; expected channel counts are ``sum p_c``),
- ``'ste'`` mode multiplies by the hard decision ``1[p_c > 0.5]`` in the forward pass but back-propagates
  through ``p_c`` (straight-through estimator, to fine-tune with the final widths),
- ``'hard'`` mode multiplies by the hard decision with no gradient: the gated model then computes exactly
  what :func:`pluto.materialize.prune.materialize` builds.

We prefer this to hard-concrete gates because the decision is deterministic (what you evaluate is what
materializes) and keep-probabilities are plain sigmoids the cost model can differentiate.

Where the mask is applied: every channel is masked where it is *consumed* (a forward pre-hook on each
Conv/Linear whose input channels are prunable multiplies its input by the mask; a LayerNorm over
prunable channels gets a forward hook that takes its statistics over the kept channels only). This is exactly
"removing the input channel" and is unaffected by BatchNorm biases, residual adds or SE scales on the
way; modules keep their names and types, so weight parametrizations and other pre-hooks (fake
quantization) coexist, and :meth:`ChannelGates.remove` restores the model.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
from torch import Tensor, nn

from pluto.decisions.channels.graph import DependencyGraph
from pluto.decisions.hooks import install, uninstall
from pluto.errors import ConfigError

GATES_ATTR = "channel_gates"  # attribute under which attach_gates registers the gates on the model
MODES = ("soft", "ste", "hard")


class _InputMask:
    """Forward pre-hook: multiply a consumer's input channels by their gate values."""

    def __init__(self, gates: "ChannelGates", buffer: str, channel_dim: int, slot: int) -> None:
        self.gates = gates
        self.buffer = buffer
        self.channel_dim = channel_dim  # 1 for conv (N, C, ...), -1 for linear (..., F)
        self.slot = slot  # this consumer's place in ChannelGates.consumer_mask

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        mask = self.gates.consumer_mask(self.slot).to(device=x.device, dtype=x.dtype)
        if self.channel_dim == 1:
            mask = mask.view(1, -1, *([1] * (x.dim() - 2)))
        return (x * mask,) + tuple(args[1:])


class _LayerNormMask:
    """Forward hook: recompute a LayerNorm's statistics over the kept channels only (weighted by the mask),
    which is what the pruned LayerNorm computes."""

    def __init__(self, gates: "ChannelGates", buffer: str, channel_dim: int, slot: int) -> None:
        self.gates = gates
        self.buffer = buffer
        self.channel_dim = channel_dim
        self.slot = slot

    def __call__(self, module: nn.LayerNorm, args: tuple, output: Tensor) -> Tensor:
        x = args[0].movedim(self.channel_dim, -1)
        mask = self.gates.consumer_mask(self.slot).to(device=x.device, dtype=x.dtype)
        count = mask.sum().clamp_min(1e-6)
        mean = (x * mask).sum(-1, keepdim=True) / count
        var = ((x - mean).pow(2) * mask).sum(-1, keepdim=True) / count
        y = (x - mean) * torch.rsqrt(var + module.eps)
        if module.weight is not None:
            y = y * module.weight
        if module.bias is not None:
            y = y + module.bias
        return y.movedim(-1, self.channel_dim)


class _ForwardScope:
    """Pre-hook and (always-called) hook on the gated model: the gates' mask is computed once per forward pass
    and shared by every consumer's hook, instead of once per consumer."""

    def __init__(self, gates: "ChannelGates") -> None:
        self.gates = gates

    def __call__(self, module: nn.Module, *args) -> None:
        self.gates._mask, self.gates._masks, self.gates._in_forward = None, None, False


class _EnterForward(_ForwardScope):
    def __call__(self, module: nn.Module, *args) -> None:
        self.gates._mask, self.gates._masks, self.gates._in_forward = None, None, True


class ChannelGates(nn.Module):
    """Per-channel gate logits for every :class:`~pluto.decisions.channels.ChannelGroup` of a graph.

    ``logits[g]`` holds group ``g``'s logits (``graph.groups[g].size`` of them). Build with
    :func:`attach_gates`.
    """

    def __init__(self, graph: DependencyGraph, init_keep: float = 0.95, temperature: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < init_keep < 1.0:
            raise ConfigError(f"init_keep={init_keep} must lie strictly between 0 and 1 (e.g. 0.95)")
        self.graph = graph
        self.temperature = temperature
        logit = math.log(init_keep / (1.0 - init_keep)) * temperature
        self.logits = nn.ParameterList([nn.Parameter(torch.full((g.size,), logit)) for g in graph.groups])
        self.mode = "soft"
        self._handles: list = []
        self._mask: Tensor | None = None  # this forward pass's extended mask (see _ForwardScope)
        self._masks: tuple[Tensor, ...] | None = None  # and every consumer's slice of it (consumer_mask)
        self._consumer_sizes: list[int] = []
        self._in_forward = False
        # index layouts, built once so a step reads the decisions in a few batched ops (see plan.segments)
        n = graph.num_channels
        self.node_names = tuple(graph.node_channels)
        rows = [torch.where(i < 0, n, i) for i, _ in graph.node_channels.values()]
        rows += [torch.where(o < 0, n, o) for _, o in graph.node_channels.values()]
        width = max([1] + [r.numel() for r in rows])
        counts = torch.full((len(rows), width), n + 1, dtype=torch.long)  # n: never pruned (1), n + 1: padding (0)
        for r, idx in enumerate(rows):
            counts[r, :idx.numel()] = idx
        self.register_buffer("_count_index", counts, persistent=False)
        size = max([1] + [g.size for g in graph.groups])
        members = torch.full((len(graph.groups), size), n, dtype=torch.long)  # n: padding (-inf logit)
        for k, g in enumerate(graph.groups):
            members[k, :g.size] = torch.arange(g.offset, g.offset + g.size)
        self.register_buffer("_group_members", members, persistent=False)

    # -- probabilities and masks -----------------------------------------------------------
    def flat_probabilities(self) -> Tensor:
        """Keep-probability of every prunable channel, in graph order (length ``graph.num_channels``)."""
        if not len(self.logits):
            return torch.zeros(0)
        return torch.sigmoid(torch.cat(list(self.logits)) / self.temperature)

    def hard_flat(self) -> Tensor:
        """The keep decision (bool per channel): ``p > 0.5``, at least one channel per group (its largest logit:
        the first of equal ones). Computed for all groups at once, without reading a value on the host."""
        if not len(self.logits):
            return torch.zeros(0, dtype=torch.bool)
        flat = torch.cat([lg.detach() for lg in self.logits])
        keep = flat > 0
        padded = torch.cat([flat, flat.new_full((1,), -math.inf)])[self._group_members]
        empty = ~(padded > 0).any(dim=1)
        first = self._group_members.gather(1, padded.argmax(dim=1, keepdim=True)).squeeze(1)
        rescue = torch.zeros_like(keep)
        rescue[first] = empty
        return keep | rescue

    def flat_mask(self) -> Tensor:
        """The multiplicative mask the current mode applies (see module docstring)."""
        p = self.flat_probabilities()
        if self.mode == "soft":
            return p
        hard = self.hard_flat().to(p.dtype).to(p.device)
        if self.mode == "ste":
            return hard + p - p.detach()
        return hard

    def extended_mask(self) -> Tensor:
        """:meth:`flat_mask` with a trailing 1 so that index -1 (never-pruned positions) reads 1."""
        m = self.flat_mask()
        return torch.cat([m, torch.ones(1, dtype=m.dtype, device=m.device)])

    def forward_mask(self) -> Tensor:
        """:meth:`extended_mask`, computed once per forward pass of the gated model (its consumers share it)."""
        if self._mask is None:
            mask = self.extended_mask()
            if self._in_forward:
                self._mask = mask
            return mask
        return self._mask

    def consumer_mask(self, slot: int) -> Tensor:
        """The input-channel mask of consumer ``slot`` (a gated conv/linear/LayerNorm). Every consumer's mask is
        gathered from :meth:`forward_mask` in one op per forward pass and split into views, so the backward
        scatters them back in one op too (instead of one gather, one scatter and one add per consumer)."""
        masks = self._masks
        if masks is None:
            masks = self.forward_mask()[self._consumer_index].split(self._consumer_sizes)
            if self._in_forward:
                self._masks = masks
        return masks[slot]

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ConfigError(f"gate mode {mode!r} is not one of {MODES}")
        self.mode = mode

    def hard(self) -> dict[int, Tensor]:
        """Group id -> bool keep decision per channel (what materialize keeps)."""
        flat = self.hard_flat()
        return {g.id: flat[g.offset:g.offset + g.size] for g in self.graph.groups}

    def set_keep(self, keep: Tensor, margin: float = 6.0) -> None:
        """Set the logits so the hard decision equals ``keep`` (bool, flat): +margin kept, -margin removed."""
        if keep.numel() != self.graph.num_channels:
            raise ConfigError(f"keep has {keep.numel()} entries; the graph has {self.graph.num_channels} channels")
        with torch.no_grad():
            for g, logit in zip(self.graph.groups, self.logits):
                k = keep[g.offset:g.offset + g.size].to(logit.device)
                logit.copy_(torch.where(k, margin, -margin) * self.temperature)

    def rank_by(self, score: Tensor, spread: float = 2.0) -> None:
        """Spread each group's logits by channel importance, keeping the group's mean logit.

        Why: every channel of a group sees the same cost gradient, so from equal logits the search
        can only tell channels apart through the (noisy) task gradient and whole groups collapse at
        once. Ranked logits (least important ``-spread``, most ``+spread`` around the mean) make the
        search remove the least important channels first, as magnitude pruning would, while the task
        loss can still reorder them.
        """
        if score.numel() != self.graph.num_channels:
            raise ConfigError(f"score has {score.numel()} entries; the graph has {self.graph.num_channels} channels")
        if spread < 0:
            raise ConfigError(f"gate_init_spread={spread} must be >= 0")
        with torch.no_grad():
            for g, logit in zip(self.graph.groups, self.logits):
                if g.size < 2:
                    continue
                ranks = score[g.offset:g.offset + g.size].argsort().argsort().to(logit.dtype)
                centred = ranks / (g.size - 1) * 2.0 - 1.0  # least important -1 ... most important +1
                logit.add_((spread * centred * self.temperature).to(logit.device))

    # -- what the cost model and the optimizer read -----------------------------------------
    def keep_probabilities(self) -> dict[int, Tensor]:
        """Group id -> keep-probability per channel (``.sum()`` is the group's expected channel count)."""
        p = self.flat_probabilities()
        return {g.id: p[g.offset:g.offset + g.size] for g in self.graph.groups}

    def expected_channels(self) -> dict[str, tuple[Tensor, Tensor]]:
        """torch.fx op name -> (expected in-channels, expected out-channels), differentiable 0-dim tensors.

        Keys are ``node.target`` for modules (e.g. ``'layer1.0.conv1'``) and ``node.name`` for functions
        and methods (e.g. ``'add_1'``) of ``torch.fx.symbolic_trace(model)``. For a Linear after a flatten
        the counts are features (channels x spatial positions), as the layer sees them.

        In ``'ste'``/``'hard'`` mode the counts are the channels the forward pass keeps (``p > 0.5``) with
        the gradient of ``p`` (straight-through), so the search prices the network it trains and the
        hard decision meets the budget the Lagrangian enforced; ``'soft'`` mode counts ``sum p``.
        """
        names, cin, cout = self.channel_counts()
        return dict(zip(names, zip(cin.unbind(), cout.unbind())))

    def channel_counts(self) -> tuple[tuple[str, ...], Tensor, Tensor]:
        """:meth:`expected_channels` as vectors: ``(node names, expected in-channels, expected out-channels)``,
        in a handful of batched ops (what the cost model's plan reads each search step)."""
        p = self.flat_mask() if self.mode in ("ste", "hard") else self.flat_probabilities()
        ext = torch.cat([p, torch.ones(1, dtype=p.dtype, device=p.device), torch.zeros(1, dtype=p.dtype,
                                                                                        device=p.device)])
        counts = ext[self._count_index].sum(dim=1)
        n = len(self.node_names)
        return self.node_names, counts[:n], counts[n:]

    def gated_counts(self) -> tuple[Tensor, Tensor]:
        """Per node of :meth:`channel_counts`: whether its (in, out) count has a prunable channel at all (a
        classifier's outputs, the input image's channels have none: their counts are constants)."""
        gated = (self._count_index < self.graph.num_channels).any(dim=1)
        n = len(self.node_names)
        return gated[:n], gated[n:]

    def expected_macs(self) -> Tensor:
        """Expected MACs per sample of the example input under the keep-probabilities (differentiable)."""
        p = self.flat_probabilities()
        ext = torch.cat([p, torch.ones(1, dtype=p.dtype, device=p.device)])
        n = self.graph.num_channels
        total = torch.tensor(self.graph.other_macs, dtype=p.dtype, device=p.device)
        for layer in self.graph.layers.values():
            if layer.kind not in ("conv", "linear"):
                continue
            fin = ext[torch.where(layer.in_index < 0, n, layer.in_index).to(ext.device)].mean()
            fout = ext[torch.where(layer.out_index < 0, n, layer.out_index).to(ext.device)].mean()
            if layer.groups > 1 and layer.in_index.numel() == layer.groups:
                fin = torch.ones_like(fin)
            total = total + layer.macs * fin * fout
        return total

    def sparsity_loss(self) -> Tensor:
        """Mean keep-probability over all prunable channels (0..1): a simple width penalty."""
        p = self.flat_probabilities()
        return p.mean() if p.numel() else torch.zeros(())

    # -- attaching / removing -----------------------------------------------------------------
    def _attach(self, model: nn.Module) -> None:
        n = self.graph.num_channels
        scope = _ForwardScope(self)
        self._handles.append(model.register_forward_pre_hook(_EnterForward(self)))
        self._handles.append(model.register_forward_hook(scope, always_call=True))
        indices = []
        for k, layer in enumerate(self.graph.layers.values()):
            if layer.kind not in ("conv", "linear", "ln") or not bool((layer.in_index >= 0).any()):
                continue
            module = model.get_submodule(layer.name)
            buffer = f"_index_{k}"
            self.register_buffer(buffer, torch.where(layer.in_index < 0, n, layer.in_index), persistent=False)
            slot = len(indices)
            indices.append(getattr(self, buffer))
            if layer.kind == "ln":
                self._handles.append(module.register_forward_hook(_LayerNormMask(self, buffer, layer.dim, slot)))
            else:
                hook = _InputMask(self, buffer, 1 if layer.kind == "conv" else -1, slot)
                self._handles.append(module.register_forward_pre_hook(hook))
        self._consumer_sizes = [i.numel() for i in indices]
        self.register_buffer("_consumer_index", torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
                             persistent=False)

    @torch.no_grad()
    def silence(self, model: nn.Module, channels: Tensor) -> int:
        """Zero what every consumer reads from ``channels`` (bool per flat channel): function-preserving growth.

        Why: with STE/hard gates, a channel the search switched off contributed nothing to any forward
        pass, so its consumers (and their BatchNorm statistics) never saw it. Switching it back on (the
        measured landing grows widths to use the latency budget) would inject untrained activations;
        zeroing the consumers' input weights of those channels keeps the network computing exactly what
        the search trained (Net2Net's function-preserving widening) while the channels exist on the chip
        and fine-tuning can put them to use. Returns the number of consumer weight slices zeroed.
        """
        flat = channels.to(torch.bool).cpu()
        if flat.numel() != self.graph.num_channels:
            raise ConfigError(f"channels has {flat.numel()} entries; the graph has {self.graph.num_channels}")
        flat = torch.cat([flat, torch.zeros(1, dtype=torch.bool)])  # index n: never-pruned positions
        zeroed = 0
        for k, layer in enumerate(self.graph.layers.values()):
            if layer.kind not in ("conv", "linear") or not bool((layer.in_index >= 0).any()):
                continue
            index = torch.where(layer.in_index < 0, self.graph.num_channels, layer.in_index).cpu()
            positions = torch.nonzero(flat[index]).flatten().tolist()
            if not positions:
                continue
            module = model.get_submodule(layer.name)
            parametrized = getattr(module, "parametrizations", None)  # QAT: the stored weight is the original
            weight = parametrized.weight.original if parametrized is not None and "weight" in parametrized \
                else module.weight
            if layer.kind == "linear":
                weight[:, positions] = 0
            else:
                groups = getattr(module, "groups", 1)
                per_group_in = weight.shape[1]
                per_group_out = weight.shape[0] // groups
                for pos in positions:
                    g = pos // per_group_in
                    weight[g * per_group_out:(g + 1) * per_group_out, pos % per_group_in] = 0
            zeroed += len(positions)
        return zeroed

    def remove(self) -> None:
        """Detach the gates: remove every hook (the model computes as before attach_gates)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def attach_gates(model: nn.Module, graph: DependencyGraph, init_keep: float = 0.95, temperature: float = 1.0) -> ChannelGates:
    """Add channel gates to ``model`` in place and return them.

    Existing modules are neither renamed nor replaced: the gates are forward pre-hooks plus one new
    submodule, ``model.channel_gates`` (so ``model.parameters()``, ``.to()`` and ``state_dict`` include the
    logits). Attaching twice replaces the previous gates.
    """
    old = getattr(model, GATES_ATTR, None)
    if isinstance(old, ChannelGates):
        detach_gates(model)
    gates = ChannelGates(graph, init_keep, temperature)
    gates._attach(model)
    return install(model, GATES_ATTR, gates)


def detach_gates(model: nn.Module) -> None:
    """Remove gates added by :func:`attach_gates` (hooks and the ``channel_gates`` submodule; also hooks carried over
    by copy.deepcopy)."""
    uninstall(model, GATES_ATTR, ChannelGates, (_InputMask, _LayerNormMask, _ForwardScope))


def find_gates(model_or_gates: nn.Module) -> ChannelGates:
    if isinstance(model_or_gates, ChannelGates):
        return model_or_gates
    gates = getattr(model_or_gates, GATES_ATTR, None)
    if not isinstance(gates, ChannelGates):
        raise ConfigError(f"{type(model_or_gates).__name__} has no channel gates; call "
                          f"pluto.decisions.channels.attach_gates(model, graph) first")
    return gates


def width_report(model_or_gates: nn.Module) -> pd.DataFrame:
    """One row per channel group: its layers, channels before, kept (hard decision) and expected (soft)."""
    gates = find_gates(model_or_gates)
    hard = gates.hard()
    probs = gates.keep_probabilities()
    rows = []
    for g in gates.graph.groups:
        rows.append({
            "group": g.id,
            "layers": ", ".join(g.producers),
            "channels_before": g.size,
            "channels_after": int(hard[g.id].sum()),
            "expected_channels": float(probs[g.id].detach().sum()),
        })
    return pd.DataFrame(rows, columns=["group", "layers", "channels_before", "channels_after", "expected_channels"])
