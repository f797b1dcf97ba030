"""Count what a training step asks of the device: aten ops (kernel launches) and host<->device syncs.

At small batch sizes a GPU step is bound by Python and kernel-launch overhead, and by every point where
the host waits for the device (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()``,
``torch.nonzero``, boolean-mask indexing ...): the GPU then idles while Python runs. Both are visible
without a GPU: :class:`StepProbe` is a ``TorchDispatchMode`` (every aten op the callable dispatches,
forward and backward) plus a ``TorchFunctionMode`` (host reads that dispatch nothing on a CPU tensor,
``.tolist()``, ``.numpy()``, ``.cpu()``), so a CPU test can assert that a step has no syncs and a GPU
run (``scripts/overhead.py``) shows the counts next to its timings.

What counts as a sync:

- ``aten._local_scalar_dense`` (what ``.item()``, ``float()``, ``int()``, ``bool()`` call), ``aten.is_nonzero``,
  ``aten.equal``; ops whose output size depends on values: ``aten.nonzero``, ``aten.masked_select``,
  ``aten.unique*``, ``aten.bincount``, ``aten.repeat_interleave`` without ``output_size``, indexing with a
  boolean mask (``aten.index`` / ``aten.index_put_``);
- device -> host copies (``aten._to_copy`` / ``aten.copy_`` onto the CPU from another device);
- ``Tensor.tolist()`` / ``.numpy()`` / ``.cpu()`` called from Python.

On a CUDA tensor a CPU tensor's read is no sync, so with ``strict=False`` only reads of tensors off the
host count. On a CPU-only machine every tensor is a host tensor; ``strict=True`` (the default there) then
counts every such read as if the step ran on a GPU, except those of ``host_sites``: torch's optimizers keep
their step counters on the host (``capturable=False``) and read them with ``.item()`` on any device.

``aten.lift_fresh`` (``torch.tensor(data)`` / ``torch.as_tensor(python number)``) is counted apart as
``from_python``: on a GPU each is a host -> device copy, no wait, but a launch built by Python every step.
"""
from __future__ import annotations

import os
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# ops that make the host wait for the device whatever their arguments
_ALWAYS_SYNC = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
                aten.nonzero.default, aten.nonzero.out, aten.masked_select.default, aten.bincount.default,
                aten._unique.default, aten._unique2.default, aten.unique_dim.default,
                aten.unique_consecutive.default, aten.unique_dim_consecutive.default}
_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_REPEAT_INTERLEAVE = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor,
                      aten.repeat_interleave.self_int}
_COPIES = {aten._to_copy.default, aten.copy_.default, aten.to.dtype_layout, aten.to.device}
_HOST_READS = {torch.Tensor.tolist: "tolist", torch.Tensor.numpy: "numpy", torch.Tensor.cpu: "cpu"}
_NO_KERNEL = {aten.detach.default, aten.alias.default, aten.lift_fresh.default, aten._local_scalar_dense.default}
HOST_SITES = (f"torch{os.sep}optim{os.sep}",)  # host-resident optimizer step counters (see module docstring)
_SKIP_FRAMES = (f"torch{os.sep}", f"{os.sep}probe.py", "<frozen")


@dataclass
class ProbeReport:
    """What the probed callable dispatched: ``ops`` (aten op -> count), ``syncs`` (reason -> count),
    ``sites`` (``file:line`` of the Python code that synced -> count), ``from_python`` (tensors built from
    Python data), ``calls`` (how many calls were probed, for per-call figures)."""

    ops: Counter = field(default_factory=Counter)
    syncs: Counter = field(default_factory=Counter)
    sites: Counter = field(default_factory=Counter)
    from_python: int = 0
    calls: int = 0

    @property
    def n_ops(self) -> int:
        """Every aten op dispatched (views and detaches included)."""
        return sum(self.ops.values())

    @property
    def n_kernels(self) -> int:
        """Aten ops that may launch a kernel: all but views, detaches and scalar reads."""
        return sum(n for op, n in self.ops.items() if not _is_view(op))

    @property
    def n_syncs(self) -> int:
        return sum(self.syncs.values())

    def per_call(self) -> dict[str, float]:
        """Mean counts per probed call (``calls`` of them; 1 if none was recorded)."""
        n = max(1, self.calls)
        return {"aten_ops": self.n_ops / n, "kernels": self.n_kernels / n, "syncs": self.n_syncs / n,
                "from_python": self.from_python / n}

    def summary(self, top: int = 10) -> str:
        """The counts, the most frequent ops and every sync with where it came from."""
        per = self.per_call()
        lines = [f"{self.calls} call(s): {per['aten_ops']:.0f} aten ops, {per['kernels']:.0f} kernels, "
                 f"{per['syncs']:.1f} syncs, {per['from_python']:.1f} tensors from Python data per call"]
        lines += [f"  {n:6d}  {op}" for op, n in self.ops.most_common(top)]
        lines += [f"  sync {n:4d}  {why}" for why, n in self.syncs.most_common()]
        lines += [f"  at   {n:4d}  {site}" for site, n in self.sites.most_common()]
        return "\n".join(lines)


