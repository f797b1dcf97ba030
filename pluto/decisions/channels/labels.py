"""Channel labels: run a traced model once while naming the channel of every value.

Beside every activation the propagator keeps a *label tensor*: an int64 tensor of the activation's
shape whose entries name the channel each value belongs to. Conv/Linear layers start fresh labels on
their output channels; shape operations (view, permute, cat, chunk, getitem, flatten, the reshapes of a
channel shuffle, PixelShuffle) are replayed on the labels as they are; element-wise ops between two tensors unite
the labels they combine (union-find). Every op the rules do not know unites its inputs' labels with the
reserved ``PROTECTED`` label, so an unknown op can make pruning less aggressive but never wrong. The
network input and output are protected too (the classifier's output is never pruned).
:class:`pluto.decisions.channels.graph.DependencyGraph` turns the resulting classes into groups.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Interpreter, Node, Tracer
from torch.fx.node import map_aggregate
from torch.utils.flop_counter import FlopCounterMode

from pluto.errors import UnsupportedModelError

PROTECTED = 0  # the label that may never be pruned (network input/output, unknown ops)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardtanh, nn.Softplus,
)
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)
_SHAPE_MODULES = (nn.Flatten, nn.Unflatten)
_SHUFFLE_MODULES = (nn.PixelShuffle, nn.PixelUnshuffle)
_SHUFFLE_FUNCS = {F.pixel_shuffle: "pixel_shuffle", F.pixel_unshuffle: "pixel_unshuffle",
                  torch.pixel_shuffle: "pixel_shuffle", torch.pixel_unshuffle: "pixel_unshuffle"}

_UNARY_FUNCS = {
    F.relu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.mish, F.elu,
    F.leaky_relu, F.dropout, F.dropout1d, F.dropout2d, F.sigmoid, F.tanh, torch.relu, torch.sigmoid,
    torch.tanh, torch.clamp, torch.exp, operator.neg, torch.neg, F.softplus,
}
_UNARY_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "float", "half",
    "double", "bfloat16", "to", "type_as", "detach", "clamp", "clamp_", "neg", "exp", "hardswish",
}
_BINARY_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
    operator.isub, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_SHAPE_FUNCS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.cat, torch.concat,
    torch.stack, torch.chunk, torch.split, operator.getitem, torch.squeeze, torch.unsqueeze,
    torch.narrow, torch.unflatten, torch.swapaxes,
}
_SHAPE_METHODS = {
    "view", "reshape", "permute", "transpose", "flatten", "chunk", "split", "squeeze", "unsqueeze",
    "expand", "unflatten", "narrow", "select", "swapaxes", "repeat",
}
_SPATIAL_FUNCS = {
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.interpolate, F.pad,
}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}


class _UnionFind:
    """Union-find over integer labels; the smaller label becomes the root, so 0 stays PROTECTED's root."""

    def __init__(self) -> None:
        self.parent: list[int] = [PROTECTED]
        self.space: list[int] = [-1]
        self.marked = torch.zeros(1024, dtype=torch.bool)

    def new(self, shape: tuple[int, ...] | torch.Size, space: int) -> Tensor:
        n = 1
        for s in shape:
            n *= int(s)
        start = len(self.parent)
        if start + n > self.marked.numel():
            grown = torch.zeros(max(2 * self.marked.numel(), start + n), dtype=torch.bool)
            grown[: self.marked.numel()] = self.marked
            self.marked = grown
        self.parent.extend(range(start, start + n))
        self.space.extend([space] * n)
        return torch.arange(start, start + n, dtype=torch.long).view(*shape) if n else torch.zeros(shape, dtype=torch.long)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_pairs(self, a: Tensor, b: Tensor) -> None:
        a, b = a.reshape(-1), b.reshape(-1)
        differ = a != b
        if not bool(differ.any()):
            return
        k = len(self.parent)
        keys = torch.unique(a[differ] * k + b[differ])
        for x, y in zip((keys // k).tolist(), (keys % k).tolist()):
            self.union(x, y)

    def protect(self, labels: Tensor) -> None:
        """Mark labels as never prunable; applied to their whole class in :meth:`roots`."""
        self.marked[labels.reshape(-1)] = True

    def roots(self) -> Tensor:
        """Class id of every label (pointer jumping); classes holding a protected label map to PROTECTED."""
        parent = torch.tensor(self.parent, dtype=torch.long)
        while True:
            nxt = parent[parent]
            if torch.equal(nxt, parent):
                break
            parent = nxt
        bad = torch.zeros(len(parent), dtype=torch.bool)
        bad[parent[self.marked[: len(parent)]]] = True
        bad[PROTECTED] = True
        return torch.where(bad[parent], PROTECTED, parent)


class _RecordingTracer(Tracer):
    """The default ``torch.fx`` tracer (same node names as ``symbolic_trace``) that remembers
    which module it was inside, so a tracing failure can name the culprit."""

    def __init__(self) -> None:
        super().__init__()
        self.path: list[str] = []
        self.failed_at: str | None = None

    def call_module(self, m, forward, args, kwargs):
        self.path.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:  # the innermost module is the culprit
                self.failed_at = self.path[-1]
            raise
        finally:
            self.path.pop()


def trace(model: nn.Module) -> GraphModule:
    """``torch.fx.symbolic_trace`` that raises :class:`UnsupportedModelError` naming the untraceable module."""
    tracer = _RecordingTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, RuntimeError...)
        where = tracer.failed_at or "<top level forward>"
        mod = model.get_submodule(where) if tracer.failed_at else model
        raise UnsupportedModelError(
            f"torch.fx cannot trace {type(model).__name__}: module '{where}' ({type(mod).__name__}) "
            f"failed with {type(exc).__name__}: {exc}. Fix: remove data-dependent Python control flow from "
            f"that module's forward, or decorate the offending function with torch.fx.wrap so it is kept "
            f"as one opaque call (its channels are then left unpruned)."
        ) from exc
    return GraphModule(tracer.root, graph, type(model).__name__)


def _is_tensor(x: Any) -> bool:
    return isinstance(x, Tensor)


def _tensors(x: Any) -> list[Tensor]:
    out: list[Tensor] = []
    map_aggregate(x, lambda a: out.append(a) if _is_tensor(a) else None)
    return out


def _zeros_like(x: Any) -> Any:
    return map_aggregate(x, lambda a: torch.zeros(a.shape, dtype=torch.long) if _is_tensor(a) else None)


def _per_position(lab: Tensor, dim: int, uf: _UnionFind) -> Tensor:
    """Labels along ``dim`` (one per channel); labels that vary along the other dims are united."""
    moved = lab.movedim(dim, 0).reshape(lab.shape[dim], -1)
    first = moved[:, 0]
    uf.union_pairs(first[:, None].expand_as(moved), moved)
    return first.clone()


def _along(ids: Tensor, dim: int, shape: torch.Size) -> Tensor:
    """Broadcast per-channel ``ids`` along ``dim`` of a tensor of ``shape`` (contiguous)."""
    view = [1] * len(shape)
    view[dim] = ids.numel()
    return ids.view(view).expand(shape).contiguous()


class _LabelPropagator(Interpreter):
    """Runs the traced model while propagating channel labels (see module docstring)."""

    def __init__(self, gm: GraphModule, uf: _UnionFind, root: nn.Module) -> None:
        super().__init__(gm)
        self.root = root  # the original model (a GraphModule keeps only the submodules it calls)
        self.uf = uf
        self.flops = FlopCounterMode(display=False)
        self.other_macs = 0.0  # per sample (the propagator runs one sample)
        self.lab: dict[Node, Any] = {}
        self.layers: dict[str, dict[str, Any]] = {}
        self.params: dict[str, Tensor] = {}
        self.node_channels: dict[str, tuple[Tensor, Tensor]] = {}
        self.spaces: list[tuple[str, str]] = []  # space id -> (layer name, kind)
        self.protect_outputs: set[str] = set()

    # -- helpers ---------------------------------------------------------------------------
    def _space(self, name: str, kind: str) -> int:
        self.spaces.append((name, kind))
        return len(self.spaces) - 1

    def _label_of(self, a: Any) -> Any:
        if isinstance(a, Node):
            lab = self.lab.get(a)
            return lab if lab is not None else self.env[a]
        return a

    def _block(self, n: Node, out: Any) -> Any:
        """An op the rules do not understand: its inputs' channels are never pruned."""
        for a in n.all_input_nodes:
            for t in _tensors(self.lab.get(a)):
                self.uf.protect(t)
        return _zeros_like(out)

    def _input_labels(self, n: Node) -> Tensor | None:
        a = n.args[0] if n.args else None
        lab = self.lab.get(a) if isinstance(a, Node) else None
        return lab if _is_tensor(lab) else None

    # -- main hook -------------------------------------------------------------------------
    def run_node(self, n: Node) -> Any:
        counted = n.op in ("call_function", "call_method") or (
            n.op == "call_module" and not isinstance(self.module.get_submodule(str(n.target)), (*_CONV, nn.Linear)))
        try:
            if counted:  # MACs of ops other than Conv/Linear modules (those are computed from shapes)
                with self.flops:
                    out = super().run_node(n)
                self.other_macs += self.flops.get_total_flops() / 2.0
            else:
                out = super().run_node(n)
        except Exception as exc:
            raise _ModelRunError(f"node {n.name!r} ({n.op} {n.target}): {type(exc).__name__}: {exc}") from exc
        lab = self._rule(n, out)
        self.lab[n] = lab
        if _is_tensor(lab) and lab.dim() >= 2 and n.op in ("call_function", "call_method", "call_module"):
            axis = _channel_axis(lab)
            ids = lab.movedim(axis, 0).reshape(lab.shape[axis], -1)[:, 0].clone()
            key = str(n.target) if n.op == "call_module" else n.name
            if key not in self.layers:
                self.node_channels[key] = (ids, ids)
        for dead in self.user_to_last_uses.get(n, []):
            self.lab.pop(dead, None)
        return out

    def _rule(self, n: Node, out: Any) -> Any:
        if n.op == "output":
            for t in _tensors(map_aggregate(n.args, self._label_of)):
                self.uf.protect(t)
            return None
        if not _tensors(out):
            return None
        if n.op == "placeholder":
            return _zeros_like(out)
        if n.op == "get_attr":
            if not (_is_tensor(out) and out.is_floating_point()):
                return None
            lab = self.uf.new(out.shape, self._space(str(n.target), "param"))
            self.params[str(n.target)] = lab
            return lab
        if n.op == "call_module":
            return self._module_rule(n, self.module.get_submodule(str(n.target)), out)
        target = n.target
        is_method = n.op == "call_method"
        if (not is_method and target in _UNARY_FUNCS) or (is_method and target in _UNARY_METHODS):
            return self._unary(n, out)
        if (not is_method and target in _BINARY_FUNCS) or (is_method and target in _BINARY_METHODS):
            return self._binary(n, out)
        if (not is_method and target in _SHAPE_FUNCS) or (is_method and target in _SHAPE_METHODS):
            return self._replay(n, out)
        if not is_method and target in _SPATIAL_FUNCS:
            return self._spatial(n, out)
        if not is_method and target in _SHUFFLE_FUNCS:
            factor = n.args[1] if len(n.args) > 1 else n.kwargs.get("upscale_factor", n.kwargs.get("downscale_factor"))
            return self._pixel_shuffle(n, out, _SHUFFLE_FUNCS[target] == "pixel_shuffle", int(factor))
        if (not is_method and target in _REDUCE_FUNCS) or (is_method and target in _REDUCE_METHODS):
            return self._reduce(n, out)
        if (not is_method and target in (F.softmax, F.log_softmax, torch.softmax)) or (is_method and target == "softmax"):
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else -1)
            return self._mix_along(n, out, dim)
        if not is_method and target is F.layer_norm:
            stack = n.meta.get("nn_module_stack") or {}
            owner_name = next(reversed(stack)) if stack else None
            owner = self.root.get_submodule(owner_name) if owner_name else None
            if isinstance(owner, nn.LayerNorm) and type(owner) is not nn.LayerNorm:
                return self._layer_norm(n, out, owner_name, owner, dim=1, functional=True)  # e.g. LayerNorm2d
            shape = n.args[1] if len(n.args) > 1 else n.kwargs["normalized_shape"]
            return self._mix_along(n, out, *range(-len(shape), 0))
        if getattr(target, "__name__", "") == "stochastic_depth":
            return self._unary(n, out)
        return self._block(n, out)

    # -- rules -----------------------------------------------------------------------------
    def _unary(self, n: Node, out: Tensor) -> Any:
        lab = self._input_labels(n)
        if lab is None or not _is_tensor(out) or lab.shape != out.shape:
            return self._block(n, out)
        return lab

    def _binary(self, n: Node, out: Tensor) -> Any:
        if not _is_tensor(out):
            return self._block(n, out)
        operands = [a for a in list(n.args[:2]) + [n.kwargs.get("other")] if a is not None]
        labs = []
        for a in operands:
            if isinstance(a, Node) and _is_tensor(self.env.get(a)):
                lab = self.lab.get(a)
                if not _is_tensor(lab):
                    return self._block(n, out)
                labs.append(torch.broadcast_to(lab, out.shape))
        if not labs:
            return _zeros_like(out)
        for other in labs[1:]:
            self.uf.union_pairs(labs[0], other)
        return labs[0].contiguous()

    def _replay(self, n: Node, out: Any) -> Any:
        """Shape ops run on the labels as they are; where the pruned model would cut differently, tie or protect.

        A pruned model recomputes split sizes from its (smaller) channel count: ``chunk``/``split`` into
        equal pieces and ``view`` splitting a channel dim into (groups, channels per group), as in a channel
        shuffle. Those stay exact only if every piece keeps the same positions, so positions are tied across
        pieces. Indexing into a channel dim, or uneven pieces, would not survive pruning: those channels are
        protected.
        """
        def real(a: Any) -> Any:
            return map_aggregate(a, lambda x: self.env[x] if isinstance(x, Node) else x)
        if n.target in (torch.cat, torch.concat, torch.stack):
            args = (map_aggregate(n.args[0], self._label_of),) + tuple(real(a) for a in n.args[1:])
        else:
            args = (self._label_of(n.args[0]),) + tuple(real(a) for a in n.args[1:])
        kwargs = real(n.kwargs)
        try:
            if n.op == "call_method":
                res = getattr(args[0], n.target)(*args[1:], **kwargs)
            else:
                res = n.target(*args, **kwargs)
        except Exception:
            return self._block(n, out)
        res = map_aggregate(res, lambda t: t.contiguous() if _is_tensor(t) else t)
        if [t.shape for t in _tensors(res)] != [t.shape for t in _tensors(out)]:
            return self._block(n, out)
        src = args[0]
        if not _is_tensor(src) or n.target in (torch.cat, torch.concat, torch.stack):
            return res
        name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
        varying = [d for d in range(src.dim()) if _varies(src, d)]
        if not varying:
            return res
        if name in ("view", "reshape", "unflatten") and _is_tensor(res):
            sizes = list(n.args[1:]) if name != "unflatten" else []
            if name == "reshape" and n.op == "call_function" or (len(sizes) == 1 and isinstance(sizes[0], (list, tuple))):
                sizes = list(sizes[-1]) if sizes and isinstance(sizes[-1], (list, tuple)) else sizes
            for gi, gj in _reshape_groups(list(src.shape), list(res.shape)):
                gi = [d for d in gi if src.shape[d] > 1]
                gj = [d for d in gj if res.shape[d] > 1]
                if not any(d in varying for d in gi) or (len(gi) <= 1 and len(gj) <= 1) or len(gj) <= 1:
                    continue
                if len(gi) > 1:  # split and merge at once: no safe rule
                    return self._block(n, out)
                last = sizes[gj[-1]] if len(sizes) == res.dim() else None
                if not (isinstance(last, Node) or last == -1):  # per-piece size fixed in the code: cannot shrink
                    return self._block(n, out)
                for d in gj[:-1]:
                    self.uf.union_pairs(res.narrow(d, 0, 1).expand_as(res), res)
            return res
        if name in ("chunk", "split"):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0) % src.dim()
            pieces = list(res)
            if dim in varying:
                if len({p.shape[dim] for p in pieces}) != 1 or (name == "split" and not isinstance(args[1], int)):
                    return self._block(n, out)
                for p in pieces[1:]:
                    self.uf.union_pairs(pieces[0], p)
            return res
        if name in ("getitem", "narrow", "select"):
            touched = _indexed_dims(src.dim(), args[1:]) if name == "getitem" else {args[1] % src.dim()}
            if touched & set(varying):
                return self._block(n, out)
        return res

    def _spatial(self, n: Node, out: Tensor) -> Any:
        lab = self._input_labels(n)
        if lab is None or not _is_tensor(out) or lab.dim() < 3 or out.shape[:2] != lab.shape[:2]:
            return self._block(n, out)
        ids = _per_position(lab, 1, self.uf)
        return _along(ids, 1, out.shape)

    def _pixel_shuffle(self, n: Node, out: Tensor, up: bool, r: int) -> Any:
        """PixelShuffle folds channels ``c*r^2 .. c*r^2 + r^2 - 1`` into output channel ``c``: those ``r^2`` are
        tied, so the producer is pruned in groups of ``r^2`` and the shuffle stays valid with fewer channels.
        PixelUnshuffle spreads channel ``c`` over ``r^2`` output channels, all carrying ``c``'s label."""
        lab = self._input_labels(n)
        if lab is None or not _is_tensor(out) or lab.dim() != 4:
            return self._block(n, out)
        res = (F.pixel_shuffle if up else F.pixel_unshuffle)(lab, r).contiguous()
        if res.shape != out.shape:
            return self._block(n, out)
        if not up:
            return res
        return _along(_per_position(res, 1, self.uf), 1, out.shape)

    def _reduce(self, n: Node, out: Tensor) -> Any:
        lab = self._input_labels(n)
        dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        if lab is None or not _is_tensor(out) or dims is None:
            return self._block(n, out)
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = sorted(d % lab.dim() for d in dims)
        reduced = lab
        for d in dims:
            first = reduced.narrow(d, 0, 1)
            self.uf.union_pairs(first.expand_as(reduced), reduced)
            reduced = first
        keepdim = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
        if not keepdim:
            for d in reversed(dims):
                reduced = reduced.squeeze(d)
        if reduced.shape != out.shape:
            return self._block(n, out)
        return reduced.contiguous()

    def _mix_along(self, n: Node, out: Tensor, *dims: int) -> Any:
        """Ops that mix values along ``dims`` (softmax, layer norm): labels there are protected."""
        lab = self._input_labels(n)
        if lab is None or not _is_tensor(out) or lab.shape != out.shape:
            return self._block(n, out)
        for d in dims:
            if lab.shape[d] > 1:
                self.uf.protect(lab)
        return lab

    def _module_rule(self, n: Node, mod: nn.Module, out: Any) -> Any:
        name = str(n.target)
        lab = self._input_labels(n)
        if isinstance(mod, _CONV) and lab is not None and len(n.args) == 1 and not n.kwargs:
            return self._conv(name, mod, lab, out)
        if isinstance(mod, nn.Linear) and lab is not None and len(n.args) == 1 and not n.kwargs:
            return self._linear(name, mod, lab, out)
        if isinstance(mod, _BN) and lab is not None:
            ids = _per_position(lab, 1, self.uf)
            rec = self.layers.get(name)
            if rec is not None:
                self.uf.union_pairs(rec["in"], ids)
            self.layers[name] = {"kind": "bn", "in": ids, "out": ids, "macs": 0.0}
            return lab
        if isinstance(mod, nn.LayerNorm):
            return self._layer_norm(n, out, name, mod, dim=-1, functional=False)
        if isinstance(mod, nn.GroupNorm):
            return self._mix_along(n, out, 1)
        if isinstance(mod, nn.Softmax):
            return self._mix_along(n, out, mod.dim if mod.dim is not None else -1)
        if isinstance(mod, nn.PReLU) and mod.num_parameters == 1:
            return self._unary(n, out)
        if isinstance(mod, _UNARY_MODULES) and not isinstance(mod, nn.PReLU):
            return self._unary(n, out)
        if isinstance(mod, _SPATIAL_MODULES):
            return self._spatial(n, out)
        if isinstance(mod, _SHUFFLE_MODULES):
            up = isinstance(mod, nn.PixelShuffle)
            return self._pixel_shuffle(n, out, up, mod.upscale_factor if up else mod.downscale_factor)
        if isinstance(mod, _SHAPE_MODULES) and lab is not None:
            res = mod(lab).contiguous()
            return res if res.shape == out.shape else self._block(n, out)
        return self._block(n, out)

    def _layer_norm(self, n: Node, out: Tensor, name: str, mod: nn.LayerNorm, dim: int, functional: bool) -> Any:
        """LayerNorm over the channel dim: prunable, because the gates recompute its statistics over kept
        channels only (a forward hook). ``dim`` is the channel dim of the LayerNorm module's own input."""
        lab = self._input_labels(n)
        if lab is None or not _is_tensor(out) or lab.shape != out.shape or len(mod.normalized_shape) != 1:
            return self._mix_along(n, out, -1)
        ids = _per_position(lab, lab.dim() - 1, self.uf)
        rec = self.layers.get(name)
        if rec is not None:
            self.uf.union_pairs(rec["in"], ids)
        self.layers[name] = {"kind": "ln", "in": ids, "out": ids, "macs": 0.0, "dim": dim, "functional": functional}
        return lab

    def _conv(self, name: str, mod: nn.Conv2d, lab: Tensor, out: Tensor) -> Tensor:
        uf = self.uf
        in_ids = _per_position(lab, 1, uf)
        rec = self.layers.get(name)
        out_ids = rec["out"] if rec is not None else uf.new((mod.out_channels,), self._space(name, "producer"))
        if rec is not None:
            uf.union_pairs(rec["in"], in_ids)
        g, cin, cout = mod.groups, mod.in_channels, mod.out_channels
        ipg, opg = cin // g, cout // g
        if g > 1:
            if ipg == 1:  # depthwise (with multiplier opg): a whole group goes with its input channel
                uf.union_pairs(in_ids.repeat_interleave(opg), out_ids)
            else:  # grouped: keep groups uniform by tying the same position in every group
                by_group_in = in_ids.view(g, ipg)
                uf.union_pairs(by_group_in[:1].expand(g, ipg), by_group_in)
                by_group_out = out_ids.view(g, opg)
                uf.union_pairs(by_group_out[:1].expand(g, opg), by_group_out)
        kernel = 1
        for k in mod.kernel_size:
            kernel *= k
        macs = out[0].numel() * ipg * kernel
        self.layers[name] = {"kind": "conv", "in": in_ids, "out": out_ids, "macs": float(macs), "groups": g}
        return _along(out_ids, 1, out.shape)

    def _linear(self, name: str, mod: nn.Linear, lab: Tensor, out: Tensor) -> Tensor:
        uf = self.uf
        in_ids = _per_position(lab, lab.dim() - 1, uf)
        rec = self.layers.get(name)
        out_ids = rec["out"] if rec is not None else uf.new((mod.out_features,), self._space(name, "producer"))
        if rec is not None:
            uf.union_pairs(rec["in"], in_ids)
        macs = (out[0].numel() if out.dim() > 1 else out.numel()) * mod.in_features
        self.layers[name] = {"kind": "linear", "in": in_ids, "out": out_ids, "macs": float(macs)}
        return _along(out_ids, out.dim() - 1, out.shape)


