"""Optimizer and learning-rate schedule from the ``trainer`` config group."""
from __future__ import annotations

from typing import Iterable

import torch
from omegaconf import DictConfig

from pluto.errors import ConfigError


def fusable(params: list) -> bool:
    """Whether ``params`` all live on a GPU in floating point: torch's fused optimizers then update them all in
    one kernel (per dtype) instead of a foreach loop of launches, which at a compiled step's size is host time."""
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


def build_optimizer(params: Iterable, tcfg: DictConfig, lr: float | None = None,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """``trainer.optimizer`` on ``params`` (fused on a GPU). ``capturable``: steppable inside a CUDA graph
    (:mod:`pluto.engine.graph`): the learning rate is a device tensor that a scheduler fills in place (a float
    would be frozen into the graph) and Adam(W) keeps its step count on the device."""
    lr = tcfg.lr if lr is None else lr
    params = list(params)
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = fusable(flat) or None
    if capturable:
        if not fused:
            raise ConfigError("a capturable optimizer (trainer.compile=step-graph) needs every parameter on a CUDA GPU")
        lr = torch.tensor(float(lr), device=flat[0].device)
    if tcfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=tcfg.weight_decay,
                              fused=fused)
    elif tcfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=tcfg.weight_decay, fused=fused, capturable=capturable)
    else:
        raise ConfigError(f"trainer.optimizer={tcfg.optimizer!r} is not supported; use sgd or adamw.")
    if capturable:  # a scheduler then scales a float and fills the tensor: one fill per step, no tensor arithmetic
        for group in opt.param_groups:
            group["initial_lr"] = float(lr)
    return opt


def build_scheduler(optimizer: torch.optim.Optimizer, tcfg: DictConfig, total_steps: int):
    """Linear warm-up for ``warmup_steps`` then cosine decay to zero over ``total_steps`` (per batch)."""
    warmup = min(int(tcfg.get("warmup_steps", 0)), max(total_steps - 1, 0))
    if tcfg.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if tcfg.scheduler != "cosine":
        raise ConfigError(f"trainer.scheduler={tcfg.scheduler!r} is not supported; use cosine or constant.")
    import math

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class OptimizerGroup:
    """Several optimizers stepped as one (e.g. SGD on weights, Adam on decision logits).

    Quacks like ``torch.optim.Optimizer`` for the training loop: ``param_groups``,
    ``zero_grad``, ``step``, ``state_dict`` / ``load_state_dict``.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = [o for o in optimizers if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            rates = [g["lr"] for g in o.param_groups]
            o.load_state_dict(s)
            for group, rate in zip(o.param_groups, rates):
                if torch.is_tensor(rate):  # a capturable optimizer's: its CUDA graphs read this tensor, keep it
                    rate.fill_(float(group["lr"]))
                    group["lr"] = rate
