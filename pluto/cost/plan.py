"""The expected cost as a few batched tensor ops on the training device: what a search step prices.

:func:`pluto.cost.expected.expected_cost` walks the ops in Python and reads every table entry as its own
scalar; on a GPU that is hundreds of launches and, with the tables on the host, a copy of the decisions
to the CPU and back every step (the host waits for the device each time). A :class:`CostPlan` is the same
sum laid out once per decision structure: every table lookup of every (op, precision) becomes one row of a
padded grid tensor, every op one entry of a vector, every calibration group one entry of another, so that
pricing a step is about fifty tensor ops on whatever device the decisions live on, with no host read.

The decisions arrive as vectors: :class:`ChannelCounts` (expected in/out channels per traced node) and
:class:`PrecisionProbs` (probability per layer and precision). Both are also read-only mappings with the
dict layout :func:`~pluto.cost.expected.expected_cost` takes, so other callers see no difference.
Values equal :func:`~pluto.cost.expected.expected_cost`'s to float rounding (summation order; a lookup
on a one-point grid axis, proportional, is the same line through the origin written as a two-point grid).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from pluto.cost.metrics import TABLE_METRICS
from pluto.cost.ops import MATRIX_KINDS, OpSpec
from pluto.cost.table import BYTES_PER_WEIGHT, LatencyTable, calibration_group

F64 = torch.float64


@dataclass(frozen=True)
class ChannelCounts(Mapping):
    """Expected (in, out) channels of traced nodes ``names`` as two vectors (see ``ChannelGates.channel_counts``).

    As a mapping: node name -> (expected in-channels, expected out-channels), 0-dim tensors."""

    names: tuple[str, ...]
    cin: Tensor
    cout: Tensor

    def __getitem__(self, name: str) -> tuple[Tensor, Tensor]:
        i = self._index[name]
        return self.cin[i], self.cout[i]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def _index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


@dataclass(frozen=True)
class PrecisionProbs(Mapping):
    """Probability of each precision key (``options[i]``, e.g. 'int4', 'int8') of layer ``names[i]``: row ``i`` of
    ``probs`` (padded with zeros past ``len(options[i])``). ``grad[i]``: whether row ``i`` is a soft decision
    (a hardened layer's one-hot row carries no gradient).

    As a mapping: layer name -> {precision key: probability}."""

    names: tuple[str, ...]
    options: tuple[tuple[str, ...], ...]
    probs: Tensor
    grad: tuple[bool, ...]

    def __getitem__(self, name: str) -> dict[str, Tensor]:
        i = self.names.index(name)
        return {k: self.probs[i, j] for j, k in enumerate(self.options[i])}

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _storage(key: str) -> str:
    from pluto.cost.expected import _storage_name

    return _storage_name(key)


def _runtime(key: str) -> str:
    from pluto.cost.expected import _runtime_name

    return _runtime_name(key)


def segments(owner: list[int], n: int, device: torch.device) -> Tensor:
    """(n, widest) indices of the entries each of ``n`` segments owns (entry ``e`` belongs to ``owner[e]``),
    padded with ``len(owner)``: ``cat([values, zero])[index].sum(1)`` sums every segment, deterministically
    on a GPU too (an ``index_add_`` there adds in whatever order its atomics land)."""
    rows: list[list[int]] = [[] for _ in range(n)]
    for e, o in enumerate(owner):
        rows[o].append(e)
    width = max([1] + [len(r) for r in rows])
    return torch.tensor([r + [len(owner)] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def segment_sum(values: Tensor, index: Tensor) -> Tensor:
    """Per-segment sums of ``values`` (see :func:`segments`)."""
    return torch.cat([values, values.new_zeros(1)])[index].sum(1)


def _two_point(grid: Tensor, values: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """A one-point grid axis (cost proportional to channels) as the two-point line through the origin."""
    if grid.numel() > 1:
        return grid, values
    return torch.cat([grid.new_zeros(1), grid]), torch.cat([torch.zeros_like(values), values], dim=dim)


class CostPlan:
    """``metric`` of ``ops`` for one layout of the decisions: which ops read which channel entry (or their
    nominal channels), which precision row, whether each carries a gradient. Build one with
    :meth:`CostModel.plan`; call it with the vectors of a step."""

    def __init__(self, table: LatencyTable | None, ops: list[OpSpec], metric: str, default_precision: str,
                 channel_names: tuple[str, ...] | None, channels_grad: bool,
                 precisions: PrecisionProbs | None, device: torch.device,
                 presence_ops: tuple[tuple[str, ...], ...] | None = None):
        self.metric, self.device, self.table = metric, device, table
        self.default = default_precision
        # op o is executed with probability cat([presence, 1])[op_block[o]] (depth decisions; 1: always)
        owner = {name: k for k, names in enumerate(presence_ops or ()) for name in names}
        self.n_blocks = len(presence_ops or ())
        self.op_block = torch.tensor([owner.get(op.name, self.n_blocks) for op in ops], dtype=torch.long,
                                     device=device)
        index = {n: i for i, n in enumerate(channel_names or ())}
        rows = {n: i for i, n in enumerate(precisions.names)} if precisions is not None else {}
        width = precisions.probs.shape[1] if precisions is not None else 0
        n_layers = len(precisions.names) if precisions is not None else 0
        one = n_layers * width  # index of the constant probability 1 (a layer at the default precision)
        n_nodes = len(index)
        # op o reads entry src[o] of cat([cin (or cout) of the nodes, nominal channels of the ops])
        src, nominal_in, nominal_out, grad, terms = [], [], [], [], []
        for o, op in enumerate(ops):
            src.append(index.get(op.name, n_nodes + o))
            nominal_in.append(float(op.cin))
            nominal_out.append(float(op.cout))
            row = rows.get(op.name)
            keyed = grad_channels = op.name in index and channels_grad
            if row is not None:
                keyed = keyed or precisions.grad[row]
                terms += [(o, row * width + j, key) for j, key in enumerate(precisions.options[row])]
            else:
                terms.append((o, one, default_precision))
            grad.append((keyed, grad_channels))
        self.n_ops = len(ops)
        self.src = torch.tensor(src, dtype=torch.long, device=device)
        self.nominal = torch.tensor([nominal_in, nominal_out], dtype=F64, device=device)
        self.prob_one = one
        self.analytic = self._analytic_terms(ops, terms, metric if metric not in TABLE_METRICS else "size_bytes")
        if metric in TABLE_METRICS:
            self._table_terms(table, ops, terms, [g for _, g in grad], metric)
            self.op_grad = torch.tensor([k for k, _ in grad], dtype=torch.bool, device=device)
            hw = torch.tensor([[float(op.hw) for op in ops], [float(op.hw_out) for op in ops]], dtype=F64)
            self.hw = hw.to(device)

    # ---- layout -------------------------------------------------------------------------------
    def _analytic_terms(self, ops: list[OpSpec], terms: list, metric: str) -> dict[str, Tensor]:
        """``macs`` or ``size_bytes``: ``(k2 * cin / groups or k2) * cout * hw2 + bias * cout`` per op (the formula
        of :func:`pluto.cost.expected._analytic`), times bytes per weight per precision term for sizes."""
        k2, div, uses_cin, hw2, bias = [], [], [], [], []
        for op in ops:
            kk = float(op.kernel * op.kernel)
            if op.kind == "conv":
                row = (kk, float(op.groups), True, float(op.hw_out ** 2) if metric == "macs" else 1.0,
                       0.0 if metric == "macs" else float(bool(op.bn or op.bias)))
            elif op.kind == "dwconv":
                row = (kk, 1.0, False, float(op.hw_out ** 2) if metric == "macs" else 1.0,
                       0.0 if metric == "macs" else float(bool(op.bn or op.bias)))
            elif op.kind == "linear":
                row = (1.0, 1.0, True, 1.0, float(bool(op.bias)) if metric == "size_bytes" else 0.0)
            elif op.kind == "bn" and metric == "size_bytes":
                row = (2.0, 1.0, False, 1.0, 0.0)
            else:
                row = (0.0, 1.0, False, 1.0, 0.0)
            for lst, v in zip((k2, div, uses_cin, hw2, bias), row):
                lst.append(v)
        d = self.device
        out = {"k2": torch.tensor(k2, dtype=F64, device=d), "div": torch.tensor(div, dtype=F64, device=d),
               "uses_cin": torch.tensor(uses_cin, dtype=torch.bool, device=d),
               "hw2": torch.tensor(hw2, dtype=F64, device=d), "bias": torch.tensor(bias, dtype=F64, device=d)}
        if metric == "size_bytes":
            out["op"] = torch.tensor([o for o, _, _ in terms], dtype=torch.long, device=d)
            out["per_op"] = segments([o for o, _, _ in terms], len(ops), d)
            out["prob"] = torch.tensor([p for _, p, _ in terms], dtype=torch.long, device=d)
            out["bytes"] = torch.tensor([BYTES_PER_WEIGHT[_storage(k)] for _, _, k in terms], dtype=F64, device=d)
        return out

    def _table_terms(self, table: LatencyTable, ops: list[OpSpec], terms: list, grad_channels: list[bool],
                     metric: str) -> None:
        """One row per grid lookup: grids padded with +inf, values padded with 0, a coefficient (a resolution
        between two measured ones, or scaled from the nearest), the op it prices and its probability."""
        grids_in, grids_out, values, term_of, coef, div = [], [], [], [], [], []
        classes, groups = {}, []
        for o, op in enumerate(ops):
            cin, cout = self._query(op, grad_channels[o])
            groups.append(table.group_of(op, cin, cout))
            q_in = cin / op.groups if op.kind == "conv" and op.groups > 1 else cin
            classes[o] = table._query_class(op.kind, q_in, cout)
        for t, (o, p, key) in enumerate(terms):
            op = ops[o]
            precision = _runtime(key)
            table._require(metric, precision)
            for c, hw_key in table.hw_terms(op, precision):
                grid_in, grid_out, vals = table._grid(hw_key, metric, classes[o])
                if op.kind in MATRIX_KINDS:
                    grid_in, vals = _two_point(grid_in, vals, 0)
                    grid_out, vals = _two_point(grid_out, vals, 1)
                else:  # a 1-D grid over out-channels: the in-axis is a dummy [0, 1] with equal rows
                    grid_out, line = _two_point(grid_in, vals[:, 0], 0)
                    grid_in, vals = torch.tensor([0.0, 1.0], dtype=F64), torch.stack([line, line])
                grids_in.append(grid_in)
                grids_out.append(grid_out)
                values.append(vals)
                term_of.append(t)
                coef.append(float(c))
                div.append(float(op.groups) if op.kind == "conv" and op.groups > 1 else 1.0)
        d = self.device
        n_in, n_out = max(g.numel() for g in grids_in), max(g.numel() for g in grids_out)
        pad_in = torch.full((len(values), n_in), math.inf, dtype=F64)
        pad_out = torch.full((len(values), n_out), math.inf, dtype=F64)
        pad_v = torch.zeros((len(values), n_in, n_out), dtype=F64)
        for k, (gi, go, v) in enumerate(zip(grids_in, grids_out, values)):
            pad_in[k, :gi.numel()], pad_out[k, :go.numel()] = gi, go
            pad_v[k, :gi.numel(), :go.numel()] = v
        self.grid_in, self.grid_out, self.values = pad_in.to(d), pad_out.to(d), pad_v.reshape(-1).to(d)
        self.last_in = torch.tensor([g.numel() - 1 for g in grids_in], dtype=torch.long, device=d)
        self.last_out = torch.tensor([g.numel() - 1 for g in grids_out], dtype=torch.long, device=d)
        self.base = torch.arange(len(values), device=d) * (n_in * n_out)
        self.n_cols = n_out
        term_op = [o for o, _, _ in terms]
        self.look_op = torch.tensor([term_op[t] for t in term_of], dtype=torch.long, device=d)
        self.look_prob = torch.tensor([terms[t][1] for t in term_of], dtype=torch.long, device=d)
        self.look_coef = torch.tensor(coef, dtype=F64, device=d)
        self.look_div = torch.tensor(div, dtype=F64, device=d)
        self.look_terms = segments(term_of, len(terms), d)
        # per precision term: its op, probability, runtime precision and (group, precision) slot; a precision's ops
        # are calibrated by that precision's fit (LatencyTable.calibrate_precisions)
        precisions = list(dict.fromkeys(_runtime(k) for _, _, k in terms))
        slots = list(dict.fromkeys((groups[o], _runtime(k)) for o, _, k in terms))  # first appearance
        self.precision_names = tuple(precisions)
        self.term_op = torch.tensor(term_op, dtype=torch.long, device=d)
        self.term_prob = torch.tensor([p for _, p, _ in terms], dtype=torch.long, device=d)
        self.term_precision = torch.tensor([precisions.index(_runtime(k)) for _, _, k in terms], dtype=torch.long,
                                           device=d)
        self.term_slots = segments([slots.index((groups[o], _runtime(k))) for o, _, k in terms], len(slots), d)
        self.term_precisions = segments([precisions.index(_runtime(k)) for _, _, k in terms], len(precisions), d)
        self.slot_precisions = segments([precisions.index(r) for _, r in slots], len(precisions), d)
        fits = {r: table.calibration_coefficients(metric, r, [g for g, q in slots if q == r]) for r in precisions}
        self.calibration = None
        if any(f is not None for f in fits.values()):
            def per_slot(key: str, fallback: float | None) -> Tensor | None:
                out = []
                for g, r in slots:
                    f = fits[r]
                    if f is None:
                        out.append(1.0 if key == "scales" else 0.0)
                    elif f[key] is None:
                        out.append(fallback)
                    else:
                        out.append(f[key][[q for q, rr in slots if rr == r].index(g)])
                return None if any(v is None for v in out) else torch.tensor(out, dtype=F64, device=d)

            scalar = lambda key: torch.tensor([fits[r][key] if fits[r] else 0.0 for r in precisions],  # noqa: E731
                                              dtype=F64, device=d)
            self.calibration = {
                "scales": per_slot("scales", 1.0), "per_act": per_slot("per_act", 0.0),
                "per_op_group": per_slot("per_op_group", 0.0),
                "floored": torch.tensor([bool(f and (f["per_act"] is not None or f["per_op_group"] is not None))
                                         for f in fits.values()],
                                        dtype=torch.bool, device=d),
                "per_mb": scalar("per_mb"), "per_op": scalar("per_op"), "offset": scalar("offset"),
                "default_offset": (table.calibration_coefficients(metric, _runtime(self.default), []) or
                                   {"offset": 0.0})["offset"]}
        self.boundary = table.boundary_coefficients(metric)
        weight_ops = [o for o, op in enumerate(ops) if op.kind in ("conv", "dwconv", "linear")]
        self.edge_from = torch.tensor(weight_ops[:-1], dtype=torch.long, device=d)
        self.edge_to = torch.tensor(weight_ops[1:], dtype=torch.long, device=d)

    @staticmethod
    def _query(op: OpSpec, grad: bool) -> tuple[Tensor, Tensor]:
        """What the table's alignment classes see: expected counts (gradient) or the nominal integers."""
        cin = torch.tensor(float(op.cin), dtype=F64, requires_grad=grad)
        cout = torch.tensor(float(op.cout), dtype=F64, requires_grad=grad)
        return cin, cout

    # ---- evaluation ---------------------------------------------------------------------------
    def channels(self, counts: ChannelCounts | None) -> tuple[Tensor, Tensor]:
        """(cin, cout) per op in float64: the nodes' expected counts, else the op's nominal channels."""
        if counts is None or not len(counts):
            return self.nominal[0], self.nominal[1]
        both = torch.stack([counts.cin, counts.cout]).to(F64)
        both = torch.cat([both, self.nominal], dim=1).index_select(1, self.src)
        return both[0], both[1]

    def probabilities(self, precisions: PrecisionProbs | None) -> Tensor:
        """Flat probabilities with a trailing 1 (the default precision's)."""
        one = torch.ones(1, dtype=F64, device=self.device)
        if precisions is None:
            return one
        return torch.cat([precisions.probs.reshape(-1).to(F64), one])

    def presence(self, presence: Tensor | None) -> Tensor:
        """Per op, the probability that it is executed (float64)."""
        one = torch.ones(1, dtype=F64, device=self.device)
        if presence is None or not self.n_blocks:
            return one.expand(self.op_block.numel())
        return torch.cat([presence.reshape(-1).to(F64), one]).index_select(0, self.op_block)

    def _analytic(self, cin: Tensor, cout: Tensor, probs: Tensor, per_term: bool = False,
                  present: Tensor | None = None) -> Tensor:
        """Per-op MACs, or per-op bytes of weights (summed over precision terms; ``per_term``: one per term),
        times each op's probability of being executed (``present``)."""
        a = self.analytic
        first = torch.where(a["uses_cin"], a["k2"] * (cin / a["div"]), a["k2"])
        per_op = first * cout * a["hw2"] + a["bias"] * cout
        if present is not None:
            per_op = per_op * present
        if "bytes" not in a:
            return per_op
        weighted = probs.index_select(0, a["prob"]) * a["bytes"] * per_op.index_select(0, a["op"])
        return weighted if per_term else segment_sum(weighted, a["per_op"])

    def _lookups(self, cin: Tensor, cout: Tensor) -> Tensor:
        """Every grid lookup at once: bilinear with linear extrapolation, floored at 0 (``pluto.cost.interp``)."""
        x_in = cin.index_select(0, self.look_op) / self.look_div
        x_out = cout.index_select(0, self.look_op)

        def segment(grid: Tensor, last: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
            hi = torch.searchsorted(grid, x.detach().unsqueeze(1)).squeeze(1).clamp(min=1)
            hi = torch.minimum(hi, last)
            ends = grid.gather(1, torch.stack([hi - 1, hi], dim=1))
            return hi - 1, (x - ends[:, 0]) / (ends[:, 1] - ends[:, 0])

        i0, ti = segment(self.grid_in, self.last_in, x_in)
        o0, to = segment(self.grid_out, self.last_out, x_out)
        corner = self.base + i0 * self.n_cols + o0
        v = self.values.index_select(0, torch.stack([corner, corner + 1, corner + self.n_cols,
                                                     corner + self.n_cols + 1]).reshape(-1)).view(4, -1)
        top = v[0] + to * (v[1] - v[0])
        bottom = v[2] + to * (v[3] - v[2])
        return torch.clamp(top + ti * (bottom - top), min=0.0)

    def __call__(self, channels: ChannelCounts | None, precisions: PrecisionProbs | None,
                 presence: Tensor | None = None) -> Tensor:
        """The expected ``metric`` (0-dim float64 tensor on the plan's device), differentiable in the channel
        counts, the precision probabilities and ``presence`` (per depth decision of the plan's ``presence_ops``: the
        probability that its ops run; each op's entry, per-op term, traffic and weights scale with it)."""
        cin, cout = self.channels(channels)
        probs = self.probabilities(precisions)
        present = self.presence(presence) if self.n_blocks else None
        if self.metric not in TABLE_METRICS:
            return self._analytic(cin, cout, probs, present=present).sum()
        term_p = probs.index_select(0, self.term_prob)
        looked = self.look_coef * self._lookups(cin, cout) * probs.index_select(0, self.look_prob)
        cost = segment_sum(looked, self.look_terms)  # per precision term
        detached = cost.detach()
        moved_op = (cin.detach() * self.hw[0] + cout.detach() * self.hw[1]) * 4.0 / 1e6
        moved = moved_op.index_select(0, self.term_op) * term_p.detach()
        # the activation term's value is exact, its gradient follows the term's entry (expected_cost's rule)
        live = self.op_grad.index_select(0, self.term_op) & (detached > 0)
        moved = torch.where(live, moved * cost / torch.where(live, detached, torch.ones_like(detached)), moved)
        if present is not None:  # an op that may not run: every term of it times that probability (expected_cost's)
            term_present = present.index_select(0, self.term_op)
            cost, moved, term_p = cost * term_present, moved * term_present, term_p * term_present
        parts = segment_sum(cost, self.term_slots)
        totals = segment_sum(parts, self.slot_precisions)
        fit = self.calibration
        if fit is None:
            value = totals.sum()
        else:
            act = segment_sum(moved, self.term_slots)
            size = segment_sum(self._analytic(cin, cout, probs, per_term=True, present=present),
                               self.term_precisions)
            count = segment_sum(term_p, self.term_precisions)
            slot = parts * fit["scales"] + (act * fit["per_act"] if fit["per_act"] is not None else 0.0)
            if fit["per_op_group"] is not None:  # expected units per (group, precision) slot
                slot = slot + segment_sum(term_p, self.term_slots) * fit["per_op_group"]
            per = segment_sum(slot, self.slot_precisions) + fit["per_mb"] * size / 1e6 + fit["per_op"] * count \
                + fit["offset"]
            per = torch.where(fit["floored"], torch.maximum(per, 0.1 * totals), per)
            value = (per - fit["offset"]).sum() + fit["default_offset"]
        per_edge, per_mb = self.boundary
        if (per_edge or per_mb) and self.edge_from.numel():
            n_prec = len(self.precision_names)
            layer = torch.zeros(self.n_ops * n_prec, dtype=F64, device=self.device).index_add(
                0, self.term_op * n_prec + self.term_precision, probs.index_select(0, self.term_prob)).view(-1, n_prec)
            change = 1.0 - (layer.index_select(0, self.edge_from) * layer.index_select(0, self.edge_to)).sum(1)
            if present is not None:  # an edge whose layers do not run changes nothing (expected_cost's rule)
                change = change * present.index_select(0, self.edge_from) * present.index_select(0, self.edge_to)
            crossing = cout.index_select(0, self.edge_from) * self.hw[1].index_select(0, self.edge_from) ** 2 * 4.0 / 1e6
            value = value + per_edge * change.sum() + per_mb * (change * crossing).sum()
        return value


__all__ = ["ChannelCounts", "PrecisionProbs", "CostPlan"]
