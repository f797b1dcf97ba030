"""``torch.compile`` for the forward part of a training step (``trainer.compile``).

A joint search step runs, per quantized layer, a few dozen small element-wise kernels (fake-quant mixtures,
gates), a teacher forward and the table's expected cost; eager PyTorch launches them one by one, and on a GPU at
batch 128 that, not arithmetic, is the step's cost. Inductor fuses them (``default``), and ``reduce-overhead``
also replays the step's kernels as a CUDA graph. The pipeline compiles the step's whole forward (student, teacher,
KD loss, expected cost: one graph, no break — ``tests/engine/test_compile.py`` checks it), not the optimizers or
the dual step. ``step-graph`` compiles the same forward as ``default`` and captures the whole training step
(forward, backward, clipping, both optimizers, dual step) as one CUDA graph (:mod:`pluto.engine.graph`).

The decision modules keep the few flags Python control flow reads (a quantizer's ``initialized``, a bit choice's
``chosen``) mirrored on the host (:func:`pluto.decisions.bits.quantizer.host_attr`); the mirrors are re-read before
every compiled call, and a changed flag (hardening, a loaded checkpoint) recompiles instead of running stale code.
Values that change every step or every measurement (a supernet's annealed temperature, the measured correction)
stay outside the compiled function: the pipeline runs supernets eagerly and applies the correction after the call.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_map

from pluto.decisions.bits.quantizer import refresh_host_mirrors
from pluto.errors import ConfigError

MODES = ("none", "default", "reduce-overhead", "max-autotune", "step-graph")


def compile_fn(fn: Callable[..., Any], model: nn.Module, mode: str = "none",
               backend: str = "inductor") -> Callable[..., Any]:
    """``fn`` (``none``: called as is) or its ``torch.compile``-d version in ``mode``; ``fn`` runs ``model`` (whose
    host mirrors are re-read before each call). The returned callable has ``.model`` (what it runs, for callers
    that cache per model). Its first call runs eagerly: state built lazily on first use (a cost model's plan, a
    quantizer's initialization) is then made outside the graph, not captured into it. Under CUDA graphs
    (``reduce-overhead``) its outputs are cloned: a replay overwrites the graph's output memory, and callers keep losses and logged values past the next step. ``backend``: dynamo's
    (tests use ``aot_eager``: the same graph capture, guards and autograd, without inductor's code generation).
    ``step-graph``: compiled as ``default``; the caller captures the whole step (:class:`pluto.engine.graph.StepGraphs`)."""
    if mode not in MODES:
        raise ConfigError(f"trainer.compile={mode!r}: choose one of {', '.join(MODES)}")
    if mode == "none":
        def call(*args, **kwargs):
            return fn(*args, **kwargs)
    else:
        compiled = torch.compile(fn, mode=None if mode in ("default", "step-graph") or backend != "inductor"
                                 else mode, backend=backend)
        graphs = mode in ("reduce-overhead", "max-autotune")
        warm = []

        def call(*args, **kwargs):
            if not warm:  # lazily built state (cost plans, quantizer init) is made eagerly, outside any graph
                warm.append(True)
                return fn(*args, **kwargs)
            refresh_host_mirrors(model)
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
                out = compiled(*args, **kwargs)
                return tree_map(lambda v: v.clone() if torch.is_tensor(v) else v, out)
            return compiled(*args, **kwargs)

    call.model = model
    return call


__all__ = ["MODES", "compile_fn"]
