"""Turn channel-gate decisions into a physically smaller model.

:func:`materialize` copies a gated model, drops the gates and slices every layer the
dependency graph lists: Conv out/in channels (group count kept for grouped convs, reduced for
depthwise ones), Linear features, BatchNorm affine parameters and running statistics, LayerNorm affine parameters, and
tensor attributes used element-wise (layer scales, class tokens). Module qualified names and
types are unchanged, so per-layer decisions keyed by name (bit widths) still apply, and the
result computes exactly what the gated model computes in ``'hard'`` mode.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from pluto.decisions.channels.gates import detach_gates, find_gates
from pluto.decisions.channels.graph import DependencyGraph, LayerChannels
from pluto.errors import UnsupportedModelError


def materialize(model: nn.Module, round_to: int | str | None = "table", table=None) -> nn.Module:
    """A physically smaller copy of a gated ``model`` (gates removed; ``model`` itself is unchanged).

    ``round_to`` (``'table'``: ``table.align`` when a ``table`` is given, else none; an int; ``None``):
    each group's kept count snaps to a multiple the runtime runs on fast kernels
    (:func:`~pluto.decisions.channels.importance.snap_count`), dropping the least probable kept channels
    or adding the most probable removed ones. Without snapping (the default without a table) the copy
    computes exactly what the gated model computes in ``'hard'`` mode; to keep that equality with
    snapping, snap the gates themselves first (``round_gates(..., round_to=)``), which makes this a no-op.
    """
    from pluto.decisions.channels.importance import alignment, snap_keep

    gates = find_gates(model)
    keep = gates.hard_flat()
    multiple = alignment(round_to, table)
    if multiple > 1:
        keep = snap_keep(gates.graph, keep, gates.flat_probabilities().detach(), multiple)
    return prune_channels(model, gates.graph, keep)


def prune_channels(model: nn.Module, graph: DependencyGraph, keep: Tensor) -> nn.Module:
    """Copy ``model`` keeping only channels with ``keep`` (bool, one per channel of ``graph``)."""
    small = copy.deepcopy(model)
    detach_gates(small)
    keep_ext = torch.cat([keep.bool().cpu(), torch.ones(1, dtype=torch.bool)])
    n = graph.num_channels
    for layer in graph.layers.values():
        kin = keep_ext[torch.where(layer.in_index < 0, n, layer.in_index)] if layer.in_index is not None else None
        kout = keep_ext[torch.where(layer.out_index < 0, n, layer.out_index)] if layer.out_index is not None else None
        if layer.kind == "param":
            _slice_attr(small, layer, kout)
            continue
        module = small.get_submodule(layer.name)
        if layer.kind == "conv":
            _slice_conv(module, kin, kout)
        elif layer.kind == "linear":
            _slice_linear(module, kin, kout)
        elif layer.kind == "bn":
            _slice_bn(module, kout)
        elif layer.kind == "ln":
            _slice_ln(module, kout)
    return small


def _positions(mask: Tensor) -> Tensor:
    return torch.nonzero(mask).flatten()


def _set(module: nn.Module, name: str, dim: int, index: Tensor) -> None:
    """Slice parameter/buffer ``name`` of ``module`` along ``dim`` (through any parametrization)."""
    if parametrize.is_parametrized(module, name):
        plist = getattr(module.parametrizations, name)
        old = plist.original
        old_size = old.shape[dim]
        plist.original = nn.Parameter(old.detach().index_select(dim, index.to(old.device)).clone(), old.requires_grad)
        for p in plist:  # per-channel state of the parametrization (e.g. quantization scales)
            for attr, t in list(p.named_parameters(recurse=False)) + list(p.named_buffers(recurse=False)):
                if t.dim() > dim and t.shape[dim] == old_size and t.dim() >= 1:
                    new = t.detach().index_select(dim, index.to(t.device)).clone()
                    setattr(p, attr, nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter) else new)
        return
    t = getattr(module, name)
    if t is None:
        return
    new = t.detach().index_select(dim, index.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, t.requires_grad))
    else:
        setattr(module, name, new)


def _slice_conv(conv: nn.Module, kin: Tensor, kout: Tensor) -> None:
    g = conv.groups
    cin = conv.in_channels
    ipg = cin // g
    if g > 1 and ipg == 1:  # depthwise: a group survives with its input channel
        new_groups = int(kin.sum())
        _set(conv, "weight", 0, _positions(kout))
        if conv.bias is not None or parametrize.is_parametrized(conv, "bias"):
            _set(conv, "bias", 0, _positions(kout))
        conv.groups = new_groups
    else:
        within = kin.view(g, ipg)
        if g > 1 and not bool((within == within[:1]).all()):
            raise UnsupportedModelError(f"grouped conv {conv}: kept input channels differ between groups; "
                                        f"this is a pluto bug, please report it with the model")
        _set(conv, "weight", 0, _positions(kout))
        _set(conv, "weight", 1, _positions(within[0]))
        if conv.bias is not None or parametrize.is_parametrized(conv, "bias"):
            _set(conv, "bias", 0, _positions(kout))
    conv.in_channels = int(kin.sum())
    conv.out_channels = int(kout.sum())


def _slice_linear(linear: nn.Linear, kin: Tensor, kout: Tensor) -> None:
    _set(linear, "weight", 0, _positions(kout))
    _set(linear, "weight", 1, _positions(kin))
    if linear.bias is not None or parametrize.is_parametrized(linear, "bias"):
        _set(linear, "bias", 0, _positions(kout))
    linear.in_features = int(kin.sum())
    linear.out_features = int(kout.sum())


def _slice_bn(bn: nn.Module, keep: Tensor) -> None:
    idx = _positions(keep)
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(bn, name, None) is not None:
            _set(bn, name, 0, idx)
    bn.num_features = int(keep.sum())


def _slice_ln(ln: nn.LayerNorm, keep: Tensor) -> None:
    idx = _positions(keep)
    for name in ("weight", "bias"):
        if getattr(ln, name, None) is not None:
            _set(ln, name, 0, idx)
    ln.normalized_shape = (int(keep.sum()),)


def _slice_attr(model: nn.Module, layer: LayerChannels, keep: Tensor) -> None:
    owner_name, _, attr = layer.name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    _set(owner, attr, layer.dim, _positions(keep))
