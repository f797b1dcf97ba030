"""The soft decisions of one compression run, attached to one model, and their hard resolution.

Three kinds, each optional: op choices (the model is a NAS supernet), channel gates (pruning,
aligned through the dependency graph), bit-width choices (mixed-precision QAT). This module
attaches them, tells the optimizer which parameters are decisions, feeds the cost model, and
turns them into a concrete smaller model (`harden`), in an order that a resumed run repeats
exactly.

NAS and pruning together: the supernet's dependency graph is traced with every candidate path
taken (:meth:`Supernet.all_paths`), so a stage's block outputs, the residual adds and every
candidate's convs share one gated group (residual-aligned), and each candidate's expansion
channels are a group of their own. Hardening prunes the supernet first (every candidate sliced
by the same gates) and then derives the chosen child, which therefore computes what the gated
supernet computes with its ops fixed.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from pluto.decisions.channels import ChannelGates, DependencyGraph, attach_gates
from pluto.decisions.channels.importance import alignment, snap_count
from pluto.decisions.depth import BlockGates, OpPresence, attach_block_gates, branch_ratios, detach_block_gates, \
    skip_blocks, skippable_blocks
from pluto.errors import ConfigError
from pluto.decisions.ops.supernet import Supernet
from pluto.optimizer.constraints import Constraint
from pluto.cost.expected import precision_key
from pluto.cost.model import CostModel
from pluto.cost.plan import ChannelCounts, PrecisionProbs


@dataclass
class Decisions:
    model: nn.Module
    supernet: Supernet | None = None
    gates: ChannelGates | None = None
    quantized: bool = False
    bits: tuple[int, ...] = ()
    blocks: BlockGates | None = None
    trail: dict[str, Any] = field(default_factory=dict)
    _choices: dict | None = field(default=None, repr=False, compare=False)
    _bit_values: dict | None = field(default=None, repr=False, compare=False)

    def parameters(self) -> list[nn.Parameter]:
        """Decision logits (op choice, channel keep, bit-width): trained by their own optimizer."""
        params: list[nn.Parameter] = []
        if self.supernet is not None:
            params += list(self.supernet.arch_parameters())
        if self.gates is not None:
            params += list(self.gates.parameters())
        if self.blocks is not None:
            params += list(self.blocks.parameters())
        if self.quantized:
            from pluto.decisions.bits import bit_logits as bit_parameters

            params += list(bit_parameters(self.model))
        return params

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.parameters()}
        return [p for p in self.model.parameters() if id(p) not in ids]

    def channels(self) -> ChannelCounts | None:
        """Expected (in, out) channels per traced node, as vectors (a mapping name -> pair as well)."""
        if self.gates is None:
            return None
        return ChannelCounts(*self.gates.channel_counts())

    def presence(self) -> OpPresence | None:
        """Depth decisions: per skippable block, the probability that its ops run (the forward's keep value)."""
        return self.blocks.presence() if self.blocks is not None else None

    def precisions(self) -> PrecisionProbs | None:
        """Probability per layer and precision key ('int4', 'int8', 'fp16', 'fp32'), as one matrix (a mapping
        name -> {key: probability} as well)."""
        if not self.quantized:
            return None
        from pluto.decisions.bits import bit_choices
        from pluto.decisions.bits.choice import stacked_probabilities

        if self._choices is None:  # the layers with a bit choice are fixed once attached
            self._choices = bit_choices(self.model)
        choices = list(self._choices.values())
        keys = tuple(tuple(precision_key(b) for b in c.candidates) for c in choices)
        return PrecisionProbs(tuple(self._choices), keys, stacked_probabilities(choices),
                              tuple(not c.is_hard for c in choices))

    def logs(self) -> dict[str, Tensor]:
        """Expected widths per channel group, expected bits per layer, op-choice entropies: detached 0-dim tensors
        on the decisions' device (the logger reads them on the host, on the steps it logs), computed without host
        data after the first call, so a logging step can be captured as a CUDA graph (:mod:`pluto.engine.graph`)."""
        out: dict[str, Tensor] = {}
        if self.gates is not None:
            for gid, p in self.gates.keep_probabilities().items():
                out[f"widths/group{gid}"] = p.detach().sum()
        if self.quantized:
            if self._choices is None:
                from pluto.decisions.bits import bit_choices

                self._choices = bit_choices(self.model)
            first = next(iter(self._choices.values()), None)
            if self._bit_values is None or (first is not None and
                                            next(iter(self._bit_values.values())).device != first.alpha.device):
                # each layer's candidate bits, made once per device (sum_b p_b * b below)
                self._bit_values = {name: torch.tensor(c.candidates, dtype=c.alpha.dtype, device=c.alpha.device)
                                    for name, c in self._choices.items()}
            for name, c in self._choices.items():
                out[f"bits/{name}"] = (c.probabilities().detach() * self._bit_values[name]).sum()
        if self.blocks is not None:
            for site, p in zip(self.blocks.sites, self.blocks.probabilities().detach().unbind()):
                out[f"depth/{site.block}"] = p
        if self.supernet is not None:
            for name, p in self.supernet.choice_probabilities().items():
                p = p.detach()
                out[f"ops/{name}/entropy"] = -(p * p.clamp_min(1e-9).log()).sum()
        return out


def attach(model: nn.Module, example: Tensor, prune: bool, quantize: bool, bits: tuple[int, ...],
           gate_init_keep: float = 0.95, calibration: Tensor | None = None, gate_mode: str = "ste",
           gate_init: str = "none", gate_init_spread: float = 2.0, depth: bool = False,
           depth_init_keep: float = 0.75, depth_init_spread: float = 1.0) -> Decisions:
    """Attach the decisions in a fixed order (gates first, then quantizers, then block gates) so hooks compose the
    same way each time.

    ``gate_init``: ``'none'`` starts every gate at ``gate_init_keep``; an importance criterion (``'l1'``,
    ``'l2'``, ``'bn'``) ranks each group's gates by the (warmed-up) weights, see :meth:`ChannelGates.rank_by`.
    ``depth``: a keep gate per residual block with an identity shortcut (:mod:`pluto.decisions.depth`), starting
    at ``depth_init_keep`` (every block kept), spread +-``depth_init_spread`` in logits by
    how much each block's branch changes the residual stream on ``calibration`` (:func:`branch_ratios`).
    """
    supernet = model if isinstance(model, Supernet) else None
    if depth and supernet is not None:
        raise ConfigError("compress.depth applies to plain residual models; a supernet chooses depth through its "
                          "'skip' candidates (set compress.depth=false)")
    sites = skippable_blocks(model) if depth else None  # traced before any hook or parametrization is attached
    ratios = branch_ratios(model, sites, calibration[:64]) if depth and sites and calibration is not None else None
    gates = None
    if prune:
        with supernet.all_paths() if supernet is not None else nullcontext():
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

        # a supernet calibrates in the soft mixture: every candidate's quantizers see data (one sampled path would not)
        with supernet.in_mode("soft") if supernet is not None else nullcontext():
            model = prepare_qat(model, bits=tuple(bits), example_input=example, calibrate=calibration) or model
    blocks = attach_block_gates(model, sites, init_keep=depth_init_keep) if depth else None
    if blocks is not None and ratios is not None:
        blocks.rank_by(ratios, depth_init_spread)
    return Decisions(model, supernet, gates, quantize, tuple(bits), blocks)


def gate_counts(gates: ChannelGates) -> dict[int, float]:
    """Channels each group keeps before projection: the hard count in 'ste'/'hard' mode (what the network trained
    with), else the expected count ``sum p`` (the soft relaxation the Lagrangian priced)."""
    probs = gates.keep_probabilities()
    if gates.mode in ("ste", "hard"):
        return {gid: float(k.sum()) for gid, k in gates.hard().items()}
    return {gid: float(p.detach().sum()) for gid, p in probs.items()}


def round_gates(gates: ChannelGates, counts: dict[int, float], probs: dict[int, Tensor], scale: float = 1.0,
                round_to: int | None = None) -> None:
    """Fix each group to its ``round(scale * count)`` most probable channels (at least one).

    ``round_to`` (e.g. a table's ``align``): the count snaps to the nearest multiple, never 0 nor above
    the group size; groups no larger than the multiple keep their size (:func:`snap_count`)."""
    multiple = alignment(round_to)
    keep = []
    for group, (gid, p) in zip(gates.graph.groups, probs.items()):
        k = snap_count(scale * counts[gid], group.size, multiple)
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
    return [c for c in constraints if float(_hard_cost(decisions, cost_model, c.metric, raw=False)) > c.target]


def project_to_budget(decisions: Decisions, cost_model: CostModel, constraints: list[Constraint],
                      round_to: int | None = None) -> dict[str, Any]:
    """Make the *hard* decisions meet every target as predicted by the table.

    Expected cost can meet a budget while its rounding does not. Op choices: while a constraint is
    violated, switch the block to the cheaper candidate the search rated most probable. Channels:
    round expected widths, and if that is over budget shrink every group by the largest common
    factor (bisection) that fits; ``round_to`` snaps every width to that multiple (:func:`round_gates`).
    Returns what was changed, for the run's trail.
    """
    notes: dict[str, Any] = {}
    sn = decisions.supernet
    if sn is not None:
        from pluto.decisions.ops.cost import block_costs

        probs = {k: v.detach() for k, v in sn.choice_probabilities().items()}
        sn.fix_architecture(sn.architecture())
        switches = []
        widths = hard_channels(decisions.gates) if decisions.gates is not None else None
        while bad := violated(decisions, cost_model, constraints):
            metric = bad[0].metric
            table = cost_model.table_for(metric)
            with torch.no_grad():
                _, deltas = block_costs(sn, table, cost_model.input_shape, metric,
                                        default_precision=cost_model.default_precision, channels=widths)
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
        round_gates(gates, counts, probs, round_to=round_to)
        if alignment(round_to) > 1:
            notes["widths_round_to"] = alignment(round_to)
        if violated(decisions, cost_model, constraints):
            if decisions.blocks is not None:
                _fit_depth_and_width(decisions, cost_model, constraints, counts, probs, round_to, notes)
            else:
                notes["width_scale_to_fit_budget"] = _width_scale(decisions, cost_model, constraints, counts, probs,
                                                                  round_to)
    elif decisions.blocks is not None and violated(decisions, cost_model, constraints):
        blocks = decisions.blocks  # depth alone: drop the lowest searched keep-probability first until it fits
        keep = blocks.hard().clone()
        dropped = []
        for i in torch.argsort(blocks.probabilities().detach().cpu()).tolist():
            if not violated(decisions, cost_model, constraints):
                break
            if keep[i]:
                keep[i] = False
                blocks.set_keep(keep)
                dropped.append(blocks.sites[i].block)
        notes["blocks_dropped_to_fit_budget"] = dropped
    remaining = violated(decisions, cost_model, constraints)
    if remaining:
        notes["still_violated"] = [str(c) for c in remaining]
    return notes


def _width_scale(decisions: Decisions, cost_model: CostModel, constraints: list[Constraint], counts, probs,
                 round_to: int | None) -> float:
    """The largest common factor of the rounded widths that meets every target (bisection), applied; 0 when none."""
    gates = decisions.gates
    lo, hi = 0.0, 1.0
    for _ in range(16):
        mid = (lo + hi) / 2
        round_gates(gates, counts, probs, mid, round_to)
        lo, hi = (lo, mid) if violated(decisions, cost_model, constraints) else (mid, hi)
    round_gates(gates, counts, probs, lo, round_to)
    return lo


def _fit_depth_and_width(decisions: Decisions, cost_model: CostModel, constraints: list[Constraint], counts, probs,
                         round_to: int | None, notes: dict[str, Any]) -> None:
    """Over budget with depth decisions: for k = 0, 1, ... more blocks dropped (the lowest searched keep-probability
    first), the widest common width factor that fits; the combination with the most MACs wins (uniform_depth's rule:
    the most compute the budget allows). A short search leaves blocks near p = 0.5 (its multiplier drops the moment a
    block's removal makes the target slack, and the task loss brings the block back): width scaling alone then shrinks
    every layer to its floor while the chip charges per block (ResNet-20, 2026-12-07: 42 k of 272 k parameters left,
    -1.4 points)."""
    blocks = decisions.blocks
    keep0 = blocks.hard().clone()
    p = blocks.probabilities().detach().cpu()
    order = [i for i in torch.argsort(p).tolist() if bool(keep0[i])]
    tried, best = [], None
    for k in range(len(order) + 1):
        keep = keep0.clone()
        keep[order[:k]] = False
        blocks.set_keep(keep)
        round_gates(decisions.gates, counts, probs, 1.0, round_to)
        scale = 1.0 if not violated(decisions, cost_model, constraints) else \
            _width_scale(decisions, cost_model, constraints, counts, probs, round_to)
        feasible = not violated(decisions, cost_model, constraints)
        macs = float(_hard_cost(decisions, cost_model, "macs")) if feasible else float("nan")
        tried.append({"dropped": [blocks.sites[i].block for i in order[:k]], "width_scale": round(scale, 4),
                      "macs": macs})
        if feasible and (best is None or macs > best[0]):
            best = (macs, k, scale)
    k = best[1] if best is not None else len(order)
    keep = keep0.clone()
    keep[order[:k]] = False
    blocks.set_keep(keep)
    scale = best[2] if best is not None else 0.0
    round_gates(decisions.gates, counts, probs, scale, round_to)
    notes.update(width_scale_to_fit_budget=scale, blocks_dropped_to_fit_budget=tried[k]["dropped"],
                 depth_width_tried=tried)


def _hard_cost(decisions: Decisions, cost_model: CostModel, metric: str, raw: bool = True) -> Tensor:
    """``metric`` of the model the current *hard* decisions describe (``raw``: the table's prediction alone)."""
    with torch.no_grad():
        presence = decisions.blocks.presence(hard=True) if decisions.blocks is not None else None
        channels = hard_channels(decisions.gates) if decisions.gates is not None else None
        return cost_model.expected(metric, channels, decisions.precisions(), raw=raw, presence=presence)


def harden(decisions: Decisions, example: Tensor, calibration: Tensor | None = None,
           cost_model: CostModel | None = None, constraints: list[Constraint] | None = None,
           round_to: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Fix every decision and build the concrete model: derived ops, physically pruned channels, fixed bits.

    Bits are fixed first (argmax), then op choices and widths are projected onto the budget
    (:func:`project_to_budget`). Returns the new model (fake-quantized at its chosen bit-widths when
    QAT is on) and the trail of what was decided (architecture, widths, bits, projections).
    ``round_to``: widths snap to that channel multiple (a table's ``align``).
    """
    fix_decisions(decisions, cost_model, constraints, round_to)
    model, trail = build_concrete(decisions, example, calibration, copy_first=False)
    if "projection" in decisions.trail:
        trail["projection"] = decisions.trail["projection"]
    return model, trail


def fix_decisions(decisions: Decisions, cost_model: CostModel | None = None,
                  constraints: list[Constraint] | None = None, round_to: int | None = None) -> None:
    """Harden bits (argmax) and project ops and widths onto the predicted budget, in place on the decisions;
    widths snap to multiples of ``round_to`` (a table's ``align``; None: no snapping)."""
    if decisions.quantized:
        from pluto.decisions.bits import harden_bits

        harden_bits(decisions.model)
    if decisions.blocks is not None and "search_block_probs" not in decisions.trail:
        decisions.trail["search_block_probs"] = {s.block: round(float(p), 4) for s, p in
                                                 zip(decisions.blocks.sites, decisions.blocks.probabilities().detach())}
    if decisions.gates is not None and "search_probs" not in decisions.trail:
        decisions.trail["search_probs"] = {k: v.detach().clone().cpu()
                                           for k, v in decisions.gates.keep_probabilities().items()}
    if cost_model is not None and constraints:
        decisions.trail["projection"] = project_to_budget(decisions, cost_model, constraints, round_to)
    elif decisions.gates is not None:
        probs = {k: v.detach().clone().cpu() for k, v in decisions.gates.keep_probabilities().items()}
        round_gates(decisions.gates, gate_counts(decisions.gates), probs, round_to=round_to)


def build_concrete(decisions: Decisions, example: Tensor, calibration: Tensor | None = None,
                   copy_first: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The concrete model the current *hard* decisions describe: derived ops, pruned channels, fixed bits.

    ``copy_first`` leaves ``decisions`` usable (candidates measured during the search and the landing
    projection); the final hardening builds in place.
    """
    model = copy.deepcopy(decisions.model) if copy_first else decisions.model
    supernet = None
    if decisions.supernet is not None:
        supernet = model if isinstance(model, Supernet) else _find_supernet(model, decisions)
    trail: dict[str, Any] = {}
    chosen_bits: dict[str, int] = {}
    if decisions.quantized:
        from pluto.decisions.bits import strip_quantization

        model, chosen_bits = strip_quantization(model)
    if decisions.gates is not None:  # a supernet is pruned before its child is derived: all candidates alike
        from pluto.decisions.channels import width_report
        from pluto.materialize.prune import materialize

        trail["widths"] = width_report(model).to_dict(orient="records")
        model = materialize(model)
        if supernet is not None:
            supernet = model if isinstance(model, Supernet) else _find_supernet(model, decisions)
    elif supernet is None and not copy_first:
        model = copy.deepcopy(model)
    if supernet is not None:
        from pluto.decisions.ops.derive import derive

        trail["architecture"] = dict(supernet.architecture())
        chosen_bits = _derived_bits(chosen_bits, supernet)
        model = derive(supernet)
    if decisions.blocks is not None:  # after the channels: a skipped block's widths were pruned like any other
        skipped = decisions.blocks.skipped()
        detach_block_gates(model)
        model = skip_blocks(model, list(decisions.blocks.sites), skipped)
        trail["skipped_blocks"] = skipped
        gone = tuple(f"{b}." for b in skipped)
        chosen_bits = {k: v for k, v in chosen_bits.items() if not k.startswith(gone)}
    if decisions.quantized:
        from pluto.decisions.bits import prepare_qat

        trail["bits"] = dict(chosen_bits)
        model = prepare_qat(model, bits=chosen_bits, example_input=example, calibrate=calibration) or model
    return model, trail


def _find_supernet(model: nn.Module, decisions: Decisions) -> Supernet:
    """The supernet inside a (deep-copied) decisions model."""
    for module in model.modules():
        if isinstance(module, Supernet):
            return module
    return decisions.supernet


def polish_precision(decisions: Decisions, constraints: list[Constraint], build: Callable[[], Any],
                     measure_models: Callable[[list[Any]], list[dict[str, float]]],
                     margin: float = 0.03) -> dict[str, Any]:
    """After hardening: move the layers the search left in a float precision to a cheaper candidate (int8, else fp16
    from fp32: a GPU search's fp16 layers among fp32 ones pay cast kernels) when the chip measures the whole model
    faster that way (by more than ``margin``), before the landing spends the budget.

    Why measured and not priced: a float layer between integer neighbours breaks the integer runtime's layout region
    (onnxruntime puts transposes and extra quantize nodes around each fp32 island), which no per-op table entry
    sees: every v2 ResNet-20 joint run kept its stem, shortcut 1x1 convs and classifier in fp32, and int8 except the
    stem measured 0.86x of that pattern while the table predicted 1.02x (2026-12-07, Intel Xeon AMX). Up to four
    patterns: as searched, every such layer at its cheaper precision, the same except the network's first layer
    (whose input is the raw image), and — when the search made the first layer integer — the cheaper pattern with
    the first layer at its widest float candidate (v5's searches made every ResNet-20 layer int8, stem included).
    ``build()`` makes the concrete model of the current hard decisions; ``measure_models(models)`` measures them
    against each other (interleaved rounds, so a shared machine's drift moves all alike: the gain is a few percent,
    the drift between separate measurements as much). Returns what was measured and decided (``decisions.json``'s
    ``precision_polish``)."""
    from pluto.decisions.bits import bit_choices

    notes: dict[str, Any] = {"margin": margin}
    table_constraints = [c for c in constraints if c.source == "table"]
    choices = bit_choices(decisions.model) if decisions.quantized else {}
    floats = {name: b for name, b in ((name, _cheaper_precision(c.candidates, c.chosen_bits))
                                      for name, c in choices.items()) if b is not None}
    first = next(iter(choices), None)  # the layer that reads the network input (bit_choices keeps module order)
    # an integer first layer may be the slow one (ResNet-20's stem reads one input channel: int8 measured slower than
    # fp32 on the AMX Xeon, 2026-12-07): try it at its widest float candidate, the others as cheap as they go
    widest = max(choices[first].candidates) if first is not None else 0
    float_first = widest if first is not None and choices[first].chosen_bits <= 8 < widest else None
    if not (floats or float_first) or not table_constraints:
        notes["skipped"] = "no measured constraint" if not table_constraints else \
            "no layer with a cheaper int8/fp16 candidate and no integer first layer with a float one"
        return notes
    searched = {name: choices[name].chosen_bits for name in [*floats, *([first] if float_first else [])]}

    def assign(bits: dict[str, int]) -> None:
        for name, b in bits.items():
            choices[name].harden(b)

    kinds = set(floats.values())
    label = "all integer" if kinds <= {8} else "all fp16" if kinds == {16} else "all int8/fp16"
    trials = [("as searched", {})]
    if floats:
        trials.append((label, dict(floats)))
    if first in floats and len(floats) > 1:
        trials.append((f"{label} except the first layer", {n: b for n, b in floats.items() if n != first}))
    if float_first:
        trials.append((f"{label}, the first layer fp{float_first}", {**floats, first: float_first}))
    models = []
    for _, bits in trials:
        assign(bits)
        models.append(build())
        assign(searched)
    measured = measure_models(models)
    notes["measurements"] = [{"trial": trial, **{k: round(v, 5) for k, v in m.items()}}
                             for (trial, _), m in zip(trials, measured)]
    ratios = [measured_ratio(m, table_constraints) for m in measured]
    best = 0  # a later (less uniform) pattern must beat the one chosen so far by the margin
    for i in range(1, len(trials)):
        if ratios[i] < ratios[best] * (1 - margin):
            best = i
    notes["chosen"] = trials[best][0]
    if best:
        assign(trials[best][1])
        notes.update(layers={n: f"{searched[n]} -> {b}" for n, b in trials[best][1].items()},
                     measured_gain=round(1 - ratios[best] / ratios[0], 4))
    return notes


def _cheaper_precision(candidates: tuple[int, ...], chosen: int) -> int | None:
    """The precision a layer left at ``chosen`` bits moves to in the polish: int8 if a candidate (from fp16/fp32),
    else fp16 (from fp32); never int4, whose accuracy cost no latency measurement can weigh."""
    for bits in (8, 16):
        if bits in candidates and chosen > bits:
            return bits
    return None


def land_on_target(decisions: Decisions, constraints: list[Constraint], measure: Callable[[], dict[str, float]],
                   band: tuple[float, float] = (0.93, 1.0), max_measurements: int = 8,
                   round_to: int | None = None) -> dict[str, Any]:
    """Grow or shrink the hard widths until every measured table metric lies in ``band`` x target.

    ``measure()`` builds and measures the model the current hard decisions describe and returns
    ``{metric: value}``. Widths move by one common factor of the search's channel ranking (the most
    probable channels are kept), found by a secant/bisection search on the *measured* cost — the
    chip's truth, not the table's. Stops at the first measurement inside the band for every
    constraint; otherwise keeps the best feasible one and says why it could not land. ``round_to``: every
    width tried snaps to that channel multiple (a table's ``align``), so the chip is measured on the
    widths that will ship.
    """
    gates = decisions.gates
    table_constraints = [c for c in constraints if c.source == "table"]
    notes: dict[str, Any] = {"band": list(band), "measurements": []}
    if gates is None or not table_constraints:
        notes["skipped"] = "no channel decisions or no measured constraint"
        return notes
    probs = decisions.trail.get("search_probs") or {k: v.detach().clone().cpu()
                                                    for k, v in gates.keep_probabilities().items()}
    counts = {gid: float(k.sum()) for gid, k in gates.hard().items()}
    sizes = {gid: g.size for gid, g in zip(probs, gates.graph.groups)}
    hi_scale = max(sizes[g] / max(c, 1.0) for g, c in counts.items())

    seen: dict[tuple, dict[str, float]] = {}

    def ratio_at(scale: float) -> tuple[float, dict[str, float]]:
        round_gates(gates, counts, probs, scale, round_to)
        widths = tuple(int(k.sum()) for k in gates.hard().values())
        if widths not in seen:  # scales that snap to the same widths are the same model: measure it once
            seen[widths] = measure()
            notes["measurements"].append({"scale": round(scale, 4), **{k: round(v, 5) for k, v in seen[widths].items()}})
        measured = seen[widths]
        return measured_ratio(measured, table_constraints), measured

    lo_s, hi_s = 0.0, hi_scale  # lo_s: known feasible (<= 1.0) side, hi_s: known over-budget side
    scale, best = 1.0, None
    r, measured = ratio_at(scale)
    for _ in range(max(1, max_measurements // 2) - 1):  # the rest of the budget is for growing single groups
        if band[0] <= r <= band[1]:
            best = (scale, r)
            break
        if r <= band[1]:
            lo_s = max(lo_s, scale)
            if best is None or r > best[1]:
                best = (scale, r)
        else:
            hi_s = min(hi_s, scale)
        if lo_s >= hi_scale - 1e-9 and r < band[0]:
            notes["why"] = "every channel is kept and the model is still under the band: the target is not binding"
            break
        if lo_s > 0 and hi_s / lo_s < 1.03:  # a latency step lies inside the bracket: no common factor lands in it
            break
        # latency ~ scale^a: step in log space towards the middle of the band, kept inside the bracket
        goal = (band[0] + band[1]) / 2
        guess = scale * (goal / r) ** 0.6
        low_b, high_b = (lo_s if lo_s > 0 else scale / 4), hi_s
        if not low_b < guess < high_b:
            guess = (low_b + high_b) / 2
        scale = max(min(guess, hi_scale), 1e-3)
        r, measured = ratio_at(scale)
    else:
        if band[0] <= r <= band[1] or (r <= band[1] and (best is None or r > best[1])):
            best = (scale, r)
    if best is None:
        notes["why"] = notes.get("why") or ("no width scale measured within the target: the smallest widths tried "
                                            "still exceed it (op or bit choices must change)")
        round_gates(gates, counts, probs, lo_s if lo_s > 0 else 1e-3, round_to)
        notes["landed"] = False
        return notes
    if notes["measurements"][-1]["scale"] != round(best[0], 4):
        round_gates(gates, counts, probs, best[0], round_to)
    notes.update(scale=best[0], measured_ratio=best[1], landed=band[0] <= best[1] <= band[1])
    if not notes["landed"] and best[1] < band[0] and len(notes["measurements"]) < max_measurements:
        # one common factor moves latency in steps too coarse for the band (small models, channel multiples of 16):
        # grow one group at a time by one step, the group whose next channels the search rated most probable first
        _grow_groups(gates, probs, sizes, table_constraints, measure, band, max_measurements, round_to, notes)
    if not notes["landed"] and decisions.blocks is not None and len(notes["measurements"]) < max_measurements:
        _restore_blocks(decisions, table_constraints, measure, band, max_measurements, notes)
    if not notes["landed"] and "why" not in notes:
        notes["why"] = f"closest feasible measurement is {best[1]:.3f} x target after {len(notes['measurements'])} " \
                       "measurements (latency moves in steps as whole channels switch)"
    return notes


def _restore_blocks(decisions: Decisions, constraints: list[Constraint], measure: Callable[[], dict[str, float]],
                    band: tuple[float, float], max_measurements: int, notes: dict[str, Any]) -> None:
    """Landing with depth decisions, when the widths alone leave the measurement under the band (every width already
    kept: ResNet-20 at a 0.25 ms target landed at 0.72x, 2026-12-07): put dropped blocks back, the one the search
    rated most probable to keep first, while the chip measures the result within the target. A block that would
    exceed the target is left out and the next one tried: blocks of different stages cost different amounts (a
    28 px block several times a 7 px one), so one that does not fit says nothing of the others (ResNet-20 v4 stopped
    at the first such block and left 8-18 % of its budget unused in 6 of 9 runs)."""
    blocks = decisions.blocks
    searched = decisions.trail.get("search_block_probs") or {}
    probs = [float(searched.get(site.block, p)) for site, p in
             zip(blocks.sites, blocks.probabilities().detach().cpu().tolist())]
    too_dear: set[int] = set()
    while len(notes["measurements"]) < max_measurements:
        keep = blocks.hard().clone()
        dropped = [i for i, k in enumerate(keep.tolist()) if not k and i not in too_dear]
        if not dropped:
            break
        i = max(dropped, key=lambda j: probs[j])
        trial = keep.clone()
        trial[i] = True
        blocks.set_keep(trial)
        measured = measure()
        ratio = measured_ratio(measured, constraints)
        notes["measurements"].append({"restored": blocks.sites[i].block,
                                      **{k: round(v, 5) for k, v in measured.items()}})
        if ratio > band[1]:  # over the target: leave this block out, try the next
            blocks.set_keep(keep)
            too_dear.add(i)
            notes.setdefault("blocks_over_target", []).append(blocks.sites[i].block)
            continue
        notes.setdefault("blocks_restored", []).append(blocks.sites[i].block)
        notes.update(measured_ratio=ratio, landed=band[0] <= ratio)
        if notes["landed"]:
            notes.pop("why", None)
            break


def measured_ratio(measured: dict[str, float], constraints: list[Constraint]) -> float:
    """The worst constraint's measured cost / target, taken at the median plus half the measurement's interquartile
    range where the measurement reports one (``latency_iqr_ms`` beside ``latency_ms``): a width that lands on the
    target only at its median reads over it in the next measurement half the time (the main job landed at 0.994x
    its target and its final export then measured 1.03x, 2026-12-07)."""
    def upper(metric: str) -> float:
        stem, _, unit = metric.rpartition("_")
        return measured[metric] + 0.5 * measured.get(f"{stem}_iqr_{unit}", 0.0)

    return max(upper(c.metric) / c.target for c in constraints)


def _grow_groups(gates: ChannelGates, probs: dict[int, Tensor], sizes: dict[int, int], constraints: list[Constraint],
                 measure: Callable[[], dict[str, float]], band: tuple[float, float], max_measurements: int,
                 round_to: int | None, notes: dict[str, Any]) -> None:
    """Greedy landing: add one step of channels to one group while the measured cost stays within the target."""
    mult = max(1, alignment(round_to))
    steps = {gid: max(mult, int(round(sizes[gid] / 8 / mult)) * mult) for gid in sizes}  # coarse first, then finer
    tried: set[int] = set()
    while len(notes["measurements"]) < max_measurements:
        hard = gates.hard()
        keep = {gid: k.clone() for gid, k in hard.items()}
        candidates = []
        for gid, k in keep.items():
            if gid in tried or int(k.sum()) >= sizes[gid]:
                continue
            off = (~k).nonzero().flatten()
            nxt = off[torch.argsort(probs[gid][off], descending=True)][:steps[gid]]
            candidates.append((float(probs[gid][nxt].mean()), gid, nxt))
        if not candidates:
            break
        _, gid, nxt = max(candidates, key=lambda c: c[0])
        keep[gid][nxt] = True
        before = torch.cat([hard[g.id] for g in gates.graph.groups])
        gates.set_keep(torch.cat([keep[g.id] for g in gates.graph.groups]))
        measured = measure()
        r = measured_ratio(measured, constraints)
        notes["measurements"].append({"grow_group": gid, "channels": int(keep[gid].sum()),
                                      **{k: round(v, 5) for k, v in measured.items()}})
        if r > band[1]:  # over the target: undo; retry this group with half the step, or not again at the finest
            gates.set_keep(before)
            if steps[gid] > mult:
                steps[gid] = max(mult, steps[gid] // 2 // mult * mult)
            else:
                tried.add(gid)
            continue
        notes["measured_ratio"] = r
        if r >= band[0]:
            notes["landed"] = True
            return


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
