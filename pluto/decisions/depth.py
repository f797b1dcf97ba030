"""Depth decisions: a learned keep gate per residual block whose shortcut is the identity.

Why: on a CPU at batch 1 a small network's latency is set by how many ops run, not by how wide
they are. ResNet-20 at 1x28x28 on onnxruntime (1 thread, Intel Xeon AMX, 2026-12-07): int8 at full
width 0.30 ms, at a quarter of every width 0.21 ms (0.70x), but ResNet-8 (one block per stage) at
full width 0.12 ms (0.40x). Width decisions alone cannot reach what dropping blocks reaches; a
latency table with a per-op term prices exactly that.

A block ``M`` is skippable when, in ``torch.fx``'s trace, it computes ``act(x + branch(x))`` (or
``x + branch(x)``): one residual add inside ``M`` whose one operand is ``M``'s input itself, whose
other operand is a module of ``M`` (the *branch end*, e.g. ``layers.4.bn2``), and nothing else of
``M`` is used outside it. Skipping ``M`` replaces it by an identity, or by its post-add activation
where that can change ``x`` (a ReLU after a ReLU cannot): exactly what ``act(x + 0 * branch(x))``
computes. Blocks with a projection shortcut (a stride or a
width change) are kept.

:class:`BlockGates` mirrors the channel gates (:mod:`pluto.decisions.channels.gates`): one logit per
block, keep-probability ``sigmoid(logit / T)``, ``'ste'`` multiplies the branch by the hard decision
(``p > 0.5``) in the forward pass with the gradient of ``p``; ``'hard'`` computes exactly what
:func:`skip_blocks` builds. The cost model reads :meth:`BlockGates.presence`: each op of a block is
priced times the block's keep value, so its entry, its per-op overhead and its activation traffic
leave the expected cost together.
"""
from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pluto.decisions.hooks import install, uninstall
from pluto.errors import ConfigError

BLOCK_GATES_ATTR = "block_gates"  # attribute under which attach_block_gates registers the gates on the model
SKIPPED_ATTR = "pluto_skipped_blocks"  # on a model whose blocks were skipped: {block: replacement class name}
MODES = ("soft", "ste", "hard")
_ADDS = (operator.add, operator.iadd, torch.add)
_REPLACEMENTS = {"Identity": nn.Identity, "ReLU": nn.ReLU, "ReLU6": nn.ReLU6, "Hardtanh": nn.Hardtanh,
                 "SiLU": nn.SiLU, "GELU": nn.GELU, "Hardswish": nn.Hardswish}


@dataclass(frozen=True)
class SkipSite:
    """One skippable block: its module, the module whose output is its residual branch, the activation after
    the add (kept when the block is skipped; None: the add is the block's output) and the names of the cost ops
    (:func:`pluto.cost.ops.extract_ops`) that vanish with it."""

    block: str
    branch_end: str
    activation: str | None
    ops: tuple[str, ...]


def _stack(node) -> list[str]:
    return [v[0] if isinstance(v, tuple) else k for k, v in (node.meta.get("nn_module_stack") or {}).items()]


def skippable_blocks(model: nn.Module) -> list[SkipSite]:
    """Every block of ``model`` that :func:`skip_blocks` can remove (see the module docstring), in execution order."""
    from pluto.decisions.channels.labels import trace

    gm = trace(model)
    nodes = list(gm.graph.nodes)
    sites: list[SkipSite] = []
    for node in nodes:
        if node.op != "call_function" or node.target not in _ADDS or len(node.args) < 2:
            continue
        stack = _stack(node)
        if not stack:
            continue
        block = stack[-1]

        def inside(n, block=block) -> bool:
            if not hasattr(n, "op") or n.op in ("placeholder", "output", "get_attr"):
                return False
            if n.op == "call_module" and str(n.target).startswith(block + "."):
                return True
            return block in _stack(n)

        a, b = node.args[0], node.args[1]
        if not (hasattr(a, "op") and hasattr(b, "op")):
            continue
        outside = [x for x in (a, b) if not inside(x)]
        within = [x for x in (a, b) if inside(x)]
        if len(outside) != 1 or len(within) != 1 or within[0].op != "call_module":
            continue
        members = [n for n in nodes if inside(n)]
        entries = {x for n in members for x in n.all_input_nodes if not inside(x)}
        if entries != set(outside):
            continue
        out = node
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and inside(users[0]) and \
                isinstance(gm.get_submodule(users[0].target), tuple(_REPLACEMENTS.values())):
            out = users[0]
        exits = [n for n in members if any(not inside(u) for u in n.users)]
        if exits != [out]:
            continue
        activation = str(out.target) if out is not node else None
        if activation is not None and isinstance(gm.get_submodule(activation), _CLAMPS_AT_ZERO) \
                and _non_negative(gm, outside[0]):
            activation = None  # relu(x) of a non-negative x is x: the skipped block is an identity, nothing runs
        ops = tuple(str(n.target) if n.op == "call_module" else n.name for n in members
                    if n is not out or activation is None)  # a kept post-add activation stays; the add goes
        sites.append(SkipSite(block, str(within[0].target), activation, ops))
    return sites


