"""The soft decisions of one compression run, attached to one model, and their hard resolution.

Three kinds, each optional: op choices (the model is a NAS supernet), channel gates (pruning,
aligned through the dependency graph), bit-width choices (mixed-precision QAT). This module
attaches them, tells the optimizer which parameters are decisions, feeds the cost model, and
turns them into a concrete smaller model (`harden`), in an order that a resumed run repeats
exactly.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pluto.decisions.channels import ChannelGates, DependencyGraph, attach_gates
from pluto.decisions.ops.supernet import Supernet
from pluto.optimizer.constraints import Constraint
from pluto.optimizer.cost_model import CostModel, precision_key


@dataclass
class Decisions:
    model: nn.Module
    supernet: Supernet | None = None
    gates: ChannelGates | None = None
    quantized: bool = False
    bits: tuple[int, ...] = ()
    trail: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> list[nn.Parameter]:
        """Decision logits (op choice, channel keep, bit-width): trained by their own optimizer."""
        params: list[nn.Parameter] = []
        if self.supernet is not None:
            params += list(self.supernet.arch_parameters())
        if self.gates is not None:
            params += list(self.gates.parameters())
        if self.quantized:
            from pluto.decisions.bits import bit_logits as bit_parameters

            params += list(bit_parameters(self.model))
        return params

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.parameters()}
        return [p for p in self.model.parameters() if id(p) not in ids]

    def channels(self) -> dict[str, tuple[Tensor, Tensor]] | None:
        return self.gates.expected_channels() if self.gates is not None else None

    def precisions(self) -> dict[str, dict[str, Tensor]] | None:
        if not self.quantized:
            return None
        from pluto.decisions.bits import bit_probabilities

        probs = bit_probabilities(self.model)
        return {name: {precision_key(int(b)) if str(b).isdigit() else b: p for b, p in choice.items()}
                for name, choice in probs.items()}

    def logs(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.gates is not None:
            for gid, p in self.gates.keep_probabilities().items():
                out[f"widths/group{gid}"] = float(p.detach().sum())
        if self.quantized:
            from pluto.decisions.bits import expected_bits

            for name, b in expected_bits(self.model).items():
                out[f"bits/{name}"] = float(b.detach())
        if self.supernet is not None:
            for name, p in self.supernet.choice_probabilities().items():
                out[f"ops/{name}/entropy"] = float(-(p * p.clamp_min(1e-9).log()).sum())
        return out


def attach(model: nn.Module, example: Tensor, prune: bool, quantize: bool, bits: tuple[int, ...],
           gate_init_keep: float = 0.95, calibration: Tensor | None = None, gate_mode: str = "ste",
           gate_init: str = "none", gate_init_spread: float = 2.0) -> Decisions:
    """Attach the decisions in a fixed order (gates first, then quantizers) so hooks compose the same way each time.

    ``gate_init``: ``'none'`` starts every gate at ``gate_init_keep``; an importance criterion (``'l1'``,
    ``'l2'``, ``'bn'``) ranks each group's gates by the (warmed-up) weights, see :meth:`ChannelGates.rank_by`.
    """
    supernet = model if isinstance(model, Supernet) else None
    gates = None
    if prune and supernet is None:
        graph = DependencyGraph.build(model, example)
        gates = attach_gates(model, graph, init_keep=gate_init_keep)
        if gate_init != "none":
            from pluto.decisions.channels.importance import channel_importance

            gates.rank_by(channel_importance(model, graph, gate_init), gate_init_spread)
        # 'ste': the forward pass drops channels whose p < 0.5 while gradients flow through p. Soft masks are
        # invisible to the task loss when a BatchNorm follows the masked conv (it re-normalizes the scale away),
        # so with them only the cost gradient would move the gates.
        gates.set_mode(gate_mode)
    if quantize:
        from pluto.decisions.bits import prepare_qat

        model = prepare_qat(model, bits=tuple(bits), example_input=example, calibrate=calibration) or model
    return Decisions(model, supernet, gates, quantize, tuple(bits))


def gate_counts(gates: ChannelGates) -> dict[int, float]:
    """Channels each group keeps before projection: the hard count in 'ste'/'hard' mode (what the network trained
    with), else the expected count ``sum p`` (the soft relaxation the Lagrangian priced)."""
    probs = gates.keep_probabilities()
    if gates.mode in ("ste", "hard"):
        return {gid: float(k.sum()) for gid, k in gates.hard().items()}
    return {gid: float(p.detach().sum()) for gid, p in probs.items()}


def round_gates(gates: ChannelGates, counts: dict[int, float], probs: dict[int, Tensor], scale: float = 1.0) -> None:
    """Fix each group to its ``round(scale * count)`` most probable channels (at least one)."""
    keep = []
    for group, (gid, p) in zip(gates.graph.groups, probs.items()):
        k = max(1, min(group.size, int(round(scale * counts[gid]))))
        mask = torch.zeros(group.size, dtype=torch.bool)
        mask[torch.topk(p.detach().cpu(), k).indices] = True
        keep.append(mask)
    if keep:
        gates.set_keep(torch.cat(keep))


def hard_channels(gates: ChannelGates) -> dict[str, tuple[Tensor, Tensor]]:
    """Channel counts each op will have after materialize (the hard keep decision, not probabilities)."""
    keep = gates.hard_flat().cpu().to(torch.float64)
    ext = torch.cat([keep, torch.ones(1, dtype=keep.dtype)])
    n = gates.graph.num_channels
    return {name: (ext[torch.where(i < 0, n, i).cpu()].sum(), ext[torch.where(o < 0, n, o).cpu()].sum())
            for name, (i, o) in gates.graph.node_channels.items()}


def violated(decisions: Decisions, cost_model: CostModel, constraints: list[Constraint]) -> list[Constraint]:
    """Constraints whose predicted cost under the current *hard* decisions exceeds the target."""
    with torch.no_grad():
        channels = hard_channels(decisions.gates) if decisions.gates is not None else None
        precisions = decisions.precisions()
        return [c for c in constraints if float(cost_model.expected(c.metric, channels, precisions)) > c.target]


def project_to_budget(decisions: Decisions, cost_model: CostModel, constraints: list[Constraint]) -> dict[str, Any]:
    """Make the *hard* decisions meet every target as predicted by the table.

    Expected cost can meet a budget while its rounding does not. Op choices: while a constraint is
    violated, switch the block to the cheaper candidate the search rated most probable. Channels:
    round expected widths, and if that is over budget shrink every group by the largest common
    factor (bisection) that fits. Returns what was changed, for the run's trail.
    """
    notes: dict[str, Any] = {}
    sn = decisions.supernet
    if sn is not None:
        from pluto.decisions.ops.cost import block_costs

        probs = {k: v.detach() for k, v in sn.choice_probabilities().items()}
        sn.fix_architecture(sn.architecture())
        switches = []
        while bad := violated(decisions, cost_model, constraints):
            metric = bad[0].metric
            table = cost_model.table if metric in ("latency_ms", "energy_mj") else None
            _, deltas = block_costs(sn, table, cost_model.input_shape, metric,
                                    default_precision=cost_model.default_precision)
            blocks, arch, best = sn.choice_blocks(), sn.architecture(), None
            for name, d in deltas.items():
                current = blocks[name].names.index(arch[name])
                for j in range(len(d)):
                    if float(d[j]) < float(d[current]) - 1e-12 and (best is None or probs[name][j] > best[0]):
                        best = (float(probs[name][j]), name, blocks[name].names[j])
            if best is None:
                break
            sn.fix_architecture({best[1]: best[2]})
            switches.append(f"{best[1]}->{best[2]}")
        if switches:
            notes["op_switches_to_fit_budget"] = switches
    gates = decisions.gates
    if gates is not None:
        probs = {k: v.detach().clone().cpu() for k, v in gates.keep_probabilities().items()}
        counts = gate_counts(gates)
        round_gates(gates, counts, probs)
        if violated(decisions, cost_model, constraints):
            lo, hi = 0.0, 1.0
            for _ in range(16):
                mid = (lo + hi) / 2
                round_gates(gates, counts, probs, mid)
                lo, hi = (lo, mid) if violated(decisions, cost_model, constraints) else (mid, hi)
            round_gates(gates, counts, probs, lo)
            notes["width_scale_to_fit_budget"] = lo
    remaining = violated(decisions, cost_model, constraints)
    if remaining:
        notes["still_violated"] = [str(c) for c in remaining]
    return notes


def harden(decisions: Decisions, example: Tensor, calibration: Tensor | None = None,
           cost_model: CostModel | None = None, constraints: list[Constraint] | None = None
           ) -> tuple[nn.Module, dict[str, Any]]:
    """Fix every decision and build the concrete model: derived ops, physically pruned channels, fixed bits.

    Bits are fixed first (argmax), then op choices and widths are projected onto the budget
    (:func:`project_to_budget`). Returns the new model (fake-quantized at its chosen bit-widths when
    QAT is on) and the trail of what was decided (architecture, widths, bits, projections).
    """
    model = decisions.model
    trail: dict[str, Any] = {}
    chosen_bits: dict[str, int] = {}
    if decisions.quantized:
        from pluto.decisions.bits import harden_bits

        harden_bits(model)
    if cost_model is not None and constraints:
        trail["projection"] = project_to_budget(decisions, cost_model, constraints)
    elif decisions.gates is not None:
        probs = {k: v.detach().clone().cpu() for k, v in decisions.gates.keep_probabilities().items()}
        round_gates(decisions.gates, gate_counts(decisions.gates), probs)
    if decisions.quantized:
        from pluto.decisions.bits import strip_quantization

        model, chosen_bits = strip_quantization(model)
    if decisions.supernet is not None:
        from pluto.decisions.ops.derive import derive

        supernet = model if isinstance(model, Supernet) else decisions.supernet
        trail["architecture"] = dict(supernet.architecture())
        chosen_bits = _derived_bits(chosen_bits, supernet)
        model = derive(supernet)
    if decisions.gates is not None:
        from pluto.decisions.channels import width_report
        from pluto.materialize.prune import materialize

        report = width_report(model)
        trail["widths"] = report.to_dict(orient="records")
        model = materialize(model)
    else:
        model = copy.deepcopy(model) if decisions.supernet is None else model
    if decisions.quantized:
        from pluto.decisions.bits import prepare_qat

        trail["bits"] = dict(chosen_bits)
        model = prepare_qat(model, bits=chosen_bits, example_input=example, calibrate=calibration) or model
    return model, trail


def _derived_bits(bits: dict[str, int], supernet: Supernet) -> dict[str, int]:
    """Bits of the chosen candidates, renamed: ``stages.1.0.candidates.2.dw.0`` -> ``stages.1.0.dw.0``."""
    blocks = supernet.choice_blocks()
    out = {}
    for name, b in bits.items():
        parts = name.split(".")
        if "candidates" in parts:
            i = parts.index("candidates")
            block = ".".join(parts[:i])
            if int(parts[i + 1]) != blocks[block].chosen_index():
                continue
            del parts[i:i + 2]
        out[".".join(parts)] = b
    return out
