"""A whole training step as one CUDA graph (``trainer.compile=step-graph``).

On a GPU at batch 128 a joint search step is bound by its host: a few hundred kernel launches (forward,
backward, gradient clipping, the weight and decision optimizers, the dual step), each costing more host time than
the device spends on it. ``reduce-overhead`` replays the compiled forward and backward as CUDA graphs but launches
the rest one by one; here the whole of :func:`pluto.engine.loop.train_step` (zero_grad, the step function's loss,
backward, clipping, both optimizers and, inside the step function, the Lagrangian's dual step) is captured once
and replayed: one launch per step from the host.

A replay repeats the device work of the captured step and nothing else, so a step function says, before each step,
what its host does (:class:`PlannedStep`): ``plan()`` runs every step (counters, flags) and returns the step's
*kind*, a hashable key of everything the host decided that the device work depends on (e.g. whether the
multipliers move this step, the measured correction's values), or None for a step that must run as is (one that
measures the candidate on the chip, a supernet's step with its sampled path). Each kind gets its own graph,
captured after ``warmup`` uncaptured steps of that kind (lazily built state: optimizer moments, compiled kernels,
cuBLAS workspaces). What makes this exact: everything the device work reads that changes between steps lives on
the device and is updated in place (the learning rate is a tensor the scheduler fills, the multipliers are
updated in place, the optimizers' step counts live on the device), and a step's outputs (the loss, the logged
tensors) are the graph's own memory: read them before the next step, as the loop does.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

import torch
from torch import Tensor

from pluto.errors import ConfigError

StepPlan = Callable[[], Hashable | None]
StepRun = Callable[[Tensor, Tensor], tuple[Tensor, dict]]


def constant_plan() -> tuple:
    """The plan of a step whose device work never changes kind (a plain step)."""
    return ()


class PlannedStep:
    """A step function in two parts: ``plan()``, the host's bookkeeping of one step (run once per step, returns the
    step's kind or None, see the module docstring), and ``run(x, y)``, the step's loss and logs as planned (what a
    CUDA graph captures). Called as ``step(x, y)`` it is an ordinary step function: plan, then run."""

    def __init__(self, plan: StepPlan, run: StepRun):
        self.plan, self.run = plan, run

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict]:
        self.plan()
        return self.run(x, y)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: Tensor
    y: Tensor
    loss: Tensor
    logs: dict


class StepGraphs:
    """Runs :func:`~pluto.engine.loop.train_step` of a :class:`PlannedStep` as CUDA graphs, one per step kind.

    ``optimizer`` must be capturable: a tensor learning rate where a scheduler changes it and ``capturable=True``
    for Adam(W) (:func:`pluto.engine.optim.build_optimizer` with ``capturable=True``). ``keep``: graphs kept at
    once (least recently used dropped first; a new measured correction makes a new kind). ``captures`` counts the
    graphs captured, ``replays`` the steps replayed, ``uncaptured`` the steps run as is."""

    def __init__(self, optimizer, params: list[Tensor], grad_clip: float | None = 5.0, warmup: int = 2,
                 keep: int = 4):
        if not torch.cuda.is_available():
            raise ConfigError("trainer.compile=step-graph captures the training step as a CUDA graph and needs a CUDA "
                              "GPU; use trainer.compile=default (or none) on a CPU")
        if warmup < 1 or keep < 1:
            raise ConfigError(f"step graphs need warmup >= 1 and keep >= 1, got {warmup}, {keep}")
        self.optimizer, self.params, self.grad_clip = optimizer, params, grad_clip
        self.warmup, self.keep = warmup, keep
        self.stream = torch.cuda.Stream()
        self.graphs: OrderedDict[Hashable, _Captured] = OrderedDict()
        self.seen: Counter = Counter()
        self.captures = self.replays = self.uncaptured = 0

    def _train_step(self, run: StepRun, x: Tensor, y: Tensor) -> tuple[Tensor, dict]:
        from pluto.engine.loop import train_step

        return train_step(run, x, y, self.optimizer, self.params, self.grad_clip)

    def step(self, step: PlannedStep, x: Tensor, y: Tensor) -> tuple[Tensor, dict]:
        """One training step: replayed when its kind has a graph, else run as is (and captured once warm)."""
        if not isinstance(step, PlannedStep):
            raise TypeError(f"step graphs need a PlannedStep (plan + run), got {type(step).__name__}")
        kind = step.plan()
        if kind is None or not x.is_cuda:
            self.uncaptured += 1
            return self._train_step(step.run, x, y)
        key = (kind, tuple(x.shape), x.dtype, tuple(y.shape), y.dtype, x.device)
        entry = self.graphs.get(key)
        if entry is None:
            if self.seen[key] < self.warmup:  # on a side stream, as CUDA graph warm-up must run
                self.seen[key] += 1
                self.uncaptured += 1
                self.stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self.stream):
                    out = self._train_step(step.run, x, y)
                torch.cuda.current_stream().wait_stream(self.stream)
                return out
            entry = self._capture(key, step.run, x, y)
        self.graphs.move_to_end(key)
        entry.x.copy_(x, non_blocking=True)
        entry.y.copy_(y, non_blocking=True)
        entry.graph.replay()  # capturing ran nothing: this replay is the step
        self.replays += 1
        return entry.loss, entry.logs

    def _capture(self, key: Hashable, run: StepRun, x: Tensor, y: Tensor) -> _Captured:
        while len(self.graphs) >= self.keep:
            self.graphs.popitem(last=False)
        static_x, static_y = torch.empty_like(x), torch.empty_like(y)
        graph = torch.cuda.CUDAGraph()
        # the captured backward then allocates the gradients (in the graph's memory) instead of accumulating
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, stream=self.stream):
            loss, logs = self._train_step(run, static_x, static_y)
        entry = self.graphs[key] = _Captured(graph, static_x, static_y, loss, logs)
        self.captures += 1
        return entry


def step_graphs(mode: str, optimizer, params: list[Tensor], grad_clip: float | None = 5.0,
                world: int = 1) -> StepGraphs | None:
    """The step graphs ``trainer.compile`` asks for (``step-graph``), else None."""
    if mode != "step-graph":
        return None
    if world > 1:
        raise ConfigError("trainer.compile=step-graph runs one process (the gradients' all-reduce is not captured); "
                          "use trainer.compile=reduce-overhead under torchrun")
    return StepGraphs(optimizer, params, grad_clip)


__all__ = ["PlannedStep", "StepGraphs", "constant_plan", "step_graphs"]
