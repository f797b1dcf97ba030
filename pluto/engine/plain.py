"""Plain (uncompressed) training: the baseline every compression run is compared against.

Runs as one process or data-parallel under ``torchrun`` (see :mod:`pluto.engine.distributed`):
``tcfg.batch_size`` is per process, the learning-rate schedule counts global steps.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pluto.engine import distributed
from pluto.engine.checkpoint import rng_state, set_rng_state
from pluto.engine.loop import TrainState, batches_per_epoch, evaluate, train_epochs
from pluto.engine.optim import build_optimizer, build_scheduler
from pluto.engine.run import RunContext


def fit_plain(model: nn.Module, train_set: Dataset, test_loader: DataLoader, tcfg: DictConfig, ctx: RunContext,
              device: torch.device, seed: int) -> dict[str, float]:
    model.to(device)
    optimizer = build_optimizer(model.parameters(), tcfg)
    total = tcfg.epochs * batches_per_epoch(train_set, tcfg.batch_size)
    scheduler = build_scheduler(optimizer, tcfg, total)
    state = TrainState(phase="train")
    best = {"accuracy": 0.0}
    ckpt = ctx.load()
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = TrainState.from_dict(ckpt["state"])
        best = ckpt["best"]
        set_rng_state(ckpt["rng"])
        print(f"resumed {ctx.dir} at epoch {state.epoch}, batch {state.batch} (step {state.global_step})")
    criterion = nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing)

    def step(x, y):
        logits = model(x)
        loss = criterion(logits, y)
        return loss, {}

    def save():
        ctx.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                  "state": state.to_dict(), "best": best, "rng": rng_state()})

    def end_of_epoch(epoch: int):
        metrics = evaluate(model, test_loader, device)
        ctx.logger.scalars({"test/accuracy": metrics["accuracy"], "test/loss": metrics["loss"]}, state.global_step)
        if metrics["accuracy"] > best["accuracy"]:
            best.update(metrics)
        if distributed.is_main():
            print(f"epoch {epoch}: test accuracy {metrics['accuracy']:.2f}%  loss {metrics['loss']:.4f}")

    train_epochs(model, train_set, step, optimizer, scheduler, state, tcfg.epochs, tcfg.batch_size, seed=seed,
                 device=device, save=save, checkpoint_every=tcfg.checkpoint_every, log=ctx.logger.scalars,
                 log_every=tcfg.log_every, end_of_epoch=end_of_epoch, sync_bn=tcfg.sync_bn)
    final = evaluate(model, test_loader, device)
    if ctx.writer:  # architecture + weights: pluto.load(run_dir / "model.pt") rebuilds it without the config
        from pluto.materialize.saving import save

        save(model, ctx.dir / "model.pt")
    return {"accuracy": final["accuracy"], "loss": final["loss"], "best_accuracy": best["accuracy"],
            "params": float(sum(p.numel() for p in model.parameters()))}