_CLAMPS_AT_ZERO = (nn.ReLU, nn.ReLU6)


def _non_negative(gm, node, depth: int = 0) -> bool:
    """Whether ``node``'s output is >= 0 by construction: a ReLU / ReLU6, or max pooling / identity of one."""
    if depth > 8 or not hasattr(node, "op"):
        return False
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, _CLAMPS_AT_ZERO):
            return True
        if isinstance(module, (nn.MaxPool2d, nn.Identity)) and node.all_input_nodes:
            return _non_negative(gm, node.all_input_nodes[0], depth + 1)
        return False
    if node.op == "call_function" and getattr(node.target, "__name__", "") in ("relu", "relu6", "max_pool2d"):
        return getattr(node.target, "__name__", "") != "max_pool2d" or _non_negative(gm, node.args[0], depth + 1)
    return False


class _BranchScale:
    """Forward hook on a block's branch end: multiply the branch by the block's keep value."""

    def __init__(self, gates: "BlockGates", index: int) -> None:
        self.gates = gates
        self.index = index

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        z = self.gates.mask()[self.index]
        return output * z.to(device=output.device, dtype=output.dtype)


class BlockGates(nn.Module):
    """One keep logit per :class:`SkipSite`; see the module docstring."""

    def __init__(self, sites: list[SkipSite], init_keep: float = 0.95, temperature: float = 1.0) -> None:
        super().__init__()
        if not sites:
            raise ConfigError("no skippable residual block: depth decisions need a block computing act(x + branch(x))"
                              " with an identity shortcut (set compress.depth=false for this model)")
        if not 0.0 < init_keep < 1.0:
            raise ConfigError(f"init_keep={init_keep} must lie strictly between 0 and 1 (e.g. 0.95)")
        self.sites = tuple(sites)
        self.temperature = temperature
        self.logits = nn.Parameter(torch.full((len(sites),), math.log(init_keep / (1.0 - init_keep)) * temperature))
        self.mode = "ste"
        self._handles: list = []

    def probabilities(self) -> Tensor:
        return torch.sigmoid(self.logits / self.temperature)

    def hard(self) -> Tensor:
        """Keep decision per block (bool): ``p > 0.5``."""
        return self.logits.detach() > 0

    def mask(self) -> Tensor:
        """What the forward pass multiplies each branch by, and what the cost model prices each block's ops by."""
        p = self.probabilities()
        if self.mode == "soft":
            return p
        hard = self.hard().to(p.dtype)
        return hard + p - p.detach() if self.mode == "ste" else hard

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ConfigError(f"block gate mode {mode!r} is not one of {MODES}")
        self.mode = mode

    def set_keep(self, keep: Tensor, margin: float = 6.0) -> None:
        with torch.no_grad():
            self.logits.copy_(torch.where(keep.to(torch.bool).to(self.logits.device), margin, -margin)
                              * self.temperature)

    def rank_by(self, score: Tensor, spread: float = 1.0) -> None:
        """Spread the logits by block importance around their mean (least important ``-spread``, most
        ``+spread``), as :meth:`pluto.decisions.channels.gates.ChannelGates.rank_by` does for channels: blocks
        whose branch adds least to the residual stream are the first the cost pushes out."""
        if score.numel() != len(self.sites):
            raise ConfigError(f"score has {score.numel()} entries; there are {len(self.sites)} blocks")
        if len(self.sites) < 2 or spread == 0:
            return
        ranks = score.argsort().argsort().to(self.logits.dtype)
        centred = ranks / (len(self.sites) - 1) * 2.0 - 1.0
        with torch.no_grad():
            self.logits.add_((spread * centred * self.temperature).to(self.logits.device))

    def skipped(self) -> list[str]:
        return [s.block for s, k in zip(self.sites, self.hard().tolist()) if not k]

    def presence(self, hard: bool = False) -> "OpPresence":
        """Each block's ops and the probability that they run: the forward's keep value, or (``hard``) the hard
        decision as float64 without a gradient (what the concrete model builds)."""
        probs = self.hard().to(torch.float64) if hard else self.mask()
        return OpPresence(tuple(s.ops for s in self.sites), probs)

    def _attach(self, model: nn.Module) -> None:
        for i, s in enumerate(self.sites):
            self._handles.append(model.get_submodule(s.branch_end).register_forward_hook(_BranchScale(self, i)))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass(frozen=True)
