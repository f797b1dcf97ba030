"""Hardware constraints ``expected cost <= target`` and the check that a target is reachable at all.

A :class:`Constraint` names a metric of the cost model and a target in that metric's unit:

===========  ======  =====================================================
metric       unit    comes from
===========  ======  =====================================================
latency_ms   ms      a measured latency table (``pluto.cost``)
energy_mj    mJ      a table with energy entries (NVML / RAPL / power meter)
size_bytes   bytes   analytic: weights x bits / 8
macs         MACs    analytic: multiply-accumulates per inference (batch 1)
===========  ======  =====================================================

Its *normalized violation* ``g = cost / target - 1`` is dimensionless: 0 on the boundary,
0.1 when 10 % over, negative when satisfied. Normalizing makes one multiplier step size
``eta`` work for milliseconds and bytes alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from torch import Tensor

from pluto.errors import ConfigError, InfeasibleConstraintError

UNITS: dict[str, str] = {"latency_ms": "ms", "energy_mj": "mJ", "size_bytes": "bytes", "macs": "MACs"}
METRICS = tuple(UNITS)


@dataclass(frozen=True)
class Constraint:
    """``expected <metric> <= target`` (``target`` in ``unit``), e.g. ``Constraint("latency", "latency_ms", 0.5)``."""

    name: str
    metric: str
    target: float
    unit: str = ""

    def __post_init__(self) -> None:
        if self.metric not in UNITS:
            raise ConfigError(f"constraint {self.name!r}: unknown metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if not (isinstance(self.target, (int, float)) and math.isfinite(self.target) and self.target > 0):
            raise ConfigError(f"constraint {self.name!r}: target must be a positive number of {UNITS[self.metric]}, "
                              f"got {self.target!r}")
        if not self.unit:
            object.__setattr__(self, "unit", UNITS[self.metric])
        elif self.unit != UNITS[self.metric]:
            raise ConfigError(f"constraint {self.name!r}: {self.metric} is measured in {UNITS[self.metric]}, "
                              f"not {self.unit!r}; give the target in {UNITS[self.metric]}")

    def violation(self, cost: Tensor | float) -> Tensor | float:
        """Normalized violation ``cost / target - 1`` (dimensionless; <= 0 means satisfied)."""
        return cost / self.target - 1.0

    def satisfied(self, cost: Tensor | float, tolerance: float = 0.0) -> bool:
        """Whether ``cost <= target * (1 + tolerance)``."""
        return float(cost) <= self.target * (1.0 + tolerance)

    def __str__(self) -> str:
        return f"{self.metric} <= {self.target:g} {self.unit}"


def constraints_from_config(config: Mapping[str, Any] | None) -> list[Constraint]:
    """Constraints from a ``{metric: target}`` mapping (e.g. Hydra's ``constraints`` group); ``None`` targets are off.

    ``{"latency_ms": 0.5, "energy_mj": None}`` -> ``[Constraint("latency_ms", "latency_ms", 0.5)]``.
    A value may also be a mapping ``{target: 0.5, name: ...}``.
    """
    out = []
    for metric, value in (config or {}).items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            if value.get("target") is None:
                continue
            out.append(Constraint(value.get("name", metric), value.get("metric", metric), float(value["target"])))
        else:
            try:
                target = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"constraint {metric}: target {value!r} is not a number; write e.g. "
                                  f"constraints.{metric}=0.5") from None
            out.append(Constraint(metric, metric, target))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"constraint names must be unique, got {names}")
    return out


def check_feasible(constraints: list[Constraint], minimum_costs: Mapping[str, float]) -> None:
    """Raise ``InfeasibleConstraintError`` when a target is below the cheapest model the space can produce.

    ``minimum_costs`` maps a constraint's name or metric to the minimum achievable cost (same
    unit), e.g. from ``pluto.decisions.ops.min_cost_architecture`` or the cost model's minimum.
    Constraints without an entry are not checked.
    """
    problems = []
    for c in constraints:
        minimum = minimum_costs.get(c.name, minimum_costs.get(c.metric))
        if minimum is not None and float(minimum) > c.target:
            problems.append(f"{c.metric} target {c.target:g} {c.unit} is below the cheapest model in the space "
                            f"({float(minimum):.4g} {c.unit}); raise the target to at least {float(minimum):.4g} "
                            f"{c.unit} or use a smaller search space / lower precision")
    if problems:
        raise InfeasibleConstraintError("; ".join(problems))
