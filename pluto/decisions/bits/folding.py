"""BatchNorm folding: which conv feeds which BN, and the folded conv weights.

At inference a BN after a conv is an affine map per output channel, so it can be merged into
the conv: ``w' = w * f``, ``b' = (b - mean) * f + beta`` with ``f = gamma / sqrt(var + eps)``.
Quantizing ``w'`` (not ``w``) is what an int8 runtime executes, so QAT quantizes the folded
weight (see :class:`~pluto.decisions.bits.choice.BitWidthChoice`) and export folds for real.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import Tensor, nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_FOLDABLE = (nn.Conv2d, nn.Conv1d, nn.Linear)


def _pairs_by_tracing(model: nn.Module) -> dict[str, str]:
    graph = fx.symbolic_trace(model).graph
    pairs: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _BN):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(model.get_submodule(src.target), _FOLDABLE)):
            pairs[src.target] = node.target
    return pairs


def _pairs_by_order(model: nn.Module) -> dict[str, str]:
    """Fallback for untraceable models: a conv immediately followed by a BN in the same ``nn.Sequential``."""
    pairs: dict[str, str] = {}
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, _FOLDABLE) and isinstance(b, _BN):
                prefix = f"{parent_name}." if parent_name else ""
                pairs[prefix + name_a] = prefix + name_b
    return pairs


def conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Qualified name of each conv/linear whose only consumer is a BatchNorm -> that BN's name.

    Found by ``torch.fx`` tracing; models that cannot be traced fall back to "conv then BN in
    the same ``nn.Sequential``". Only pairs whose channel counts match are returned.
    """
    try:
        pairs = _pairs_by_tracing(model)
    except Exception:  # fx raises many types on data-dependent control flow
        pairs = _pairs_by_order(model)
    out = {}
    for conv_name, bn_name in pairs.items():
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        width = conv.out_features if isinstance(conv, nn.Linear) else conv.out_channels
        if bn.num_features == width and bn.track_running_stats and bn.running_var is not None:
            out[conv_name] = bn_name
    return out


@torch.no_grad()
def folded_weight_and_bias(weight: Tensor, bias: Tensor | None, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """The conv weight and bias with ``bn`` (in inference form, running statistics) merged in."""
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)
    bias = torch.zeros_like(bn.running_mean) if bias is None else bias
    w = weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    return w, (bias - bn.running_mean) * factor + beta


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


@torch.no_grad()
def fold_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A float model with every conv->BN pair merged into the conv and the BN replaced by ``nn.Identity``.

    Equal to ``model`` in eval mode (up to float rounding). Use on float models; quantized models
    are folded by :func:`pluto.materialize.export.export_onnx`.
    """
    model = model if inplace else copy.deepcopy(model)
    for conv_name, bn_name in conv_bn_pairs(model).items():
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        w, b = folded_weight_and_bias(conv.weight, conv.bias, bn)
        conv.weight.copy_(w)
        if conv.bias is None:
            conv.bias = nn.Parameter(b)
        else:
            conv.bias.copy_(b)
        _set_submodule(model, bn_name, nn.Identity())
    return model
