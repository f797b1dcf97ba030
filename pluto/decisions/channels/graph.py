"""Channel dependency graph: which channels of which layers must be removed together.

Pruning a network with skip connections is only correct when channels tied by the data flow are
removed together: the tensors summed by a residual add, the outputs of a producer and the inputs of
every consumer, the in/out channels of a depthwise conv, a channel and its squeeze-excitation scale.
:mod:`pluto.decisions.channels.labels` finds those ties by tracing the model with ``torch.fx`` and
propagating channel labels; this module turns them into groups.

Each union-find class of labels is one prunable channel; classes owned by the same set of producer
layers form a :class:`ChannelGroup` (e.g. the 64 channels of a ResNet stage: the stem, every block's
last conv and BN, every block's first conv's inputs). Every layer then carries, per position of its
in/out channel dimension, a *global channel index* into the flat vector of all prunable channels
(``-1``: never pruned). Gates, importance criteria and the materializer all read these indices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import Tensor, nn

from pluto.decisions.channels.labels import PROTECTED, _is_tensor, _LabelPropagator, _ModelRunError, _UnionFind, trace
from pluto.errors import UnsupportedModelError

__all__ = ["ChannelGroup", "DependencyGraph", "LayerChannels", "PROTECTED", "trace"]


@dataclass
class ChannelGroup:
    """Channels that must be kept or removed together, in every layer listed.

    ``size`` channels occupy positions ``offset .. offset + size - 1`` of the flat vector of
    all prunable channels (the order of :attr:`DependencyGraph.groups`).
    """

    id: int
    size: int
    offset: int
    producers: list[str] = field(default_factory=list)  # layers whose output channels these are
    consumers: list[str] = field(default_factory=list)  # layers that read them as input channels
    norms: list[str] = field(default_factory=list)      # BatchNorms / parameters sliced with them

    @property
    def layers(self) -> list[str]:
        return sorted(set(self.producers) | set(self.consumers) | set(self.norms))


@dataclass
class LayerChannels:
    """How one layer's channel dimensions map onto global channel indices (-1: never pruned).

    ``kind`` is 'conv', 'linear', 'bn', 'ln' (LayerNorm over channels; ``dim`` is the channel dim of
    its input) or 'param' (a tensor attribute used element-wise, e.g. a layer-scale or class token,
    sliced along ``dim``). ``macs`` is the layer's
    multiply-accumulates per sample on the example input.
    """

    name: str
    kind: str
    in_index: Tensor | None = None
    out_index: Tensor | None = None
    dim: int = 0
    macs: float = 0.0
    groups: int = 1


class DependencyGraph:
    """Coupled channel groups of a model, found by ``torch.fx`` tracing (see module docstring).

    Attributes: ``groups`` (list of :class:`ChannelGroup`), ``layers`` (module/parameter name ->
    :class:`LayerChannels`), ``node_channels`` (torch.fx node name -> (in, out) global channel
    indices along the node's channel axis), ``num_channels`` (length of the flat channel vector),
    ``other_macs`` (MACs per sample no prunable layer accounts for, e.g. attention matmuls).
    """

    def __init__(self, groups: list[ChannelGroup], layers: dict[str, LayerChannels],
                 node_channels: dict[str, tuple[Tensor, Tensor]], other_macs: float) -> None:
        self.groups = groups
        self.layers = layers
        self.node_channels = node_channels
        self.num_channels = sum(g.size for g in groups)
        self.other_macs = other_macs

    def __repr__(self) -> str:
        return f"DependencyGraph({len(self.groups)} groups, {self.num_channels} prunable channels, {len(self.layers)} layers)"

    @classmethod
    def build(cls, model: nn.Module, example_input: Tensor | tuple[Tensor, ...], protect: Iterable[str] = ()) -> "DependencyGraph":
        """Trace ``model`` and group its coupled channels.

        ``example_input``: a batch the model accepts (only its first sample is used). ``protect``:
        qualified names of layers whose output channels must never be pruned (the classifier output and
        the input are always protected). The model is traced in eval mode (its inference graph; train-only
        branches such as auxiliary classifiers are not pruned, so build them without those) and its mode
        is restored afterwards.
        """
        was_training = model.training
        model.eval()  # the inference graph: no train-only branches, BatchNorm works on one sample
        try:
            gm = trace(model)
            inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
            inputs = tuple(x[:1] if _is_tensor(x) and x.dim() > 0 else x for x in inputs)
            uf = _UnionFind()
            prop = _LabelPropagator(gm, uf, model)
            with torch.no_grad():
                prop.run(*inputs)
        except _ModelRunError as exc:
            raise UnsupportedModelError(
                f"running {type(model).__name__} on the example input failed at {exc}. Fix: pass an "
                f"example_input of the shape the model expects (e.g. torch.randn(1, 3, 64, 64))."
            ) from exc
        finally:
            model.train(was_training)
        for name in protect:
            rec = prop.layers.get(name)
            if rec is None:
                raise UnsupportedModelError(f"protect names {name!r}, which is no conv/linear/bn layer of the traced model; "
                                            f"fix the name (qualified module name, e.g. 'fc' or 'layer1.0.conv1').")
            uf.protect(rec["out"])
        return cls._from_labels(uf, prop, prop.other_macs)

    @classmethod
    def _from_labels(cls, uf: _UnionFind, prop: _LabelPropagator, other_macs: float) -> "DependencyGraph":
        space_of = torch.tensor(uf.space, dtype=torch.long)
        producer_spaces = [i for i, (_, kind) in enumerate(prop.spaces) if kind == "producer"]
        for _ in range(4):  # protecting an unsliceable parameter can change groups; repeat until stable
            roots = uf.roots()
            producer_space = torch.zeros(len(prop.spaces) + 1, dtype=torch.bool)
            producer_space[torch.tensor(producer_spaces, dtype=torch.long)] = True
            is_producer = producer_space[space_of]
            ids = torch.nonzero(is_producer & (roots != PROTECTED)).flatten()
            r = roots[ids]
            # signature of a class = the set of producer spaces its members come from
            sig: dict[int, set[int]] = {}
            for root, sp in torch.unique(torch.stack([r, space_of[ids]], 1), dim=0).tolist():
                sig.setdefault(root, set()).add(sp)
            first_id: dict[int, int] = {}
            for root, i in zip(r.tolist(), ids.tolist()):
                if root not in first_id:
                    first_id[root] = i
            by_sig: dict[frozenset[int], list[int]] = {}
            for root in sorted(sig, key=lambda x: first_id[x]):
                by_sig.setdefault(frozenset(sig[root]), []).append(root)
            root_to_g = torch.full((len(roots),), -1, dtype=torch.long)
            ordered = sorted(by_sig.values(), key=lambda rs: first_id[rs[0]])
            offset = 0
            groups: list[ChannelGroup] = []
            for gid, rs in enumerate(ordered):
                root_to_g[torch.tensor(rs)] = torch.arange(offset, offset + len(rs))
                groups.append(ChannelGroup(gid, len(rs), offset))
                offset += len(rs)
            gidx = root_to_g[roots]
            unsliceable = []
            param_dims: dict[str, tuple[int, Tensor]] = {}
            for pname, lab in prop.params.items():
                g = gidx[lab]
                if not bool((g >= 0).any()):
                    continue
                dim = _slice_dim(g)
                if dim is None:
                    unsliceable.append(lab)
                else:
                    param_dims[pname] = (dim, g.movedim(dim, 0).reshape(g.shape[dim], -1)[:, 0].clone())
            if not unsliceable:
                break
            for lab in unsliceable:
                uf.protect(lab)
        layers: dict[str, LayerChannels] = {}
        for name, rec in prop.layers.items():
            layers[name] = LayerChannels(name, rec["kind"], gidx[rec["in"]], gidx[rec["out"]], macs=rec["macs"],
                                         groups=rec.get("groups", 1), dim=rec.get("dim", 0))
        for pname, (dim, idx) in param_dims.items():
            layers[pname] = LayerChannels(pname, "param", idx, idx, dim=dim)
        for layer in layers.values():
            for gid in _groups_of(layer.out_index, groups):
                if layer.kind in ("conv", "linear"):
                    groups[gid].producers.append(layer.name)
                else:
                    groups[gid].norms.append(layer.name)
            if layer.kind in ("conv", "linear"):
                for gid in _groups_of(layer.in_index, groups):
                    groups[gid].consumers.append(layer.name)
        node_channels: dict[str, tuple[Tensor, Tensor]] = {}
        for name, (i_ids, o_ids) in prop.node_channels.items():
            i_idx, o_idx = gidx[i_ids], gidx[o_ids]
            if bool((i_idx >= 0).any()) or bool((o_idx >= 0).any()):
                node_channels[name] = (i_idx, o_idx)
        for name, layer in layers.items():
            if prop.layers.get(name, {}).get("functional"):
                continue  # traced through: its ops already have their own node names
            if layer.kind in ("conv", "linear", "bn", "ln") and (bool((layer.in_index >= 0).any()) or bool((layer.out_index >= 0).any())):
                node_channels[name] = (layer.in_index, layer.out_index)
        return cls(groups, layers, node_channels, other_macs)

    # -- queries used by gates, importance and the materializer -----------------------------
    def group_of(self, channel: int) -> int:
        for g in self.groups:
            if g.offset <= channel < g.offset + g.size:
                return g.id
        raise IndexError(channel)

    def macs(self, keep: Tensor | None = None) -> float:
        """MACs per sample of the example input if only channels with ``keep`` (bool, flat) remain."""
        total = self.other_macs
        keep_ext = torch.ones(self.num_channels + 1) if keep is None else torch.cat([keep.float(), torch.ones(1)])
        n = self.num_channels
        for layer in self.layers.values():
            if layer.kind not in ("conv", "linear"):
                continue
            kin = keep_ext[torch.where(layer.in_index < 0, n, layer.in_index)]
            kout = keep_ext[torch.where(layer.out_index < 0, n, layer.out_index)]
            fin = float(kin.mean()) if kin.numel() else 1.0
            fout = float(kout.mean()) if kout.numel() else 1.0
            if layer.groups > 1 and layer.in_index.numel() == layer.groups:  # depthwise: one input per group
                fin = 1.0
            total += layer.macs * fin * fout
        return total


def _slice_dim(g: Tensor) -> int | None:
    """The one dim along which a parameter's channel indices vary, or None when that dim does not exist."""
    for d in range(g.dim()):
        if g.shape[d] < 2:
            continue
        line = g.movedim(d, -1).reshape(-1, g.shape[d])[0]
        shape = [1] * g.dim()
        shape[d] = g.shape[d]
        if bool((g == line.view(shape)).all()):
            return d
    return None


def _groups_of(index: Tensor | None, groups: list[ChannelGroup]) -> list[int]:
    if index is None:
        return []
    idx = torch.unique(index[index >= 0])
    if not idx.numel():
        return []
    offsets = torch.tensor([g.offset for g in groups])
    return sorted(set((torch.searchsorted(offsets, idx, right=True) - 1).tolist()))
