"""The training loop, short enough to hold in one's head (nanoGPT-style).

Resumable to the batch: each epoch's order comes from a generator seeded by
``(seed, phase, epoch)``, so after a kill the run replays the same permutation and
skips the batches already done. The caller decides what a step computes (``step_fn``)
and what a checkpoint holds (``save``).

Data-parallel (``torchrun``, :mod:`pluto.engine.distributed`): ``batch_size`` is per rank; each
global batch of ``batch_size x world_size`` consecutive indices of the same permutation is cut into
one contiguous shard per rank, the gradients of every trained parameter are averaged after
``backward`` and each rank's loss is weighted by its share of an uneven last batch, so N ranks
take the steps one process takes with the global batch (up to float summation order).
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.profiler import record_function
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from pluto.engine import distributed
from pluto.engine.graph import step_graphs
from pluto.errors import PlutoError

StepFn = Callable[[Tensor, Tensor], tuple[Tensor, dict[str, float]]]


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    phase: str = "train"
    epoch: int = 0  # epochs completed in this phase
    batch: int = 0  # batches completed in the current epoch
    global_step: int = 0
    phases_done: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {**asdict(self), "phases_done": list(self.phases_done)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**{**d, "phases_done": tuple(d.get("phases_done", ()))})


def in_memory_tensors(dataset: Dataset) -> tuple[Tensor, Tensor] | None:
    """``(images, labels)`` when ``dataset`` is a TensorDataset (or a Subset of one): batches are then sliced, not collated."""
    indices = None
    while isinstance(dataset, Subset):
        idx = torch.as_tensor(list(dataset.indices))
        indices = idx if indices is None else idx[indices]
        dataset = dataset.dataset
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        return (x, y) if indices is None else (x[indices], y[indices])
    return None


def _global_batches(n: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each global batch of ``batch_size x world`` in a permutation of ``n`` indices.

    A trailing batch with fewer samples than ranks is dropped (a rank would get none).
    """
    step = batch_size * world
    return [(s, min(s + step, n)) for s in range(0, n, step) if min(s + step, n) - s >= world]


def _shard(start: int, stop: int, world: int, rank: int) -> tuple[int, int]:
    """This rank's contiguous part of global batch ``[start, stop)`` (sizes differ by at most one)."""
    size, extra = divmod(stop - start, world)
    lo = start + rank * size + min(rank, extra)
    return lo, lo + size + (1 if rank < extra else 0)


def epoch_batches(dataset: Dataset, batch_size: int, seed: int, phase: str, epoch: int, skip: int = 0,
                  num_workers: int = 0, rank: int = 0, world: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's batches of one epoch, from batch ``skip`` on: shards of global batches of ``batch_size x world``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(phase.encode()) % 100_000 * 1_000 + epoch)
    permutation = torch.randperm(len(dataset), generator=g)
    shards = [_shard(a, b, world, rank) for a, b in _global_batches(len(dataset), batch_size, world)[skip:]]
    tensors = in_memory_tensors(dataset)
    if tensors is not None:
        x, y = tensors
        for lo, hi in shards:
            index = permutation[lo:hi]
            yield x[index], y[index]
        return
    batches = [permutation[lo:hi].tolist() for lo, hi in shards]
    # the loader gets its own generator: iterating must not draw from the global RNG, or a resumed
    # run's dropout noise would drift from the uninterrupted run's
    yield from DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, generator=g)


def batches_per_epoch(dataset: Dataset, batch_size: int) -> int:
    """Optimizer steps per epoch: global batches of ``batch_size x world_size`` (one process: ``ceil(n / batch_size)``)."""
    return len(_global_batches(len(dataset), batch_size, distributed.world_size()))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu", desc: str = "eval") -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy on ``loader``."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    tensors = in_memory_tensors(loader.dataset)
    if tensors is not None:  # slice instead of collating one sample at a time
        batches = [(tensors[0][i:i + loader.batch_size], tensors[1][i:i + loader.batch_size])
                   for i in range(0, len(tensors[1]), loader.batch_size)]
    else:
        batches = loader
    for x, y in tqdm(batches, desc=desc, leave=False, disable=None):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return {"accuracy": 100.0 * correct / max(total, 1), "loss": loss_sum / max(total, 1)}


