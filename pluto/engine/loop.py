"""The training loop, short enough to hold in one's head (nanoGPT-style).

Resumable to the batch: each epoch's order comes from a generator seeded by
``(seed, phase, epoch)``, so after a kill the run replays the same permutation and
skips the batches already done. The caller decides what a step computes (``step_fn``)
and what a checkpoint holds (``save``).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

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


def epoch_batches(dataset: Dataset, batch_size: int, seed: int, phase: str, epoch: int, skip: int = 0,
                  num_workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(phase.encode()) % 100_000 * 1_000 + epoch)
    permutation = torch.randperm(len(dataset), generator=g)[skip * batch_size:]
    tensors = in_memory_tensors(dataset)
    if tensors is not None:
        x, y = tensors
        for start in range(0, len(permutation), batch_size):
            index = permutation[start:start + batch_size]
            yield x[index], y[index]
        return
    order = permutation.tolist()
    # the loader gets its own generator: iterating must not draw from the global RNG, or a resumed
    # run's dropout noise would drift from the uninterrupted run's
    yield from DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=num_workers, generator=g)


def batches_per_epoch(dataset: Dataset, batch_size: int) -> int:
    return math.ceil(len(dataset) / batch_size)


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
) -> None:
    """Run ``epochs`` epochs of phase ``state.phase`` from wherever ``state`` says it stopped."""
    steps = batches_per_epoch(dataset, batch_size)
    model.train()
    while state.epoch < epochs:
        bar = tqdm(total=steps, initial=state.batch, desc=f"{state.phase} {state.epoch + 1}/{epochs}", disable=None)
        for x, y in epoch_batches(dataset, batch_size, seed, state.phase, state.epoch, skip=state.batch):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, logs = step_fn(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
            optimizer.step()
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
        if end_of_epoch:
            end_of_epoch(state.epoch)
        if save:
            save()
