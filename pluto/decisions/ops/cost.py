"""What a supernet costs on a chip: the hook between the NAS space and ``pluto.cost``.

Every candidate of a choice block has the same input and output shape, so the cost of a
network is the fixed part (stem + head) plus, for each block, the cost of its chosen
candidate. With candidate probabilities ``p`` the *expected* cost is

    E[cost] = cost(stem + head) + sum_blocks sum_i p_i * delta_i,
    delta_i = cost(stem + head + candidate_i) - cost(stem + head),

in the metric's unit (ms, mJ, bytes, MACs). Pricing each candidate *together with* the fixed
ops and subtracting keeps the result exact when the table's calibration is affine
(``a * sum + b``: the intercept ``b`` is counted once, not once per block). Candidate costs
do not depend on ``alpha``, so they are computed once per (table, metric, input shape) and
cached; gradients reach the architecture logits through ``p``.

Because blocks are independent, the cheapest network picks the cheapest candidate of every
block (:func:`min_cost_architecture`); an optimizer uses it to reject infeasible targets
before training.

With channel gates on the supernet (pruning and NAS together), ``channels`` gives each op's
expected (gated) in/out channel counts, keyed as the dependency graph names the supernet's ops
(``stem.conv``, ``stages.1.0.candidates.2.expand.conv``, ``head.fc``): every candidate is then priced
at the widths its input, output and inner channel groups are expected to keep, so the deltas are
differentiable in the gates too and are recomputed each call (no cache).
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from pluto.cost.ops import MATRIX_KINDS, OpSpec, extract_ops
from pluto.decisions.ops.candidates import SKIP, build_candidate, candidate_names
from pluto.decisions.ops.config import SpaceConfig, space_config
from pluto.decisions.ops.supernet import Supernet, build_head, build_stem, conv_out
from pluto.errors import ConfigError

Shape = tuple[int, ...]
_CACHE: "weakref.WeakKeyDictionary[Supernet, dict]" = weakref.WeakKeyDictionary()


def _nchw(input_shape: Shape | None, supernet: Supernet) -> tuple[int, int, int, int]:
    if input_shape is None:
        return supernet.config.input_shape
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or shape[1] != supernet.config.in_channels:
        raise ConfigError(f"input shape {tuple(input_shape)} does not fit this supernet, which takes "
                          f"{supernet.config.in_channels}-channel images; pass (1, {supernet.config.in_channels}, H, W)")
    return shape  # type: ignore[return-value]


def _layout(supernet: Supernet, input_shape: Shape | None) -> tuple[dict[str, Shape], Shape, Shape]:
    """Block name -> input shape, stem input shape and head input shape for ``input_shape``."""
    shape = _nchw(input_shape, supernet)
    n, _, h, w = shape
    shapes: dict[str, Shape] = {}
    for name, (cin, _, stride) in supernet.block_specs.items():
        shapes[name] = (n, cin, h, w)
        h, w = conv_out(h, stride), conv_out(w, stride)
    return shapes, shape, (n, supernet.config.stages[-1].width, h, w)


def candidate_modules(supernet: Supernet, input_shape: Shape | None = None) -> dict[str, list[tuple[nn.Module, Shape]]]:
    """Choice-block name -> its candidates (in ``alpha`` order) with their batch-1 NCHW input shape.

    The modules are the supernet's own (shared weights), so do not train them separately.
    """
    shapes, _, _ = _layout(supernet, input_shape)
    return {name: [(op, shapes[name]) for op in block.candidates] for name, block in supernet.choice_blocks().items()}


def fixed_modules(supernet: Supernet, input_shape: Shape | None = None) -> list[tuple[str, nn.Module, Shape]]:
    """The ops every architecture has: ``("stem", module, shape)`` and ``("head", module, shape)``."""
    _, stem_in, head_in = _layout(supernet, input_shape)
    return [("stem", supernet.stem, stem_in), ("head", supernet.head, head_in)]


def profile_modules(config: SpaceConfig | Mapping[str, Any] | str | None = None,
                    **overrides: Any) -> list[tuple[nn.Module, Shape]]:
    """Every distinct candidate block and fixed op of a space, each with its batch-1 input shape.

    For the profiler (``modules: "pluto.decisions.ops.cost:profile_modules"`` in a space YAML)
    to measure MBConv / basic blocks as units. ``skip`` (identity) is left out: it costs nothing.
    Modules are in eval mode.
    """
    cfg = space_config(config, **overrides)
    out: list[tuple[nn.Module, Shape]] = [(build_stem(cfg), cfg.input_shape)]
    seen: set[tuple] = set()
    cin, size = cfg.stem_width, cfg.input_size
    for stage in cfg.stages:
        for b in range(stage.depth):
            stride = stage.stride if b == 0 else 1
            skippable = cfg.allow_skip and stride == 1 and cin == stage.width
            for name in candidate_names(cfg.family, cfg.kernels, cfg.expansions, cfg.width_multipliers, skippable):
                key = (name, cin, stage.width, stride, size)
                if name == SKIP or key in seen:
                    continue
                seen.add(key)
                out.append((build_candidate(name, cin, stage.width, stride), (1, cin, size, size)))
            cin, size = stage.width, conv_out(size, stride)
    out.append((build_head(cfg), (1, cin, size, size)))
    return [(module.eval(), shape) for module, shape in out]


SHIPPED_SPACES = ("mbconv_28", "mbconv_32", "resnet_28", "resnet_32")


def profile_shipped_spaces() -> list[tuple[nn.Module, Shape]]:
    """:func:`profile_modules` of every preset the recipes use, duplicates removed (no-argument hook for YAML)."""
    out, seen = [], set()
    for name in SHIPPED_SPACES:
        for module, shape in profile_modules(name):
            key = (repr(module), shape)
            if key not in seen:
                seen.add(key)
                out.append((module, shape))
    return out


def _prefixed(ops: list[OpSpec], prefix: str) -> list[OpSpec]:
    return [dataclasses.replace(op, name=f"{prefix}.{op.name}") for op in ops]


def _price(table: Any, ops: list[OpSpec], metric: str, precisions: Mapping[str, Mapping[str, Tensor]] | None,
           default_precision: str = "fp32", channels: Mapping[str, tuple[Any, Any]] | None = None) -> Tensor:
    """Cost of ``ops`` via ``pluto.cost.expected.expected_cost`` (at ``channels``, else nominal widths)."""
    from pluto.cost.expected import expected_cost

    return torch.as_tensor(expected_cost(table, ops, metric, dict(channels) if channels else None,
                                         dict(precisions) if precisions else None,
                                         default_precision=default_precision), dtype=torch.float32)


def _precisions_for(precisions: Mapping[str, Mapping[str, Tensor]] | None, block: str, index: int
                    ) -> dict[str, Mapping[str, Tensor]] | None:
    """Keep the precision entries of one candidate, keyed the way the derived network names them."""
    if not precisions:
        return None
    out: dict[str, Mapping[str, Tensor]] = {}
    for key, value in precisions.items():
        for prefix in (f"{block}.candidates.{index}.", f"{block}."):
            if key.startswith(prefix) and not key[len(prefix):].startswith("candidates."):
                out[f"{block}.{key[len(prefix):]}"] = value
    return out


def _channels_for(channels: Mapping[str, tuple[Any, Any]] | None, ops: list[OpSpec], prefix: str,
                  graph_prefix: str) -> dict[str, tuple[Any, Any]] | None:
    """The gated channel counts of ``ops`` (named ``<prefix>.<rest>``), read from ``channels`` under the supernet's
    names (``<graph_prefix>.<rest>``). An op the graph names otherwise (a candidate's residual ``add``, traced
    apart from the supernet) moves the channels of the conv before it: its ``(cout, cout)``."""
    if not channels:
        return None
    out: dict[str, tuple[Any, Any]] = {}
    last = None
    for op in ops:
        rest = op.name[len(prefix) + 1:]
        found = channels.get(f"{graph_prefix}.{rest}")
        if found is not None:
            out[op.name] = found
            if op.kind in MATRIX_KINDS or op.kind == "dwconv":
                last = found[1]
        elif op.kind not in MATRIX_KINDS and op.kind != "dwconv" and last is not None:
            out[op.name] = (last, last)
    return out


def _ops(supernet: Supernet, shape: Shape) -> tuple[dict[str, list[OpSpec]], dict[str, list[list[OpSpec]]]]:
    """The priced ops of the fixed parts (``{'stem': ops, 'head': ops}``) and of every candidate of every block
    (named as the derived network names them), traced once per supernet and input shape."""
    cache = _CACHE.setdefault(supernet, {})
    key = ("ops", shape)
    if key not in cache:
        fixed = {name: _prefixed(extract_ops(module, module_shape), name)
                 for name, module, module_shape in fixed_modules(supernet, shape)}
        candidates = {name: [_prefixed(extract_ops(module, module_shape), name) for module, module_shape in entries]
                      for name, entries in candidate_modules(supernet, shape).items()}
        cache[key] = (fixed, candidates)
    return cache[key]


def block_costs(supernet: Supernet, table: Any, input_shape: Shape | None = None, metric: str = "latency_ms",
                precisions: Mapping[str, Mapping[str, Tensor]] | None = None,
                default_precision: str = "fp32",
                channels: Mapping[str, tuple[Any, Any]] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``(fixed cost, {block name: per-candidate cost deltas})`` in ``metric``'s unit (see module docstring).

    ``channels``: expected (gated) in/out channels per op of the supernet's dependency graph (see the module
    docstring); ops it does not list keep their nominal widths. Cached per supernet, table, metric, shape and
    default precision when ``precisions`` and ``channels`` are None.
    """
    shape = _nchw(input_shape, supernet)
    key = (id(table), metric, shape, default_precision)
    cache = _CACHE.setdefault(supernet, {})
    cacheable = precisions is None and not channels
    if cacheable and key in cache:
        return cache[key]
    fixed_parts, candidate_ops = _ops(supernet, shape)
    fixed_ops: list[OpSpec] = []
    fixed_channels: dict[str, tuple[Any, Any]] = {}
    for name, ops in fixed_parts.items():
        fixed_ops += ops
        fixed_channels.update(_channels_for(channels, ops, name, name) or {})
    fixed_precisions = {k: v for k, v in (precisions or {}).items() if k.startswith(("stem.", "head."))} or None
    fixed = _price(table, fixed_ops, metric, fixed_precisions, default_precision, fixed_channels)
    deltas: dict[str, Tensor] = {}
    for name, candidates in candidate_ops.items():
        values = []
        for i, ops in enumerate(candidates):
            own = _precisions_for(precisions, name, i)
            merged = {**(fixed_precisions or {}), **(own or {})} or None
            gated = {**fixed_channels, **(_channels_for(channels, ops, name, f"{name}.candidates.{i}") or {})}
            values.append(_price(table, fixed_ops + ops, metric, merged, default_precision, gated) - fixed)
        deltas[name] = torch.stack(values)
    if cacheable:
        cache[key] = (fixed.detach(), {k: v.detach() for k, v in deltas.items()})
        return cache[key]
    return fixed, deltas


