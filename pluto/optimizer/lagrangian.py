"""Lagrange multipliers: how pluto enforces ``expected cost_i <= target_i`` while training for accuracy.

The constrained problem ``min_w L_task(w)  s.t.  c_i(w) <= T_i`` becomes the saddle-point
problem ``min_w max_{lambda >= 0} L_task(w) + sum_i lambda_i g_i(w)`` with the normalized
violation ``g_i = c_i / T_i - 1`` (dimensionless, see :mod:`pluto.optimizer.constraints`).

- **Primal step** (your optimizer, on weights and decisions): minimize
  ``L = L_task + sum_i lambda_i * g_i + (rho / 2) * sum_i max(0, g_i)^2``.
  ``lambda_i`` is dimensionless, in units of task loss per unit of relative violation; the last
  term is the optional augmented-Lagrangian (quadratic) penalty, ``rho >= 0`` (0 = off), which
  damps the oscillation of plain gradient descent-ascent when the target is far.
  With ``kp > 0`` the price used in the primal loss is ``max(0, lambda_i + kp * g_i)`` (``g_i``
  detached): a proportional term on top of the integral ``lambda_i`` (PI-controlled multipliers,
  Stooke et al. 2020, "Responsive Safety in RL by PID Lagrangian Methods"). It reacts the moment
  a constraint becomes slack, instead of waiting for ``lambda`` to integrate back down, which
  reduces the overshoot below target that lagging multipliers cause. At a KKT point ``g_i = 0``
  and the price is ``lambda_i``, so the optimum is unchanged.
- **Dual step** (:meth:`LagrangianObjective.dual_step`, projected dual ascent): every
  ``update_every`` calls after ``warmup`` calls,
  ``lambda_i <- min(lambda_max, max(0, lambda_i + eta * g_i))``.
  A violated constraint (``g_i > 0``) raises its price, a slack one (``g_i < 0``) lowers it
  down to 0. ``eta`` is the dual step size per update (dimensionless): with ``eta = 0.05`` a
  constraint 10 % over its target adds 0.005 to ``lambda`` per update.

At a KKT point, ``g_i <= 0``, ``lambda_i >= 0`` and ``lambda_i g_i = 0``: ``lambda_i`` is then how much
task loss one relative unit of target would buy. During ``warmup`` (steps in which weights
settle before the search) the constraint terms are left out of the loss and the multipliers
stay at ``lambda_init``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from pluto.errors import ConfigError
from pluto.optimizer.constraints import Constraint


@dataclass(frozen=True)
class LagrangianConfig:
    """Dual-ascent settings. ``eta``: dual step size; ``rho``: augmented-Lagrangian weight (0 = off);
    ``update_every``: primal steps per dual update; ``warmup``: steps before constraints are active;
    ``lambda_init`` / ``lambda_max``: the multipliers' start and cap; ``kp``: proportional gain of
    the price (0 = plain dual ascent); all dimensionless."""

    eta: float = 0.05
    rho: float = 0.0
    update_every: int = 1
    warmup: int = 0
    lambda_init: float = 0.0
    lambda_max: float = math.inf
    kp: float = 0.0

    def __post_init__(self) -> None:
        if not self.eta > 0:
            raise ConfigError(f"lagrangian.eta (dual step size) must be > 0, got {self.eta}")
        if self.rho < 0:
            raise ConfigError(f"lagrangian.rho (augmented-Lagrangian weight) must be >= 0, got {self.rho}")
        if self.update_every < 1 or self.warmup < 0:
            raise ConfigError(f"lagrangian.update_every must be >= 1 and warmup >= 0, got {self.update_every}, "
                              f"{self.warmup}")
        if self.kp < 0:
            raise ConfigError(f"lagrangian.kp (proportional gain) must be >= 0, got {self.kp}")
        if not 0 <= self.lambda_init <= self.lambda_max:
            raise ConfigError(f"need 0 <= lambda_init <= lambda_max, got {self.lambda_init}, {self.lambda_max}")


def _ascend(lam: Tensor, nonfinite: Tensor, g: Tensor, eta: float, max_value: float) -> tuple[Tensor, Tensor]:
    """Projected dual ascent on device tensors: ``min(max_value, max(0, lam + eta g))``; a non-finite ``g`` leaves
    ``lam`` unchanged and sets the flag."""
    finite = torch.isfinite(g)
    stepped = torch.clamp(torch.clamp(lam + eta * g, min=0.0), max=max_value)
    return torch.where(finite, stepped, lam), nonfinite | ~finite


def _price_and_penalty(g: Tensor, lam: Tensor | float, kp: float, rho: float) -> tuple[Tensor | float, Tensor]:
    """The price of a violation ``g`` (``lambda``, or ``max(0, lambda + kp g)`` with ``g`` detached) and its term
    of the primal loss, ``price g + rho/2 max(0, g)^2``."""
    price = torch.clamp(lam + kp * g.detach(), min=0.0) if kp else lam
    term = price * g
    if rho > 0:
        term = term + 0.5 * rho * torch.clamp(g, min=0) ** 2
    return price, term


class LagrangeMultiplier:
    """The price ``lambda >= 0`` of one constraint, updated by projected dual ascent.

    ``update(g)`` applies ``lambda <- min(lambda_max, max(0, lambda + eta * g))`` for a
    normalized violation ``g = cost / target - 1``.

    Given a tensor ``g`` (a training step's violation, on the training device), the update runs there in
    float64 (the same arithmetic as on Python floats) and nothing waits for the device: :attr:`current` is
    then a 0-dim tensor, and :attr:`value` (a float, what checkpoints and reports hold) reads it on the host
    only when asked. A non-finite ``g`` leaves ``lambda`` unchanged and raises at that read.
    """

    def __init__(self, constraint: Constraint, eta: float = 0.05, init: float = 0.0, max_value: float = math.inf):
        self.constraint = constraint
        self.eta = float(eta)
        self.max_value = float(max_value)
        self.value = float(init)

    @property
    def value(self) -> float:
        """``lambda`` as a Python float (reads a device-side multiplier on the host)."""
        if self._device is not None and self._host is None:
            if bool(self._nonfinite):
                raise ConfigError(f"constraint {self.constraint.name}: a violation was not finite; the cost model "
                                  "returned a non-finite cost, check the table and the decisions feeding it")
            self._host = float(self._device)
        return self._host

    @value.setter
    def value(self, v: float) -> None:
        self._host: float | None = float(v)
        self._device: Tensor | None = None
        self._nonfinite: Tensor | None = None

    @property
    def current(self) -> Tensor | float:
        """``lambda`` without waiting for the device: the device-side tensor when updates ran there, else a float."""
        return self._device if self._device is not None else self._host

    def update(self, violation: Tensor | float) -> Tensor | float:
        """One dual-ascent step on the (detached) normalized violation; returns the new ``lambda``
        (:attr:`current`: a tensor for a tensor ``violation``)."""
        if not isinstance(violation, Tensor):
            g = float(violation)
            if not math.isfinite(g):
                raise ConfigError(f"constraint {self.constraint.name}: violation is {g}; the cost model returned a "
                                  "non-finite cost, check the table and the decisions feeding it")
            self.value = min(self.max_value, max(0.0, self.value + self.eta * g))
            return self._host
        g = violation.detach().to(torch.float64)
        if self._device is None:
            self._device = torch.full((), self.value, dtype=torch.float64, device=g.device)
            self._nonfinite = torch.zeros((), dtype=torch.bool, device=g.device)
        self._device, self._nonfinite = _ascend(self._device, self._nonfinite, g, self.eta, self.max_value)
        self._host = None
        return self._device

    def on_device(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``lambda`` and its has-seen-a-non-finite-violation flag as device tensors (made there on first use)."""
        if self._device is None or self._device.device != device:
            self._device = torch.full((), self.value, dtype=torch.float64, device=device)
            self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        return self._device, self._nonfinite

    def moved(self) -> None:
        """The device-side ``lambda`` was updated in place elsewhere (:meth:`LagrangianObjective.primal_dual`): the
        host's copy is stale."""
        if self._device is not None:
            self._host = None

    def __repr__(self) -> str:
        return f"LagrangeMultiplier({self.constraint}, lambda={self.value:.4g}, eta={self.eta:g})"


def _primal_dual(task_loss: Tensor, costs: list[Tensor], lambdas: list[Tensor], nonfinite: list[Tensor],
                 targets: list[float], names: list[str], eta: float, kp: float, rho: float, lambda_max: float,
                 active: bool, update: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """One step's arithmetic of :meth:`LagrangianObjective.__call__` followed by :meth:`~LagrangianObjective.dual_step`
    (the same formulas, in the same dtypes), as a function of tensors that moves ``lambdas`` and ``nonfinite`` in
    place: compiled, it is a couple of fused kernels instead of a few dozen launches."""
    penalty = torch.zeros((), dtype=task_loss.dtype, device=task_loss.device)
    logs: dict[str, Tensor] = {"loss/task": task_loss.detach()}
    for cost, lam, bad, target, name in zip(costs, lambdas, nonfinite, targets, names):
        g = cost.to(task_loss.dtype) / target - 1.0
        lam_g = lam.to(g.dtype, copy=True)  # a snapshot: ``lam`` moves in place below
        price, term = _price_and_penalty(g, lam_g, kp, rho)
        if active:
            penalty = penalty + term
        logs[f"lambda/{name}"] = lam_g.detach()
        logs[f"price/{name}"] = price.detach() if active else torch.zeros_like(price)
        logs[f"cost/{name}"] = cost.detach()
        logs[f"violation/{name}"] = g.detach()
        if update:  # in place: a CUDA graph of the step reads and writes the same multiplier every replay
            new_lam, new_bad = _ascend(lam, bad, cost.detach().to(torch.float64) / target - 1.0, eta, lambda_max)
            lam.copy_(new_lam)
            bad.copy_(new_bad)
    loss = task_loss + penalty
    logs["loss/constraint"] = penalty.detach()
    logs["loss/total"] = loss.detach()
    return loss, logs


_COMPILED: dict[str, object] = {}  # backend -> torch.compile(_primal_dual): one per process, guards per call site


class LagrangianObjective:
    """Task loss + multiplier-weighted constraint violations, with the multipliers' dual ascent and state.

    ``costs`` dicts are keyed by constraint name or metric (``{"latency_ms": tensor}``) and hold
    expected costs in the constraint's unit: differentiable tensors for the primal loss, any
    numbers for :meth:`dual_step`. Usage per training step::

        loss, logs = objective(task_loss, costs)
        loss.backward(); optimizer.step()
        objective.dual_step(costs)
    """

    def __init__(self, constraints: list[Constraint], config: LagrangianConfig | Mapping[str, Any] | None = None):
        if isinstance(config, Mapping):
            config = LagrangianConfig(**config)
        self.config = config or LagrangianConfig()
        self.constraints = list(constraints)
        self.multipliers = {c.name: LagrangeMultiplier(c, self.config.eta, self.config.lambda_init,
                                                       self.config.lambda_max) for c in self.constraints}
        if len(self.multipliers) != len(self.constraints):
            raise ConfigError(f"constraint names must be unique, got {[c.name for c in self.constraints]}")
        self.step = 0  # dual_step calls so far

    @property
    def active(self) -> bool:
        """Whether warm-up is over, so constraint terms enter the loss and multipliers move."""
        return self.step >= self.config.warmup

    def _cost(self, costs: Mapping[str, Tensor | float], c: Constraint) -> Tensor | float:
        if c.name in costs:
            return costs[c.name]
        if c.metric in costs:
            return costs[c.metric]
        raise ConfigError(f"no expected cost for constraint {c.name!r} ({c.metric}); the cost model must return "
                          f"it (got {sorted(costs)}), or drop the constraint")

    def __call__(self, task_loss: Tensor,
                 costs: Mapping[str, Tensor | float]) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Primal loss ``task + sum price_i g_i + rho/2 sum max(0, g_i)^2`` and scalars to log.

        ``price_i = lambda_i``, or ``max(0, lambda_i + kp * g_i)`` with a proportional gain ``kp``.
        Logged values are detached tensors (or floats): nothing here waits for the device; a logger
        reads them only on the steps it logs.
        """
        return self._primal(task_loss, costs, self.active)

    def _primal(self, task_loss: Tensor, costs: Mapping[str, Tensor | float],
                active: bool) -> tuple[Tensor, dict[str, Tensor | float]]:
        penalty = torch.zeros((), dtype=task_loss.dtype, device=task_loss.device)
        logs: dict[str, Tensor | float] = {"loss/task": task_loss.detach()}
        for c in self.constraints:
            cost = self._cost(costs, c)
            g = c.violation(torch.as_tensor(cost, dtype=task_loss.dtype, device=task_loss.device))
            lam = self.multipliers[c.name].current
            if isinstance(lam, Tensor):
                lam = lam.to(g.dtype)
            price, term = _price_and_penalty(g, lam, self.config.kp, self.config.rho)
            if active:
                penalty = penalty + term
            logs[f"lambda/{c.name}"] = lam
            logs[f"price/{c.name}"] = price if active else 0.0
            logs[f"cost/{c.name}"] = torch.as_tensor(cost).detach()
            logs[f"violation/{c.name}"] = g.detach()
        loss = task_loss + penalty
        logs["loss/constraint"] = penalty.detach()
        logs["loss/total"] = loss.detach()
        return loss, logs

    def _count_step(self) -> bool:
        """Count one training step; whether the multipliers move on it (after warm-up, every ``update_every``)."""
        self.step += 1
        since = self.step - self.config.warmup
        return since > 0 and since % self.config.update_every == 0

    def plan_step(self) -> tuple[bool, bool]:
        """Count one training step on the host: ``(active, update)``, whether its loss has the constraint terms and
        whether the multipliers move at its end; what :meth:`primal_dual` takes as ``plan`` (a step captured as a
        CUDA graph does its counting here and its arithmetic in the graph)."""
        active = self.active
        update = self._count_step()
        if update:
            for m in self.multipliers.values():
                m.moved()
        return active, update

    def dual_step(self, costs: Mapping[str, Tensor | float]) -> dict[str, Tensor | float]:
        """Count one training step; after warm-up, every ``update_every`` steps, move each multiplier.

        Returns ``{name: lambda}`` after the step: floats for float costs; for tensor costs the multipliers
        move on the costs' device and come back as 0-dim tensors (read them on the host only when needed,
        or call :meth:`lambdas`).
        """
        self._dual(costs, self._count_step())
        return {name: m.current for name, m in self.multipliers.items()}

    def _dual(self, costs: Mapping[str, Tensor | float], update: bool) -> None:
        if update:
            for c in self.constraints:
                cost = self._cost(costs, c)
                cost = cost.detach().to(torch.float64) if isinstance(cost, Tensor) else float(cost)
                self.multipliers[c.name].update(c.violation(cost))

    def primal_dual(self, task_loss: Tensor, costs: Mapping[str, Tensor], compiled: bool = False,
                    backend: str = "inductor",
                    plan: tuple[bool, bool] | None = None) -> tuple[Tensor, dict[str, Tensor | float]]:
        """:meth:`__call__` then :meth:`dual_step` on the same (tensor) costs: the primal loss and its logs, with
        the multipliers moved for the next step. ``compiled``: the arithmetic runs as one ``torch.compile``-d
        function (a training step on a GPU otherwise spends more host time launching these few dozen tiny
        kernels than the device spends running them) that moves the multipliers in place; the results are the
        same. ``plan``: this step's :meth:`plan_step`, when the caller counted it already."""
        active, update = self.plan_step() if plan is None else plan
        if not compiled or not self.constraints:
            loss, logs = self._primal(task_loss, costs, active)
            self._dual({k: v.detach() for k, v in costs.items()}, update)
            return loss, logs
        values = [torch.as_tensor(self._cost(costs, c)) for c in self.constraints]
        device = task_loss.device
        states = [self.multipliers[c.name].on_device(device) for c in self.constraints]
        if backend not in _COMPILED:
            _COMPILED[backend] = torch.compile(_primal_dual, backend=backend, dynamic=False)
        cfg = self.config
        loss, logs = _COMPILED[backend](
            task_loss, values, [lam for lam, _ in states], [bad for _, bad in states],
            [c.target for c in self.constraints], [c.name for c in self.constraints], cfg.eta, cfg.kp, cfg.rho,
            cfg.lambda_max, active, update)
        if update:
            for c in self.constraints:
                self.multipliers[c.name].moved()
        return loss, logs

    def lambdas(self) -> dict[str, float]:
        return {name: m.value for name, m in self.multipliers.items()}

    def violations(self, costs: Mapping[str, Tensor | float]) -> dict[str, float]:
        """Constraint name -> normalized violation (<= 0 means satisfied)."""
        return {c.name: float(c.violation(float(torch.as_tensor(self._cost(costs, c)).detach())))
                for c in self.constraints}

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (safe for ``torch.save`` / ``weights_only`` loading and JSON)."""
        return {
            "step": self.step,
            "lambdas": self.lambdas(),
            "config": {k: (v if math.isfinite(v) else None) if isinstance(v, float) else v
                       for k, v in asdict(self.config).items()},
            "constraints": [asdict(c) for c in self.constraints],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore multipliers and the step count for a resumed run; constraints must have the same names."""
        saved = set(state.get("lambdas", {}))
        if saved != set(self.multipliers):
            raise ConfigError(f"checkpoint holds multipliers for {sorted(saved)} but this run constrains "
                              f"{sorted(self.multipliers)}; resume with the same constraints or start a new run")
        self.step = int(state["step"])
        for name, value in state["lambdas"].items():
            self.multipliers[name].value = float(value)