def _is_view(op: Any) -> bool:
    return op in _NO_KERNEL or bool(getattr(op, "is_view", False)) or getattr(op, "namespace", "aten") != "aten"


def _on_host(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) or value.device.type == "cpu"


def _site(host_sites: tuple[str, ...]) -> str | None:
    """``file:line`` of the innermost frame outside torch and this module (the code that asked for the value);
    None when a frame of ``host_sites`` is on the way there (a host-resident value, no sync)."""
    for frame in reversed(traceback.extract_stack()):
        if any(s in frame.filename for s in host_sites):
            return None
        if not any(s in frame.filename for s in _SKIP_FRAMES):
            return f"{os.path.relpath(frame.filename)}:{frame.lineno}"
    return "?"


class _Dispatch(TorchDispatchMode):
    def __init__(self, probe: "StepProbe"):
        super().__init__()
        self.probe = probe

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.probe._op(func, args, kwargs, out)
        return out


class _Function(TorchFunctionMode):
    def __init__(self, probe: "StepProbe"):
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = _HOST_READS.get(func)
        if name is not None and args and isinstance(args[0], torch.Tensor):
            self.probe._host_read(name, args[0])
        return func(*args, **(kwargs or {}))


class StepProbe:
    """Context manager counting aten ops and syncs of what runs inside it (see the module docstring).

    ``strict``: count host reads of CPU tensors as syncs too (default: True when CUDA is not available,
    so that a CPU test sees what would sync on a GPU). ``host_sites``: path fragments of code whose reads
    are of host-resident state by construction (never a sync). Use :meth:`call` to probe one call and
    count it, or ``with probe:`` around several and set ``calls`` yourself."""

    def __init__(self, strict: bool | None = None, host_sites: tuple[str, ...] = HOST_SITES):
        self.strict = (not torch.cuda.is_available()) if strict is None else bool(strict)
        self.host_sites = tuple(host_sites)
        self.report = ProbeReport()
        self._modes: list = []

    def __enter__(self) -> "StepProbe":
        self._modes = [_Function(self), _Dispatch(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []

    def call(self, fn: Callable, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` under the probe, count it as one call, return its result."""
        with self:
            out = fn(*args, **kwargs)
        self.report.calls += 1
        return out

    # -- recording ------------------------------------------------------------------------------
    def _sync(self, why: str) -> None:
        site = _site(self.host_sites)
        if site is None:
            return
        self.report.syncs[why] += 1
        self.report.sites[site] += 1

    def _counts(self, tensor: torch.Tensor) -> bool:
        """Whether reading ``tensor`` on the host waits for a device."""
        return self.strict or tensor.device.type != "cpu"

    def _host_read(self, name: str, tensor: torch.Tensor) -> None:
        if self._counts(tensor):
            self._sync(f"Tensor.{name}")

    def _op(self, func, args: tuple, kwargs: dict, out: Any) -> None:
        report = self.report
        report.ops[func] += 1
        if func is aten.lift_fresh.default:
            if _site(self.host_sites) is not None:
                report.from_python += 1
            return
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        first = tensors[0] if tensors else None
        if func in _ALWAYS_SYNC:
            if first is None or self._counts(first):
                self._sync(str(func))
        elif func in _INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
                if self._counts(indices[0] if isinstance(indices[0], torch.Tensor) else first):
                    self._sync(f"{func} with a boolean mask")
        elif func in _REPEAT_INTERLEAVE:
            if kwargs.get("output_size") is None and (first is None or self._counts(first)):
                self._sync(f"{func} without output_size")
        elif func in _COPIES and first is not None:
            target = args[0] if func is aten.copy_.default else out
            source = args[1] if func is aten.copy_.default else first
            if isinstance(target, torch.Tensor) and isinstance(source, torch.Tensor) \
                    and target.device.type == "cpu" and source.device.type != "cpu":
                self._sync(f"{func} device -> host")


def probe(fn: Callable, *args, steps: int = 1, strict: bool | None = None, **kwargs) -> ProbeReport:
    """Call ``fn(*args, **kwargs)`` ``steps`` times under a :class:`StepProbe`; the report counts all of them."""
    p = StepProbe(strict)
    for _ in range(steps):
        p.call(fn, *args, **kwargs)
    return p.report


__all__ = ["StepProbe", "ProbeReport", "probe", "HOST_SITES"]