def expected_supernet_cost(supernet: Supernet, table: Any, input_shape: Shape | None = None,
                           metric: str = "latency_ms",
                           precisions: Mapping[str, Mapping[str, Tensor]] | None = None,
                           default_precision: str = "fp32", temperature: float | None = None,
                           channels: Mapping[str, tuple[Any, Any]] | None = None) -> Tensor:
    """Expected cost of the supernet under its current choice probabilities; differentiable in ``alpha``
    (and in the channel gates through ``channels``, see :func:`block_costs`).

    ``table`` is a ``pluto.cost.LatencyTable`` (or None for the analytic ``macs`` / ``size_bytes``);
    ``metric`` one of latency_ms, energy_mj, size_bytes, macs; ``precisions`` maps derived-network
    module names (``stages.1.0.expand.conv``) or supernet names to ``{'fp32': p, 'int8': p}``;
    other ops run at ``default_precision`` (e.g. 'int8' for an int8 table).

    ``temperature``: price the choice probabilities at this temperature instead of each block's
    current one. Annealing sharpens ``softmax(alpha / T)`` towards the argmax, so an expected cost
    that meets its target at a high ``T`` drifts (usually down, to the cheap ops the cost pushed to
    the top) as ``T`` falls; pricing at the final temperature makes the constraint act on (nearly)
    the architecture that ``derive`` will return.
    """
    fixed, deltas = block_costs(supernet, table, input_shape, metric, precisions, default_precision, channels)
    total = fixed
    for name, p in supernet.choice_probabilities(temperature).items():
        total = total + (p.cpu() * deltas[name].to(p.dtype)).sum()  # tables are CPU tensors; alpha may be on a GPU
    return total