def _varies(lab: Tensor, d: int) -> bool:
    return lab.shape[d] > 1 and not bool((lab == lab.narrow(d, 0, 1)).all())


def _reshape_groups(a: list[int], b: list[int]) -> list[tuple[list[int], list[int]]]:
    """Match dims of two shapes of equal numel into groups of equal product (a view's dim mapping)."""
    groups, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        gi, gj, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i); pa *= a[i]; i += 1
            elif j < len(b):
                gj.append(j); pb *= b[j]; j += 1
            else:
                break
        groups.append((gi, gj))
    return groups


def _indexed_dims(ndim: int, index_args: tuple) -> set[int]:
    """Dims of a tensor that ``tensor[index]`` narrows (anything but a full slice)."""
    if not index_args:
        return set()
    index = index_args[0]
    index = index if isinstance(index, tuple) else (index,)
    consumed = [e for e in index if e is not None and e is not Ellipsis]
    touched, d = set(), 0
    for e in index:
        if e is None:
            continue
        if e is Ellipsis:
            d += ndim - len(consumed)
            continue
        if not (isinstance(e, slice) and e == slice(None)):
            touched.add(d)
        d += 1
    return touched


def _channel_axis(lab: Tensor) -> int:
    """The axis along which labels vary the most (the channel axis: 1 for NCHW, -1 for tokens)."""
    best, best_n = 1, -1
    for d in range(1, lab.dim()):
        line = lab.movedim(d, 0).reshape(lab.shape[d], -1)[:, 0]
        k = int(torch.unique(line).numel())
        if k > best_n:
            best, best_n = d, k
    return best


class _ModelRunError(Exception):
    """The model itself failed on the example input (as opposed to a bug in the label rules)."""