class OpPresence:
    """Probability that each op is executed: ``ops[k]`` (cost-op names) are present with ``probs[k]``; any other op
    always. :class:`pluto.cost.plan.CostPlan` reads it as one vector; ``as_weights`` is the mapping form."""

    ops: tuple[tuple[str, ...], ...]
    probs: Tensor

    def as_weights(self) -> dict[str, Tensor]:
        return {name: self.probs[k] for k, names in enumerate(self.ops) for name in names}


@torch.no_grad()
def branch_ratios(model: nn.Module, sites: list[SkipSite], images: Tensor) -> Tensor:
    """Per block, ``||branch(x)|| / ||x||`` on ``images`` (eval mode): how much the block changes the residual
    stream (Veit et al. 2016: residual networks degrade gracefully when such blocks are dropped)."""
    seen: dict[int, list[float]] = {}
    handles = []
    for i, s in enumerate(sites):
        def pre(module, args, i=i):
            seen.setdefault(i, [0.0, 0.0])[1] += float(args[0].float().norm())

        def post(module, args, output, i=i):
            seen.setdefault(i, [0.0, 0.0])[0] += float(output.float().norm())

        handles.append(model.get_submodule(s.block).register_forward_pre_hook(pre))
        handles.append(model.get_submodule(s.branch_end).register_forward_hook(post))
    was = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return torch.tensor([seen[i][0] / max(seen[i][1], 1e-12) if i in seen else 0.0 for i in range(len(sites))])


def attach_block_gates(model: nn.Module, sites: list[SkipSite] | None = None, init_keep: float = 0.95,
                       temperature: float = 1.0) -> BlockGates:
    """Add depth decisions to ``model`` in place (forward hooks plus the submodule ``model.block_gates``, so the
    logits are in ``parameters()`` and ``state_dict``); ``sites`` default to :func:`skippable_blocks`."""
    detach_block_gates(model)
    gates = BlockGates(skippable_blocks(model) if sites is None else sites, init_keep, temperature)
    gates._attach(model)
    return install(model, BLOCK_GATES_ATTR, gates)


def detach_block_gates(model: nn.Module) -> None:
    """Remove what :func:`attach_block_gates` added (also hooks carried over by ``copy.deepcopy``)."""
    uninstall(model, BLOCK_GATES_ATTR, BlockGates, (_BranchScale,))


def skip_blocks(model: nn.Module, sites: list[SkipSite], skipped: list[str]) -> nn.Module:
    """Replace every block named in ``skipped`` by its post-add activation (a copy) or an identity, in place;
    the model records what it replaced (``pluto_skipped_blocks``) so :func:`pluto.load` rebuilds it."""
    by_block = {s.block: s for s in sites}
    record = dict(getattr(model, SKIPPED_ATTR, {}) or {})
    for name in skipped:
        if name not in by_block:
            raise ConfigError(f"{name!r} is not a skippable block of this model; skippable: "
                              f"{', '.join(by_block) or 'none'}")
        site = by_block[name]
        new = copy.deepcopy(model.get_submodule(site.activation)) if site.activation else nn.Identity()
        replace_module(model, name, new)
        record[name] = type(new).__name__
    if record:
        setattr(model, SKIPPED_ATTR, record)
    return model


def uniform_order(sites: list[SkipSite]) -> list[str]:
    """The order in which a uniformly shallower network drops blocks: runs of consecutive skippable blocks
    (``layers.0-2``, ``layers.4-5``, ...: a stage's identity blocks) each lose their last block in turn, as
    ResNet-20 -> 14 -> 8 does (one block per stage per step)."""
    runs: list[list[str]] = []
    for site in sites:
        parent, _, index = site.block.rpartition(".")
        if runs and index.isdigit():
            p_parent, _, p_index = runs[-1][-1].rpartition(".")
            if p_parent == parent and p_index.isdigit() and int(p_index) + 1 == int(index):
                runs[-1].append(site.block)
                continue
        runs.append([site.block])
    order: list[str] = []
    while any(runs):
        for run in runs:
            if run:
                order.append(run.pop())
    return order


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def restore_skipped(model: nn.Module, record: dict[str, str]) -> nn.Module:
    """Apply a saved ``pluto_skipped_blocks`` record to a freshly built model (see :mod:`pluto.materialize.saving`)."""
    for name, kind in record.items():
        if kind not in _REPLACEMENTS:
            raise ConfigError(f"saved model replaced block {name!r} by {kind!r}, which pluto cannot rebuild; "
                              f"known: {', '.join(_REPLACEMENTS)}")
        replace_module(model, name, _REPLACEMENTS[kind]())
    if record:
        setattr(model, SKIPPED_ATTR, dict(record))
    return model


__all__ = ["SkipSite", "BlockGates", "OpPresence", "skippable_blocks", "branch_ratios", "attach_block_gates", "detach_block_gates",
           "skip_blocks", "restore_skipped", "uniform_order", "BLOCK_GATES_ATTR", "SKIPPED_ATTR"]