def min_cost_architecture(supernet: Supernet, table: Any = None, input_shape: Shape | None = None,
                          metric: str = "macs", default_precision: str = "fp32",
                          channels: Mapping[str, tuple[Any, Any]] | None = None) -> tuple[dict[str, str], float]:
    """The cheapest architecture of the space and its cost: ``({block: candidate}, cost in metric units)``.

    Use the cost to reject a constraint target below it before training
    (``pluto.optimizer.constraints.check_feasible``). ``channels``: price every op at these (e.g. the
    fewest reachable) channel counts, as :func:`block_costs` does.
    """
    with torch.no_grad():
        fixed, deltas = block_costs(supernet, table, input_shape, metric, default_precision=default_precision,
                                    channels=channels)
    blocks = supernet.choice_blocks()
    choice = {name: blocks[name].names[int(torch.argmin(d))] for name, d in deltas.items()}
    cost = float(fixed) + sum(float(d.min()) for d in deltas.values())
    return choice, cost


def architecture_cost(supernet: Supernet, architecture: Mapping[str, str], table: Any = None,
                      input_shape: Shape | None = None, metric: str = "macs",
                      default_precision: str = "fp32", channels: Mapping[str, tuple[Any, Any]] | None = None) -> float:
    """Cost of one concrete architecture (block -> candidate name), from the same per-block prices (at
    ``channels``, see :func:`block_costs`)."""
    with torch.no_grad():
        fixed, deltas = block_costs(supernet, table, input_shape, metric, default_precision=default_precision,
                                    channels=channels)
    blocks = supernet.choice_blocks()
    return float(fixed) + sum(float(deltas[n][blocks[n].names.index(c)]) for n, c in architecture.items())
