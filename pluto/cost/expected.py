"""Expected cost of a model under soft decisions, differentiable in every decision.

The optimizer sees decisions as probabilities: a channel-keep gate gives an *expected* channel
count, a bit-width choice a probability per precision, an op choice a probability that the op
is the one executed. The expected cost is

    cost = calibrate( sum_op  w_op * sum_p P_op(p) * table(op, p, E[cin_op], E[cout_op]) )

with the table read by differentiable interpolation (``pluto.cost.interp``), so gradients flow to
the gates, the bit-width logits and the op logits. Analytic metrics need no table:
``macs`` (multiply-accumulates) and ``size_bytes`` (weights x bytes per weight of each precision).
"""
from __future__ import annotations

import torch
from torch import Tensor

from pluto.cost.ops import OpSpec
from pluto.cost.table import LatencyTable
from pluto.errors import ConfigError, TableError

from pluto.cost.metrics import ANALYTIC_METRICS, TABLE_METRICS
from pluto.cost.table import BYTES_PER_WEIGHT, activation_mb, calibration_group


def bits_to_precision(bits: int) -> str:
    """Runtime precision that executes weights of ``bits`` bits: 32->fp32, 16->fp16, 8 and 4->int8.

    Runtimes here have no int4 kernels, so 4-bit layers run (and are timed) as int8; their *size*
    still counts 4 bits: pass the key 'int4' (or the int 4) in ``precisions`` to get both right.
    """
    mapping = {32: "fp32", 16: "fp16", 8: "int8", 4: "int8"}
    if bits not in mapping:
        raise ConfigError(f"no runtime precision for {bits}-bit weights; use one of {sorted(mapping)}")
    return mapping[bits]


def precision_key(bits: int) -> str:
    """Key of a bit-width in cost precisions: 4-bit keeps its own key so size counts 4 bits (timed as int8)."""
    return "int4" if bits == 4 else bits_to_precision(bits)


def _storage_name(key: str | int) -> str:
    """Canonical storage precision of a ``precisions`` key: 'fp32' | 'fp16' | 'bf16' | 'int8' | 'int4'."""
    if isinstance(key, int):
        return "int4" if key == 4 else bits_to_precision(key)
    if key not in BYTES_PER_WEIGHT:
        raise ConfigError(f"unknown precision {key!r}; use one of {sorted(BYTES_PER_WEIGHT)} or bit counts 32/16/8/4")
    return key


def _runtime_name(key: str | int) -> str:
    name = _storage_name(key)
    return "int8" if name == "int4" else name


def _channels(op: OpSpec, channels: dict[str, tuple[Tensor, Tensor]] | None) -> tuple[Tensor, Tensor]:
    if channels and op.name in channels:
        cin, cout = channels[op.name]
        return torch.as_tensor(cin, dtype=torch.float64), torch.as_tensor(cout, dtype=torch.float64)
    return torch.tensor(float(op.cin), dtype=torch.float64), torch.tensor(float(op.cout), dtype=torch.float64)


def _analytic(op: OpSpec, metric: str, cin: Tensor, cout: Tensor) -> Tensor:
    """MACs or weight count of ``op`` at real-valued channel counts (weights: bytes applied by caller)."""
    k2 = op.kernel * op.kernel
    if op.kind == "dwconv":
        if metric == "macs":
            return k2 * cout * op.hw_out ** 2
        return k2 * cout + (cout if op.bn or op.bias else 0.0)
    if op.kind == "conv":
        per_group = cin / op.groups
        if metric == "macs":
            return k2 * per_group * cout * op.hw_out ** 2
        return k2 * per_group * cout + (cout if op.bn or op.bias else 0.0)
    if op.kind == "linear":
        return cin * cout + (cout if op.bias and metric == "size_bytes" else 0.0)
    if op.kind == "bn" and metric == "size_bytes":
        return 2 * cout
    return torch.zeros((), dtype=torch.float64)


def _op_cost(table: LatencyTable | None, op: OpSpec, metric: str, cin: Tensor, cout: Tensor,
             probs: dict[str | int, Tensor]) -> Tensor:
    total = torch.zeros((), dtype=torch.float64)
    if metric == "macs":
        return _analytic(op, metric, cin, cout)
    for key, p in probs.items():
        p = torch.as_tensor(p, dtype=torch.float64)
        if metric == "size_bytes":
            total = total + p * BYTES_PER_WEIGHT[_storage_name(key)] * _analytic(op, metric, cin, cout)
        else:
            total = total + p * table.lookup(op, metric, _runtime_name(key), cin, cout)
    return total


