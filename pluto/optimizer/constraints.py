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

from pluto.cost.metrics import METRICS, SOURCES, UNITS  # noqa: F401  (re-exported: the constraint vocabulary)
from pluto.errors import ConfigError, InfeasibleConstraintError


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

    @property
    def source(self) -> str:
        """'table' (predicted, verified by measurement) or 'analytic' (exact)."""
        return SOURCES[self.metric]

    def __str__(self) -> str:
        return f"{self.metric} <= {self.target:g} {self.unit}"


def verdicts(constraints: list[Constraint], measured: Mapping[str, float | None],
             predicted: Mapping[str, float | None] | None = None) -> list[dict[str, Any]]:
    """One verdict per constraint, honest about its basis.

    A table metric holds only if it was *measured* (``measured[metric]``) on the table's chip; an
    analytic metric is exact and may come from ``measured`` or ``predicted``. ``holds`` is None
    (reported as NOT MEASURED) when no trustworthy value exists.
    """
    predicted = predicted or {}
    out = []
    for c in constraints:
        value = measured.get(c.metric)
        if value is None and c.source == "analytic":
            value = predicted.get(c.metric)
        basis = ("analytic" if c.source == "analytic" else "measured") if value is not None else \
            "not measured (the table's chip was not reachable from this run)"
        out.append({"constraint": str(c), "metric": c.metric, "target": c.target, "source": c.source,
                    "predicted": predicted.get(c.metric), "measured": measured.get(c.metric),
                    "holds": None if value is None else c.satisfied(value), "basis": basis})
    return out


def constraints_hold(results: list[dict[str, Any]]) -> bool | None:
    """True only when every constraint has a verdict and holds; False if any is violated; None if any is unknown."""
    if any(r["holds"] is False for r in results):
        return False
    if any(r["holds"] is None for r in results):
        return None
    return True


def relative_targets(config: Mapping[str, Any] | None) -> dict[str, float]:
    """The targets written relative to the uncompressed model (``latency_ms: 0.6x``): metric -> factor."""
    out = {}
    for metric, value in (config or {}).items():
        if isinstance(value, Mapping):
            value = value.get("target")
        if isinstance(value, str) and value.strip().lower().endswith("x"):
            try:
                factor = float(value.strip()[:-1])
            except ValueError:
                raise ConfigError(f"constraint {metric}: {value!r} is not a relative target; write e.g. "
                                  f"constraints.{metric}=0.6x (60 % of the uncompressed model's cost)") from None
            if not 0 < factor < 1e6:
                raise ConfigError(f"constraint {metric}: relative target {value!r} must be a positive factor")
            out[metric] = factor
    return out


def constraints_from_config(config: Mapping[str, Any] | None,
                            reference: Mapping[str, float] | None = None) -> list[Constraint]:
    """Constraints from a ``{metric: target}`` mapping (e.g. Hydra's ``constraints`` group); ``None`` targets are off.

    ``{"latency_ms": 0.5, "energy_mj": None}`` -> ``[Constraint("latency_ms", "latency_ms", 0.5)]``.
    A value may also be a mapping ``{target: 0.5, name: ...}``, or a factor of the uncompressed
    model's cost (``"0.6x"``), resolved with ``reference[metric]`` (measured where the chip is
    reachable, else predicted).
    """
    relative = relative_targets(config)
    out = []
    for metric, value in (config or {}).items():
        name = metric
        if isinstance(value, Mapping):
            name, metric = value.get("name", metric), value.get("metric", metric)
            value = value.get("target")
        if value is None:
            continue
        if metric in relative or name in relative:
            if reference is None or reference.get(metric) is None:
                raise ConfigError(f"constraint {metric}: a relative target ({value}) needs the uncompressed model's "
                                  f"{metric}; it is resolved when a compression run starts")
            target = relative.get(name, relative.get(metric)) * float(reference[metric])
        else:
            try:
                target = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"constraint {metric}: target {value!r} is not a number; write e.g. "
                                  f"constraints.{metric}=0.5 or constraints.{metric}=0.6x") from None
        out.append(Constraint(name, metric, target))
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
        # a target equal to the minimum is feasible (the cheapest model meets it); 1e-6 relative absorbs the
        # rounding of a minimum summed in floating point (a MACs target copied from a model of the space)
        if minimum is not None and float(minimum) > c.target * (1 + 1e-6):
            problems.append(f"{c.metric} target {c.target:g} {c.unit} is below the cheapest model in the space "
                            f"({float(minimum):.4g} {c.unit}); raise the target to at least {float(minimum):.4g} "
                            f"{c.unit} or use a smaller search space / lower precision")
    if problems:
        raise InfeasibleConstraintError("; ".join(problems))
