"""Channel importance criteria and one-shot pruning (the baselines learnable gates are compared with).

Scores are summed over every layer a channel lives in (as in DepGraph): the producer's output
filter, the consumers' input slices and, for ``'bn'``, the BatchNorm scale. Each layer's scores are
divided by their mean first, so a wide layer does not drown a narrow one.

- ``'l1'`` / ``'l2'``: weight magnitude (Li et al., 2017),
- ``'bn'``: |BatchNorm gamma| (network slimming, Liu et al., 2017); channels without a BN fall back to l2,
- ``'taylor'``: first-order Taylor |w * dL/dw| (Molchanov et al., 2019); run ``loss.backward()`` first.
"""
from __future__ import annotations

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


def keep_top(graph: DependencyGraph, score: Tensor, ratio: float) -> Tensor:
    """Keep the ``1 - ratio`` most important channels of every group (at least one)."""
    keep = torch.zeros(graph.num_channels, dtype=torch.bool)
    for g in graph.groups:
        k = max(1, int(round(g.size * (1.0 - ratio))))
        top = torch.topk(score[g.offset:g.offset + g.size], k).indices
        keep[g.offset + top] = True
    return keep


def keep_for_macs(graph: DependencyGraph, score: Tensor, macs_reduction: float, tolerance: float = 0.02) -> Tensor:
    """Uniform per-group ratio, found by bisection, that removes ``macs_reduction`` (0..1) of the MACs."""
    if not 0.0 <= macs_reduction < 1.0:
        raise ConfigError(f"macs_reduction={macs_reduction} must be in [0, 1), e.g. 0.5 for half the MACs")
    base = graph.macs()
    goal = base * (1.0 - macs_reduction)
    lo, hi = 0.0, 1.0
    best = keep_top(graph, score, 1.0)
    if graph.macs(best) > goal * (1.0 + tolerance):
        floor = 1.0 - graph.macs(best) / base
        raise InfeasibleConstraintError(
            f"removing {macs_reduction:.0%} of the MACs is infeasible: pruning every group down to one channel "
            f"removes only {floor:.1%} (the rest sits in protected layers). Ask for at most {floor:.0%}, or unprotect layers.")
    for _ in range(30):
        mid = (lo + hi) / 2
        keep = keep_top(graph, score, mid)
        if graph.macs(keep) > goal:
            lo = mid
        else:
            hi, best = mid, keep
    return best


def prune_by_importance(model: nn.Module, graph: DependencyGraph, ratio: float = 0.5, importance: str = "l1",
                        macs_reduction: float | None = None) -> nn.Module:
    """One-shot baseline: remove the least important channels and return the materialized smaller model.

    ``ratio``: fraction of channels removed from every group (as Torch-Pruning's ``pruning_ratio``).
    ``macs_reduction``: if given, overrides ``ratio``: the fraction of MACs to remove (e.g. 0.7), reached by
    bisection over a uniform ratio. ``model`` is not modified.
    """
    from pluto.materialize.prune import prune_channels

    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio={ratio} must be in [0, 1), e.g. 0.5 to remove half the channels")
    score = channel_importance(model, graph, importance)
    keep = keep_for_macs(graph, score, macs_reduction) if macs_reduction is not None else keep_top(graph, score, ratio)
    return prune_channels(model, graph, keep)
