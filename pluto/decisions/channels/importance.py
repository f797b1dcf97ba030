"""Channel importance criteria and one-shot pruning (the baselines learnable gates are compared with).

Scores are summed over every layer a channel lives in (as in DepGraph): the producer's output
filter, the consumers' input slices and, for ``'bn'``, the BatchNorm scale. Each layer's scores are
divided by their mean first, so a wide layer does not drown a narrow one.

- ``'l1'`` / ``'l2'``: weight magnitude (Li et al., 2017),
- ``'bn'``: |BatchNorm gamma| (network slimming, Liu et al., 2017); channels without a BN fall back to l2,
- ``'taylor'``: first-order Taylor |w * dL/dw| (Molchanov et al., 2019); run ``loss.backward()`` first.

Kept counts can be snapped to a channel multiple (``round_to``): runtimes run counts that are multiples
of a table's ``align`` (8 for onnxruntime's NCHWc kernels on x86) on fast kernels and others on slow
ones (mobilenet_v2 at 1x28x28 pruned by ratio 0.36 ran 0.63 ms against 0.31 ms dense). A group is the
graph's unit (residual-tied channels are one group), so snapping groups keeps the graph valid.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pluto.decisions.channels.graph import DependencyGraph
from pluto.errors import ConfigError, InfeasibleConstraintError

IMPORTANCES = ("l1", "l2", "bn", "taylor")


def _weight(module: nn.Module) -> Tensor:
    return module.weight.detach()


def _scores_of(t: Tensor, dim: int, kind: str) -> Tensor:
    """Norm of every slice of ``t`` along ``dim``."""
    dims = [d for d in range(t.dim()) if d != dim]
    return t.abs().sum(dims) if kind in ("l1", "taylor") else t.pow(2).sum(dims).sqrt()


def channel_importance(model: nn.Module, graph: DependencyGraph, importance: str = "l1") -> Tensor:
    """Importance of every prunable channel (flat, graph order; larger = keep)."""
    if importance not in IMPORTANCES:
        raise ConfigError(f"importance {importance!r} is not one of {IMPORTANCES}")
    n = graph.num_channels
    score = torch.zeros(n + 1)
    has_bn = torch.zeros(n + 1, dtype=torch.bool)
    for layer in graph.layers.values():
        if layer.kind in ("param", "ln"):
            continue
        module = model.get_submodule(layer.name)
        w = _weight(module) if getattr(module, "weight", None) is not None else None
        if w is None:
            continue
        if importance == "taylor":
            if module.weight.grad is None:
                raise ConfigError("importance='taylor' needs gradients: run loss.backward() on a batch before pruning")
            w = (module.weight.detach() * module.weight.grad.detach())
        w = w.float().cpu()
        if layer.kind == "bn":
            if importance == "bn":
                s = w.abs()
                idx = torch.where(layer.out_index < 0, n, layer.out_index)
                score.index_add_(0, idx, s / s.mean().clamp_min(1e-12))
                has_bn[idx] = True
            continue
        kind = "l2" if importance == "bn" else importance
        for dim, index in ((0, layer.out_index), (1, layer.in_index)):
            if dim == 1 and layer.kind == "conv" and module.groups > 1:
                continue  # grouped/depthwise input slices are counted through their output filters
            s = _scores_of(w, dim, kind)
            if index.numel() != s.numel():
                continue
            idx = torch.where(index < 0, n, index)
            contrib = s / s.mean().clamp_min(1e-12)
            if importance == "bn":
                contrib = contrib * 1e-3  # tie-breaker only where a BN scale exists
            score.index_add_(0, idx, contrib)
    return score[:n]


def alignment(round_to: int | str | None, table=None) -> int:
    """The channel multiple kept counts snap to: ``None`` -> 1 (no snapping), an int -> itself,
    ``'table'`` -> ``table.align`` (the multiple its runtime's fast kernels need; 1 without a table)."""
    if round_to is None:
        return 1
    if round_to == "table":
        return int(getattr(table, "align", 1)) if table is not None else 1
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to={round_to!r} must be None, a positive int (e.g. 8) or 'table' "
                          "(the table's align)")
    return round_to


def snap_count(k: float, size: int, multiple: int = 1) -> int:
    """Channels a group of ``size`` keeps when about ``k`` are wanted, as a multiple of ``multiple``.

    The nearest of the multiples in ``[multiple, size]`` and ``size`` itself (the unpruned group), ties
    to the larger: never 0, never above ``size``; a group no larger than the multiple keeps its size.
    ``multiple`` 1: ``round(k)`` clipped to ``[1, size]``.
    """
    if multiple <= 1:
        return max(1, min(size, int(round(k))))
    if size <= multiple:
        return size
    lower = int(math.floor(k / multiple)) * multiple
    candidates = {c for c in (lower, lower + multiple) if multiple <= c <= size} | {size}
    return min(candidates, key=lambda c: (abs(c - k), -c))


