"""The cost the Lagrangian sees: expected latency / energy / size / MACs of a model under its soft decisions.

One object per run binds the model's traced ops (or its supernet) to a table, and reads the
decisions each step: channel gates give expected channel counts, bit-width choices give
precision probabilities, op choices give candidate probabilities. Every figure is in the
table's units (ms, mJ per inference at its batch size), bytes, or MACs, and differentiable.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from pluto.cost.expected import expected_cost, minimum_cost, precision_key
from pluto.cost.metrics import METRICS, needs_table  # noqa: F401
from pluto.cost.ops import OpSpec, extract_ops
from pluto.cost.plan import ChannelCounts, CostPlan, PrecisionProbs
from pluto.cost.table import LatencyTable
from pluto.decisions.depth import OpPresence
from pluto.decisions.ops.supernet import Supernet
from pluto.errors import TableError


def _on_cpu(channels: Mapping[str, tuple[Tensor, Tensor]] | None,
            precisions: Mapping[str, Mapping[str, Tensor]] | None):
    """The decisions' scalars on the CPU, where the tables live, in one differentiable copy.

    Copying each scalar from a GPU alone would wait for the device once per scalar (a hundred
    times a step on a ResNet); stacked, the step waits once.
    """
    flat = [v for pair in (channels or {}).values() for v in pair]
    flat += [p for probs in (precisions or {}).values() for p in probs.values()]
    moved = [i for i, v in enumerate(flat) if torch.is_tensor(v) and v.device.type != "cpu"]
    if not moved:
        return channels, precisions
    values = torch.stack([flat[i].reshape(()).to(torch.float64) for i in moved]).cpu().unbind()
    for i, v in zip(moved, values):
        flat[i] = v
    it = iter(flat)
    channels = {k: (next(it), next(it)) for k in (channels or {})} if channels else channels
    precisions = {k: {b: next(it) for b in v} for k, v in precisions.items()} if precisions else precisions
    return channels, precisions


class CostModel:
    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], table: LatencyTable | None,
                 default_precision: str = "fp32", op_temperature: float | None = None):
        """Trace ``model`` *before* decisions are attached; ``default_precision`` prices layers without a bit choice."""
        self.table = table
        self.input_shape = tuple(input_shape)
        self.default_precision = default_precision
        # Price op choices at the *final* softmax temperature: priced at the annealed one, the expected cost keeps
        # falling as the temperature drops after the constraint is met, and the search overshoots to the cheapest ops.
        self.op_temperature = op_temperature
        # metric -> measured / predicted ratio on this chip (the chip-in-the-loop correction); 1 when absent
        self.correction: dict[str, float] = {}
        # metric -> measured offset (measured ~ offset + correction * predicted; see MeasuredCorrection); 0 when absent
        self.offset: dict[str, float] = {}
        self.supernet = model if isinstance(model, Supernet) else None
        self.ops: list[OpSpec] = [] if self.supernet is not None else extract_ops(model, self.input_shape)
        self.device = torch.device("cpu")
        self._plans: dict[tuple, CostPlan] = {}
        if table is not None and default_precision not in table.precisions:
            raise TableError(f"table {table.metadata.get('name', '')!r} has no {default_precision!r} entries "
                             f"(it has {', '.join(table.precisions)}); set hw.precision to one of those.")

    def to(self, device: torch.device | str) -> "CostModel":
        """Price on ``device`` (the training device): the plans' grids live there, so a step's expected cost
        needs no copy to the host and back. Decisions given as vectors price where they live anyway."""
        self.device = torch.device(device)
        return self

    def plan(self, metric: str, channels: ChannelCounts | None = None,
             precisions: PrecisionProbs | None = None, presence: OpPresence | None = None) -> CostPlan:
        """The :class:`~pluto.cost.plan.CostPlan` of ``metric`` for this layout of the decisions (built once)."""
        device = channels.cin.device if channels is not None else \
            precisions.probs.device if precisions is not None else \
            presence.probs.device if presence is not None else self.device
        key = (metric, device, channels.names if channels is not None else None,
               channels is not None and channels.cin.requires_grad,
               (precisions.names, precisions.options, precisions.grad, precisions.probs.shape[1])
               if precisions is not None else None, presence.ops if presence is not None else None)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = CostPlan(self.table_for(metric), self.ops, metric, self.default_precision,
                                               key[2], key[3], precisions, device, key[5])
        return plan

    def table_for(self, metric: str) -> LatencyTable | None:
        """The table that prices ``metric`` (None for analytic metrics); TableError if it cannot be priced."""
        self.check_metric(metric)
        return self.table if needs_table(metric) else None

    def check_metric(self, metric: str) -> None:
        if needs_table(metric):
            if self.table is None:
                raise TableError(f"a {metric} constraint needs a latency table: set hw.table=latency_tables/<name>.")
            if metric not in self.table.metrics:
                raise TableError(
                    f"table {self.table.metadata.get('name', '?')} ({self.table.device.get('name', '?')}) has no "
                    f"{metric} entries (it measured {', '.join(self.table.metrics)}); profile a table with an energy "
                    "meter (NVML on NVIDIA GPUs, RAPL on Intel/AMD) or import one with `pluto table import`.")

    def expected(self, metric: str, channels: Mapping[str, tuple[Tensor, Tensor]] | None = None,
                 precisions: Mapping[str, Mapping[str, Tensor]] | None = None, raw: bool = False,
                 presence: OpPresence | None = None) -> Tensor:
        """Differentiable expected ``metric`` for the current soft decisions, times the measured correction
        (``raw=True``: the table's prediction alone). ``presence``: depth decisions (which ops run, with what
        probability; :meth:`pluto.decisions.depth.BlockGates.presence`)."""
        value = self._expected(metric, channels, precisions, presence)
        return value if raw else self.correct(metric, value)

    def correct(self, metric: str, value):
        """The table's prediction (a float or tensor) as this chip measures it: ``offset + correction * value``."""
        factor = self.correction.get(metric)
        if factor is None:
            return value
        return value * factor + self.offset.get(metric, 0.0)

    def uncorrect(self, metric: str, value: float) -> float:
        """Inverse of :meth:`correct`: the table's prediction that corrects to ``value``."""
        return (value - self.offset.get(metric, 0.0)) / self.correction.get(metric, 1.0)

    def _expected(self, metric: str, channels: Mapping[str, tuple[Tensor, Tensor]] | None = None,
                  precisions: Mapping[str, Mapping[str, Tensor]] | None = None,
                  presence: OpPresence | None = None) -> Tensor:
        table = self.table_for(metric)
        if self._plannable(channels, precisions, presence):
            return self.plan(metric, channels, precisions, presence)(
                channels, precisions, presence.probs if presence is not None else None)
        channels = dict(channels) if isinstance(channels, ChannelCounts) else channels
        precisions = dict(precisions) if isinstance(precisions, PrecisionProbs) else precisions
        channels, precisions = _on_cpu(channels, precisions)
        if self.supernet is not None:
            from pluto.decisions.ops.cost import expected_supernet_cost

            return expected_supernet_cost(self.supernet, table, self.input_shape, metric,
                                          dict(precisions) if precisions else None, self.default_precision,
                                          temperature=self.op_temperature, channels=channels or None)
        weights = None
        if presence is not None:
            weights = {k: v.to("cpu", torch.float64) for k, v in presence.as_weights().items()}
        return expected_cost(table, self.ops, metric, dict(channels) if channels else None,
                             dict(precisions) if precisions else None, weights=weights,
                             default_precision=self.default_precision)

    def _plannable(self, channels, precisions, presence=None) -> bool:
        """Whether a plan prices these decisions: vectors (at least one), a traced model (no supernet), and
        expected channel counts (with a gradient: fixed integer counts pick table grids by their values)."""
        if self.supernet is not None or (channels is None and precisions is None and presence is None):
            return False
        if channels is not None and not (isinstance(channels, ChannelCounts) and channels.cin.requires_grad):
            return False
        return precisions is None or isinstance(precisions, PrecisionProbs)

    def minimum(self, metric: str, min_channels: Mapping[str, tuple[float, float]] | None = None,
                allowed_bits: Mapping[str, list[int]] | None = None, absent: set[str] | None = None) -> float:
        """The cheapest model the decisions can reach: each layer at its fewest channels and cheapest bit-width,
        without the ops named in ``absent`` (the ops of every skippable block, under depth decisions)."""
        table = self.table_for(metric)
        allowed = {k: [precision_key(b) for b in v] for k, v in (allowed_bits or {}).items()}
        if self.supernet is not None:
            from pluto.decisions.ops.cost import min_cost_architecture

            precision = self.default_precision
            if allowed:
                options = next(iter(allowed.values()))
                precision = min(options, key=lambda p: {"int4": 0, "int8": 1, "fp16": 2, "fp32": 3}.get(p, 4))
                if precision == "int4" and metric != "size_bytes":
                    precision = "int8"
            value = float(min_cost_architecture(self.supernet, table, self.input_shape, metric, precision,
                                                min_channels or None)[1])
        else:
            ops = [op for op in self.ops if op.name not in (absent or set())]
            value = minimum_cost(table, ops, metric, dict(min_channels or {}), allowed,
                                 default_precisions=[self.default_precision])
        return self.correct(metric, value)

    def of_model(self, model: nn.Module, metric: str, bits: Mapping[str, int] | None = None, raw: bool = True,
                 precision: str | None = None) -> float:
        """Predicted ``metric`` of a concrete (materialized) model with per-layer ``bits`` (name -> bits; other
        layers at ``precision``, default: the cost model's); the table's own prediction unless ``raw=False``
        (then times the measured correction)."""
        table = self.table_for(metric)
        ops = extract_ops(model, self.input_shape)
        precisions = {name: {precision_key(b): torch.tensor(1.0)} for name, b in (bits or {}).items()}
        with torch.no_grad():
            value = float(expected_cost(table, ops, metric, precisions=precisions or None,
                                        default_precision=precision or self.default_precision))
        return value if raw else self.correct(metric, value)