def train_step(step_fn: StepFn, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer, params: list[Tensor],
               grad_clip: float | None = 5.0, share: float = 1.0,
               reduce: Callable[[list[Tensor]], None] | None = None) -> tuple[Tensor, dict]:
    """One optimizer step: ``step_fn``'s loss (scaled by ``share``), backward, the gradients ``reduce``-d across
    ranks, clipped, stepped. Its parts are named regions for ``torch.profiler`` (``scripts/overhead.py --profile``)."""
    with record_function("step/step_fn"):
        loss, logs = step_fn(x, y)
    with record_function("step/backward"):
        optimizer.zero_grad(set_to_none=True)
        (loss * share if share != 1.0 else loss).backward()
        if reduce is not None:
            reduce(params)
    with record_function("step/clip"):
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
    with record_function("step/optimizers"):
        optimizer.step()
    return loss, logs


def train_epochs(
    model: nn.Module,
    dataset: Dataset,
    step_fn: StepFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    state: TrainState,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    save: Callable[[], None] | None = None,
    checkpoint_every: int = 200,
    log: Callable[[dict[str, float], int], None] | None = None,
    log_every: int = 20,
    end_of_epoch: Callable[[int], None] | None = None,
    grad_clip: float | None = 5.0,
    sync_bn: bool = False,
    replicated: Callable[[], Iterable[Tensor]] | None = None,
    step_graph: bool = False,
) -> None:
    """Run ``epochs`` epochs of phase ``state.phase`` from wherever ``state`` says it stopped.

    Data-parallel runs (see the module docstring) start from rank 0's weights, average gradients every
    step and, after each epoch, take rank 0's buffers and check that the trained parameters and the
    ``replicated()`` tensors (e.g. Lagrange multipliers) are identical on every rank, logging the
    largest difference as ``<phase>/rank_divergence``. ``sync_bn``: BatchNorm over the global batch.
    ``step_graph``: each step replayed as a CUDA graph (:mod:`pluto.engine.graph`; ``step_fn`` a ``PlannedStep``,
    ``optimizer`` capturable).
    """
    world, rank = distributed.world_size(), distributed.rank()
    params = list(dict.fromkeys(p for g in optimizer.param_groups for p in g["params"]))
    if world > 1:
        distributed.broadcast_module(model, what=f"{state.phase} model")
        distributed.broadcast_tensors(params)  # decision logits may live outside the model
    graphs = step_graphs("step-graph" if step_graph else "none", optimizer, params, grad_clip, world)
    steps = batches_per_epoch(dataset, batch_size)
    bounds = _global_batches(len(dataset), batch_size, world)
    model.train()
    with distributed.sync_batchnorm(model, sync_bn):
        while state.epoch < epochs:
            bar = tqdm(total=steps, initial=state.batch, desc=f"{state.phase} {state.epoch + 1}/{epochs}",
                       disable=None if rank == 0 else True)
            for x, y in epoch_batches(dataset, batch_size, seed, state.phase, state.epoch, skip=state.batch,
                                      rank=rank, world=world):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                share = 1.0
                if world > 1:
                    start, stop = bounds[state.batch]
                    share = len(y) * world / (stop - start)  # 1.0 unless the global batch splits unevenly
                if graphs is not None:
                    loss, logs = graphs.step(step_fn, x, y)
                else:
                    loss, logs = train_step(step_fn, x, y, optimizer, params, grad_clip, share,
                                            distributed.all_reduce_gradients if world > 1 else None)
                if scheduler is not None:
                    scheduler.step()
                state.batch += 1
                state.global_step += 1
                bar.update(1)
                if log and state.global_step % log_every == 0:
                    lr = optimizer.param_groups[0]["lr"]
                    log({f"{state.phase}/loss": loss.item(), f"{state.phase}/lr": lr, **logs}, state.global_step)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                if save and state.global_step % checkpoint_every == 0:
                    save()
            bar.close()
            state.epoch += 1
            state.batch = 0
            if world > 1:
                _synchronize(model, params, replicated, state, log)
            if end_of_epoch:
                end_of_epoch(state.epoch)
            if save:
                save()


def _synchronize(model: nn.Module, params: list[Tensor], replicated: Callable[[], Iterable[Tensor]] | None,
                 state: TrainState, log: Callable[[dict[str, float], int], None] | None) -> None:
    """Take rank 0's buffers (BN statistics of unsynced BN) and check that nothing else diverged."""
    distributed.broadcast_tensors(list(model.buffers()))
    divergence = distributed.max_rank_difference([*params, *(replicated() if replicated else ())])
    if log:
        log({f"{state.phase}/rank_divergence": divergence}, state.global_step)
    if divergence > 1e-4:
        raise PlutoError(f"{state.phase}: parameters differ between ranks by up to {divergence:.3g} after epoch "
                         f"{state.epoch}; a step computed something rank-specific that was not all-reduced")