def snap_keep(graph: DependencyGraph, keep: Tensor, score: Tensor, multiple: int) -> Tensor:
    """``keep`` with each group's count snapped (:func:`snap_count`): drops its least important kept
    channels or adds its most important removed ones (by ``score``, larger = keep)."""
    keep = keep.bool().cpu()
    if multiple <= 1:
        return keep.clone()
    out = torch.zeros_like(keep)
    score = score.detach().float().cpu()
    for g in graph.groups:
        k_now = keep[g.offset:g.offset + g.size]
        k = snap_count(int(k_now.sum()), g.size, multiple)
        s = score[g.offset:g.offset + g.size]
        kept, removed = torch.nonzero(k_now).flatten(), torch.nonzero(~k_now).flatten()
        order = torch.cat([kept[s[kept].argsort(descending=True, stable=True)],
                           removed[s[removed].argsort(descending=True, stable=True)]])
        out[g.offset + order[:k]] = True
    return out


def keep_top(graph: DependencyGraph, score: Tensor, ratio: float, round_to: int = 1) -> Tensor:
    """Keep the ``1 - ratio`` most important channels of every group (at least one), snapped to multiples
    of ``round_to`` (:func:`snap_count`)."""
    keep = torch.zeros(graph.num_channels, dtype=torch.bool)
    for g in graph.groups:
        k = snap_count(g.size * (1.0 - ratio), g.size, round_to)
        top = torch.topk(score[g.offset:g.offset + g.size], k).indices
        keep[g.offset + top] = True
    return keep


def keep_for_macs(graph: DependencyGraph, score: Tensor, macs_reduction: float, tolerance: float = 0.02,
                  round_to: int = 1) -> Tensor:
    """Uniform per-group ratio, found by bisection, that removes ``macs_reduction`` (0..1) of the MACs
    (kept counts snapped to multiples of ``round_to``)."""
    if not 0.0 <= macs_reduction < 1.0:
        raise ConfigError(f"macs_reduction={macs_reduction} must be in [0, 1), e.g. 0.5 for half the MACs")
    base = graph.macs()
    goal = base * (1.0 - macs_reduction)
    lo, hi = 0.0, 1.0
    best = keep_top(graph, score, 1.0, round_to)
    if graph.macs(best) > goal * (1.0 + tolerance):
        floor = 1.0 - graph.macs(best) / base
        raise InfeasibleConstraintError(
            f"removing {macs_reduction:.0%} of the MACs is infeasible: pruning every group down to one channel "
            f"removes only {floor:.1%} (the rest sits in protected layers). Ask for at most {floor:.0%}, or unprotect layers.")
    for _ in range(30):
        mid = (lo + hi) / 2
        keep = keep_top(graph, score, mid, round_to)
        if graph.macs(keep) > goal:
            lo = mid
        else:
            hi, best = mid, keep
    return best


def prune_by_importance(model: nn.Module, graph: DependencyGraph, ratio: float = 0.5, importance: str = "l1",
                        macs_reduction: float | None = None, round_to: int | str | None = "table",
                        table=None) -> nn.Module:
    """One-shot baseline: remove the least important channels and return the materialized smaller model.

    ``ratio``: fraction of channels removed from every group (as Torch-Pruning's ``pruning_ratio``).
    ``macs_reduction``: if given, overrides ``ratio``: the fraction of MACs to remove (e.g. 0.7), reached by
    bisection over a uniform ratio. ``round_to``: kept counts snap to multiples of it (:func:`snap_count`):
    an int, ``None`` (no snapping) or ``'table'`` (the default): ``table.align``, the multiple the table's
    runtime runs on fast kernels, when a ``table`` (:class:`~pluto.cost.table.LatencyTable`) is given, else
    no snapping. ``model`` is not modified.
    """
    from pluto.materialize.prune import prune_channels

    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio={ratio} must be in [0, 1), e.g. 0.5 to remove half the channels")
    multiple = alignment(round_to, table)
    score = channel_importance(model, graph, importance)
    keep = (keep_for_macs(graph, score, macs_reduction, round_to=multiple) if macs_reduction is not None
            else keep_top(graph, score, ratio, multiple))
    return prune_channels(model, graph, keep)