WEIGHT_KINDS = ("conv", "dwconv", "linear")  # the layers that carry a precision; their order gives the boundaries


def boundary_terms(ops: list[OpSpec], probs: list[dict[str, Tensor] | None],
                   couts: list[Tensor], present: list[Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
    """Expected precision changes between consecutive weight layers of ``ops`` (in execution order) and the expected
    activation megabytes crossing them: ``sum_i (1 - sum_p P_i(p) P_i+1(p))`` and the same weighted by layer i's
    output megabytes (fp32 words, ``cout * hw_out^2``). ``probs[i]``: runtime precision -> probability of op i
    (None: not a weight layer); ``couts``: its (expected) output channels. Ops between two weight layers (adds,
    pooling) are transparent: a uniform network has none, so the per-precision fits keep what they measured.
    ``present[i]``: the probability that op i runs (depth decisions; None: always); an edge counts times both ends'."""
    edges = torch.zeros((), dtype=torch.float64)
    edge_mb = torch.zeros((), dtype=torch.float64)
    prev = None
    for i, (op, pr, cout) in enumerate(zip(ops, probs, couts)):
        if pr is None:
            continue
        w = present[i] if present is not None else None
        if prev is not None:
            p_op, p_pr, c_prev, w_prev = prev
            same = sum((p_pr[k] * pr[k] for k in pr if k in p_pr), torch.zeros((), dtype=torch.float64))
            change = 1.0 - same
            for weight in (w_prev, w):
                if weight is not None:
                    change = change * weight
            edges = edges + change
            edge_mb = edge_mb + change * c_prev * p_op.hw_out ** 2 * 4.0 / 1e6
        prev = (op, pr, cout, w)
    return edges, edge_mb


def expected_cost(table: LatencyTable | None, ops: list[OpSpec], metric: str,
                  channels: dict[str, tuple[Tensor, Tensor]] | None = None,
                  precisions: dict[str, dict[str | int, Tensor]] | None = None,
                  weights: dict[str, Tensor] | None = None,
                  default_precision: str = "fp32", calibrated: bool = True) -> Tensor:
    """Expected ``metric`` of one inference under soft decisions, as a differentiable scalar tensor.

    - ``metric``: 'latency_ms' or 'energy_mj' (read from ``table``), 'size_bytes' or 'macs' (analytic).
    - ``channels``: op name -> (expected cin, expected cout); ops not listed keep nominal channels.
    - ``precisions``: op name -> {precision or bits: probability}; ops not listed run at
      ``default_precision`` (keys 'fp32'/'fp16'/'int8'/'int4' or 32/16/8/4; int4 is timed as int8).
    - ``weights``: op name -> probability that the op is executed (NAS op choice, a skippable block's keep
      probability: :mod:`pluto.decisions.depth`); default 1.
    Units: ms, mJ, bytes or MACs per inference at the table's batch size (batch 1 for shipped tables).
    Table metrics are calibrated per precision (each precision's ops by its own whole-network fit) plus the
    expected precision changes between consecutive weight layers (:meth:`LatencyTable.calibrate_precisions`).
    """
    if metric in TABLE_METRICS:
        if table is None:
            raise TableError(f"'{metric}' needs a latency table (pass one, e.g. LatencyTable.load('latency_tables/"
                             "cpu_ort')); only 'size_bytes' and 'macs' are computed without one.")
    elif metric not in ANALYTIC_METRICS:
        raise ConfigError(f"unknown cost metric {metric!r}; use one of {TABLE_METRICS + ANALYTIC_METRICS}")
    zero = torch.zeros((), dtype=torch.float64)
    if metric not in TABLE_METRICS:
        total = zero
        for op in ops:
            cin, cout = _channels(op, channels)
            probs = (precisions or {}).get(op.name) or {default_precision: torch.tensor(1.0, dtype=torch.float64)}
            cost = _op_cost(table, op, metric, cin, cout, probs)
            if weights and op.name in weights:
                cost = cost * torch.as_tensor(weights[op.name], dtype=torch.float64)
            total = total + cost
        return total
    # per runtime precision: entry sums, activation megabytes and op counts per calibration group, weight bytes, op count
    by: dict[str, dict] = {}
    layer_probs: list[dict[str, Tensor] | None] = []
    couts: list[Tensor] = []
    present: list[Tensor | None] = []
    for op in ops:
        cin, cout = _channels(op, channels)
        probs = (precisions or {}).get(op.name) or {default_precision: torch.tensor(1.0, dtype=torch.float64)}
        w = torch.as_tensor(weights[op.name], dtype=torch.float64) if weights and op.name in weights else None
        group = table.group_of(op, cin, cout)
        moved_exact = activation_mb(op, torch.as_tensor(cin).detach(), torch.as_tensor(cout).detach())
        params = _analytic(op, "size_bytes", cin, cout)
        runtime_probs: dict[str, Tensor] = {}
        for key, p in probs.items():
            p = torch.as_tensor(p, dtype=torch.float64)
            runtime = _runtime_name(key)
            runtime_probs[runtime] = runtime_probs.get(runtime, zero) + p
            cost = p * table.lookup(op, metric, runtime, cin, cout)
            # the activation-traffic term's value is exact; its gradient follows the op's entry (relative), so a
            # negative (reorder-removing) coefficient never rewards keeping channels
            moved = p.detach() * moved_exact
            if isinstance(cost, Tensor) and cost.requires_grad and float(cost.detach()) > 0:
                moved = moved * cost / cost.detach()
            size = p * BYTES_PER_WEIGHT[_storage_name(key)] * params
            count = p
            if w is not None:
                cost, moved, size, count = cost * w, moved * w, size * w, count * w
            slot = by.setdefault(runtime, {"parts": {}, "act": {}, "counts": {}, "weight_bytes": zero, "n_ops": zero})
            slot["parts"][group] = slot["parts"].get(group, zero) + cost
            slot["act"][group] = slot["act"].get(group, zero) + moved
            slot["weight_bytes"] = slot["weight_bytes"] + size
            slot["n_ops"] = slot["n_ops"] + count
            slot["counts"][group] = slot["counts"].get(group, zero) + count
        layer_probs.append(runtime_probs if op.kind in WEIGHT_KINDS else None)
        couts.append(torch.as_tensor(cout, dtype=torch.float64))
        present.append(w)
    if not calibrated:
        return sum((sum(slot["parts"].values(), zero) for slot in by.values()), zero)
    edges, edge_mb = boundary_terms(ops, layer_probs, couts, present)
    return table.calibrate_precisions(by, metric, _runtime_name(default_precision), edges, edge_mb)


def minimum_cost(table: LatencyTable | None, ops: list[OpSpec], metric: str,
                 min_channels: dict[str, tuple[float, float]] | None = None,
                 allowed_precisions: dict[str, list[str | int]] | None = None,
                 default_precisions: list[str | int] = ("fp32",)) -> float:
    """Cheapest achievable ``metric``: every op at its minimum channels and its cheapest allowed precision.

    The optimizer compares a constraint target against this to reject infeasible targets early
    (``InfeasibleConstraintError``) instead of training towards an unreachable budget.
    """
    fewest = {k: tuple(map(float, v)) for k, v in (min_channels or {}).items()}
    cheapest: dict[str, dict[str | int, Tensor]] = {}
    total = 0.0
    for op in ops:
        cin, cout = _channels(op, fewest)
        options = (allowed_precisions or {}).get(op.name) or list(default_precisions)
        costs = [float(_op_cost(table, op, metric, cin, cout, {p: torch.tensor(1.0)})) for p in options]
        cheapest[op.name] = {options[costs.index(min(costs))]: torch.tensor(1.0, dtype=torch.float64)}
        total += min(costs)
    if metric not in TABLE_METRICS:
        return total
    # each op at its cheapest entry, or the whole model at one allowed precision (no precision changes to pay)
    default = list(default_precisions)[0]
    candidates = [cheapest]
    shared = set.intersection(*[set((allowed_precisions or {}).get(op.name) or list(default_precisions))
                                for op in ops]) if ops else set()
    candidates += [{op.name: {p: torch.tensor(1.0, dtype=torch.float64)} for op in ops} for p in sorted(shared, key=str)]
    with torch.no_grad():
        return min(float(expected_cost(table, ops, metric, fewest, c, default_precision=default)) for c in candidates)
