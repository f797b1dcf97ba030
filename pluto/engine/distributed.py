"""Data parallelism over ``torch.distributed``: one process per device, launched by ``torchrun``.

``torchrun --standalone --nproc_per_node=N -m pluto.train ...`` starts N copies of the same run.
Each holds the whole model and trains on its own shard of every global batch; the training loop
(:func:`pluto.engine.loop.train_epochs`) averages the gradients of *every* trained parameter
(weights and decision logits alike: channel gates, bit-width and op choices) with one coalesced
all-reduce per step, so every rank applies the same update and the decisions, the costs computed
from them and the Lagrange multipliers' dual steps are identical on every rank by construction.
This is what DDP does, without DDP's wrapper: compression attaches hooks and parametrizations
to the model and switches it between supernet modes, and a wrapper that buckets parameters at
construction (the cause of the hangs and per-rank masks reported for Torch-Pruning / NNI) would
have to be rebuilt at each of those steps.

Conventions (see the README's "Multi-GPU training"):

- ``trainer.batch_size`` is the batch *per rank*; the global batch is ``batch_size x N`` and the
  loop's seeded permutation is cut into global batches, then each global batch into N contiguous
  shards, so a run on N ranks sees the same batches as one process with the global batch size.
- rank 0 alone writes the run folder (checkpoints, logs, TensorBoard, reports); every rank reads
  ``last.pt`` on resume (multi-node runs need the run folder on a shared file system).
- ``trainer.sync_bn=true``: BatchNorm statistics over the global batch (:class:`SyncBatchNorm2d`;
  works on CPU/gloo too, unlike ``torch.nn.SyncBatchNorm``).

Single-process runs never touch ``torch.distributed``: every function here is then a no-op.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import os
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pluto.errors import ConfigError, PlutoError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the one process that writes outputs (rank 0, or the only process)."""
    return rank() == 0


def init_from_env(device: torch.device, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...); returns this rank's device.

    NCCL on CUDA (``cuda:LOCAL_RANK``), gloo on CPU. Without torchrun's variables it returns ``device``
    unchanged and starts nothing.
    """
    if not launched_by_torchrun():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible; "
                              "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _device_of(t: Tensor) -> torch.device:
    """Where ``t`` is communicated: NCCL reduces CUDA tensors only (a CPU tensor goes via this rank's GPU)."""
    if t.device.type == "cpu" and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it (e.g. the run folder Hydra resolved, a final metrics dict)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _signature(module: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    return [(n, tuple(t.shape), str(t.dtype)) for n, t in (*module.named_parameters(), *module.named_buffers())]


def check_same_structure(module: nn.Module, what: str = "model") -> None:
    """Raise (instead of hanging in a collective) when the ranks' models differ in names or shapes."""
    if not is_distributed():
        return
    mine = _signature(module)
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, mine)
    for r, theirs in enumerate(everyone):
        if theirs != mine:
            diff = sorted(set(map(str, theirs)) ^ set(map(str, mine)))[:3]
            raise PlutoError(f"the {what} on rank {r} differs from rank {rank()}'s ({', '.join(diff)}); every rank must "
                             "build the same architecture: a per-rank decision (a seed, a data-dependent choice) "
                             "differs between processes")


def broadcast_tensors(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (coalesced per device and dtype)."""
    if not is_distributed():
        return
    for bucket in _buckets(t for t in tensors if t.numel()):
        flat = torch.cat([t.detach().reshape(-1) for t in bucket]).to(_device_of(bucket[0]))
        dist.broadcast(flat, src=src)
        offset = 0
        with torch.no_grad():
            for t in bucket:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def broadcast_module(module: nn.Module, src: int = 0, what: str = "model") -> nn.Module:
    """Make every rank's ``module`` rank ``src``'s: checks the structure, then broadcasts parameters and buffers."""
    if is_distributed():
        check_same_structure(module, what)
        broadcast_tensors([*module.parameters(), *module.buffers()], src)
    return module


def _buckets(tensors: Iterable[Tensor]) -> Iterator[list[Tensor]]:
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    yield from groups.values()


def all_reduce_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks: one all-reduce per device and dtype.

    A parameter without a gradient on some rank (an op the supernet did not sample there) counts
    as zero there; one without a gradient on every rank keeps ``grad = None``, as in one process.
    """
    if not is_distributed():
        return
    params = list(dict.fromkeys(p for p in params if p.requires_grad))
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=_device_of(params[0]))
    dist.all_reduce(has)
    n = world_size()
    for p, h in zip(params, has.tolist()):
        if h and p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets(p.grad for p in params if p.grad is not None):
        flat = torch.cat([g.reshape(-1) for g in bucket]).to(_device_of(bucket[0]))
        dist.all_reduce(flat)
        flat /= n
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def max_rank_difference(tensors: Iterable[Tensor]) -> float:
    """Largest ``max over ranks - min over ranks`` of any element of ``tensors`` (0.0: identical everywhere)."""
    if not is_distributed():
        return 0.0
    worst = 0.0
    for bucket in _buckets(t.detach() for t in tensors if t.numel() and t.is_floating_point()):
        flat = torch.cat([t.reshape(-1) for t in bucket]).to(_device_of(bucket[0]))
        high, low = flat.clone(), flat.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        worst = max(worst, float((high - low).abs().max()))
    return worst


# --- BatchNorm over the global batch -----------------------------------------------------------------
class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics cover the global batch (all ranks), on CPU (gloo) or CUDA.

    Swapped in by class (:func:`sync_batchnorm`), so module names, hooks, parametrizations and the
    state dict are untouched and the swap is undone before the model is traced, hardened or exported.
    Mean and variance are two differentiable all-reduces (sum, then sum of squared deviations);
    the running variance uses the unbiased global estimate, as ``nn.BatchNorm2d`` does. A deep copy
    (a teacher, a candidate hardened for measurement during the search) is a plain ``nn.BatchNorm2d``:
    synchronization belongs to the live training run, and torch.fx traces only ``torch.nn`` layers as leaves.
    """

    def __deepcopy__(self, memo: dict) -> nn.BatchNorm2d:
        self.__class__ = nn.BatchNorm2d
        try:
            return copy.deepcopy(self, memo)
        finally:
            self.__class__ = SyncBatchNorm2d

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        total = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = total[-1]
        mean = total[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = all_reduce(centred.pow(2).sum((0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


@contextlib.contextmanager
def sync_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every plain ``nn.BatchNorm2d`` of ``model`` normalizes over the global batch."""
    swapped = []
    if enabled and is_distributed():
        for m in model.modules():
            if type(m) is nn.BatchNorm2d:
                m.__class__ = SyncBatchNorm2d
                swapped.append(m)
    try:
        yield model
    finally:
        for m in swapped:
            m.__class__ = nn.BatchNorm2d


__all__ = [
    "launched_by_torchrun", "is_distributed", "rank", "world_size", "is_main", "init_from_env", "shutdown", "barrier",
    "broadcast_object", "check_same_structure", "broadcast_tensors", "broadcast_module", "all_reduce_gradients",
    "max_rank_difference", "SyncBatchNorm2d", "sync_batchnorm",
]
