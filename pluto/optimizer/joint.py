"""One training run that compresses a model to meet constraints measured on a chip.

Phases (each resumable to the batch; ``state.phases_done`` records the finished ones):

1. ``warmup``   - train the weights alone (a supernet samples one candidate per block, or trains all of them
                  with ``compress.supernet_mode=soft``); starts from
                  ``compress.init_from`` when given (a trained model: set warmup epochs to 0 to skip it).
2. ``search``   - attach the decisions (op choice, channel gates, bit-widths) and minimize
                  task(+KD) loss + sum_i lambda_i * (E[cost_i]/target_i - 1); the multipliers rise
                  by dual ascent while a constraint is violated (``pluto.optimizer.lagrangian``).
3. ``harden``   - fix every decision and build the concrete model (derived ops, physically pruned
                  channels, fixed bits); deterministic, so a resumed run rebuilds it from
                  ``search.pt``.
4. ``finetune`` - train the concrete model with KD (QAT at its chosen bits).
5. report       - export ONNX, measure on the table's device when this is it, compare with the
                  prediction, and say whether each constraint holds *as measured*.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pluto.cost.table import LatencyTable
from pluto.data import DataSpec
from pluto.decisions.ops.choice import TemperatureSchedule
from pluto.decisions.ops.supernet import Supernet
from pluto.engine import distributed
from pluto.engine.checkpoint import load_checkpoint, rng_state, set_rng_state
from pluto.engine.loop import TrainState, batches_per_epoch, evaluate, train_epochs
from pluto.engine.optim import OptimizerGroup, build_optimizer, build_scheduler
from pluto.engine.run import RunContext
from pluto.errors import ConfigError
from pluto.optimizer.constraints import check_feasible, constraints_from_config
from pluto.optimizer.cost_model import CostModel
from pluto.optimizer.decisions import Decisions, attach, harden
from pluto.optimizer.lagrangian import LagrangianConfig, LagrangianObjective

PHASES = ("warmup", "search", "finetune")


def load_table(cfg: DictConfig) -> LatencyTable | None:
    path = cfg.hw.get("table")
    return LatencyTable.load(path) if path else None


def _calibration_batch(train_set: Dataset, n: int = 256) -> Tensor:
    return next(iter(DataLoader(train_set, batch_size=n, shuffle=False)))[0]


def _load_if_exists(net: nn.Module, ctx: RunContext, name: str) -> None:
    """Load a finished phase's weights (identical to the in-memory ones unless this run was resumed past it)."""
    if (ctx.dir / name).exists():
        net.load_state_dict(load_checkpoint(ctx.dir / name)["model"])


def _init_weights(model: nn.Module, path: str | None) -> None:
    """Start from trained weights (``compress.init_from``): a state dict or a run checkpoint (``{"model": ...}``).

    Loaded on every start, resumed or not, so a resumed run rebuilds the same teacher and gate ranking.
    """
    if not path:
        return
    state = load_checkpoint(path)
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise ConfigError(f"compress.init_from={path} does not fit model {type(model).__name__} "
                          f"({first[0].strip()}); pass weights saved from the same model and data shape.") from exc


class _Teacher:
    """The KD teacher: the warmed-up model itself (``self``), a registry name, or a checkpoint path."""

    def __init__(self, spec: str | None, spec_data: DataSpec, device: torch.device):
        self.spec, self.data, self.device = spec, spec_data, device
        self.model: nn.Module | None = None

    def build(self, warm_model: nn.Module | None = None) -> None:
        if not self.spec or self.spec == "none":
            return
        if self.spec == "self":
            self.model = copy.deepcopy(warm_model)
        else:
            from pluto.optimizer.distillation import load_teacher

            self.model = load_teacher(self.spec, self.data.num_classes, self.data.in_channels, self.data.input_size)
        self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor | None:
        return self.model(x) if self.model is not None else None


def compress_run(model: nn.Module, train_set: Dataset, test_loader: DataLoader, spec: DataSpec, cfg: DictConfig,
                 ctx: RunContext, device: torch.device) -> tuple[dict[str, Any], nn.Module]:
    c, t = cfg.compress, cfg.trainer
    if isinstance(model, Supernet) and c.prune:
        raise ConfigError("compress.prune=true with a NAS supernet: the supernet searches widths through its op "
                          "choices (expansion); set compress.prune=false, or use a plain model for pruning.")
    table = load_table(cfg)
    constraints = constraints_from_config(OmegaConf.to_container(cfg.constraints))
    input_shape = spec.input_shape
    example = torch.zeros(input_shape)
    default_precision = cfg.hw.get("precision", "fp32") if c.quantize else "fp32"
    cost_model = CostModel(model, input_shape, table, default_precision, op_temperature=c.temperature.final)
    bits = tuple(int(b) for b in c.bits)
    calibration = _calibration_batch(train_set)

    # Infeasible targets are rejected before any training: the cheapest reachable model must fit.
    probe = attach(copy.deepcopy(model), example, c.prune, False, bits, c.gate_init_keep)
    min_channels = {k: (1.0 if i.requires_grad else float(i), 1.0 if o.requires_grad else float(o))
                    for k, (i, o) in (probe.channels() or {}).items()}
    allowed = {op.name: list(bits) for op in cost_model.ops if op.kind in ("conv", "dwconv", "linear")} if c.quantize else None
    if isinstance(model, Supernet) and c.quantize:
        allowed = {"*": list(bits)}
    minimum = {con.metric: cost_model.minimum(con.metric, min_channels, allowed) for con in constraints}
    check_feasible(constraints, minimum)
    start = {con.metric: float(cost_model.expected(con.metric).detach()) for con in constraints}
    ctx.write_json("feasibility.json", {"minimum": minimum, "uncompressed": start,
                                        "targets": {con.metric: con.target for con in constraints}})
    del probe

    teacher = _Teacher(c.teacher if c.distill else None, spec, device)
    kd = None
    if c.distill:
        from pluto.optimizer.distillation import DistillationLoss

        kd = DistillationLoss(temperature=c.kd.temperature, alpha=c.kd.alpha)
    ce = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)

    state = TrainState(phase="warmup")
    ckpt = ctx.load()
    if ckpt:
        state = TrainState.from_dict(ckpt["state"])
        print(f"resuming {ctx.dir}: phase {state.phase}, epoch {state.epoch}, batch {state.batch}")

    _init_weights(model, c.get("init_from"))
    if isinstance(model, Supernet):
        # 'sample' trains one uniformly drawn candidate per block and step (single-path one-shot warm-up):
        # ~an order of magnitude cheaper than 'soft', where every candidate runs.
        model.set_mode(c.get("supernet_warmup_mode", "sample"))
    model.to(device)
    if c.teacher not in ("self", None, "none") and c.distill:
        teacher.build()

    def task_loss(logits: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        t_logits = teacher(x)
        if kd is not None and t_logits is not None:
            loss = kd(logits, t_logits, y)
            return loss, {"loss/kd_total": loss.item()}
        loss = ce(logits, y)
        return loss, {"loss/task": loss.item()}

    def run_phase(phase: str, net: nn.Module, epochs: int, lr: float, step_fn, extra_opt=None, extra_state=None,
                  weight_params=None, replicated=None) -> None:
        """Train ``net`` for one phase, resuming inside it if the checkpoint says so."""
        nonlocal ckpt
        if phase in state.phases_done or epochs <= 0:
            if phase not in state.phases_done:
                state.phases_done = (*state.phases_done, phase)
            return
        weights = build_optimizer(weight_params if weight_params is not None else net.parameters(), t, lr=lr)
        optimizer = OptimizerGroup(weights, extra_opt)
        scheduler = build_scheduler(weights, t, epochs * batches_per_epoch(train_set, t.batch_size))
        if state.phase != phase:
            state.phase, state.epoch, state.batch = phase, 0, 0
        elif ckpt is not None and ckpt["state"]["phase"] == phase:
            net.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if extra_state is not None and "extra" in ckpt:
                extra_state.load_state_dict(ckpt["extra"])
            set_rng_state(ckpt["rng"])
        ckpt = None

        def save() -> None:
            ctx.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "state": state.to_dict(), "rng": rng_state(),
                      **({"extra": extra_state.state_dict()} if extra_state is not None else {})})

        def end_of_epoch(epoch: int) -> None:
            metrics = evaluate(net, test_loader, device)
            ctx.logger.scalars({f"{phase}/test_accuracy": metrics["accuracy"]}, state.global_step)
            print(f"{phase} epoch {epoch}/{epochs}: test accuracy {metrics['accuracy']:.2f}%")

        train_epochs(net, train_set, step_fn, optimizer, scheduler, state, epochs, t.batch_size, seed=cfg.seed,
                     device=device, save=save, checkpoint_every=t.checkpoint_every, log=ctx.logger.scalars,
                     log_every=t.log_every, end_of_epoch=end_of_epoch, sync_bn=t.sync_bn, replicated=replicated)
        state.phases_done = (*state.phases_done, phase)
        ctx.save({"model": net.state_dict(), "state": state.to_dict()}, f"{phase}.pt")
        save()

    # 1. warm-up --------------------------------------------------------------------------------
    def warm_step(x, y):
        logits = model(x)
        return task_loss(logits, x, y)

    run_phase("warmup", model, c.epochs.warmup, t.lr, warm_step,
              weight_params=model.weight_parameters() if isinstance(model, Supernet) else None)
    _load_if_exists(model, ctx, "warmup.pt")  # a resumed run continues from the warmed-up weights
    if c.distill and c.teacher == "self":
        teacher.build(model)

    # 2. search ---------------------------------------------------------------------------------
    decisions: Decisions = attach(model, example.to(device), c.prune, c.quantize, bits, c.gate_init_keep,
                                  calibration.to(device), c.get("gate_mode", "ste"), c.get("gate_init", "none"),
                                  c.get("gate_init_spread", 2.0))
    net = decisions.model.to(device)
    if decisions.supernet is not None:  # the search needs the mixture: see pluto.decisions.ops.choice ('sample')
        decisions.supernet.set_mode(c.get("supernet_search_mode", "soft"))
    objective = LagrangianObjective(constraints, LagrangianConfig(**OmegaConf.to_container(c.lagrangian)))
    search_steps = max(1, c.epochs.search * batches_per_epoch(train_set, t.batch_size))
    anneal = TemperatureSchedule(c.temperature.initial, c.temperature.final, search_steps)
    per_epoch = batches_per_epoch(train_set, t.batch_size)

    def search_step(x, y):
        if decisions.supernet is not None:
            decisions.supernet.set_temperature(anneal(state.epoch * per_epoch + state.batch))
        logits = net(x)
        task, logs = task_loss(logits, x, y)
        channels, precisions = decisions.channels(), decisions.precisions()
        costs = {con.metric: cost_model.expected(con.metric, channels, precisions).to(task.dtype).to(task.device)
                 for con in constraints}
        loss, lag_logs = objective(task, costs)
        objective.dual_step({k: v.detach() for k, v in costs.items()})
        if (state.global_step + 1) % t.log_every == 0:  # the loop logs after it counts this step
            logs.update(decisions.logs())
        return loss, {**logs, **{f"lagrangian/{k}": v for k, v in lag_logs.items()}}

    decision_opt = None
    dparams = decisions.parameters()
    if dparams:
        decision_opt = torch.optim.Adam(dparams, lr=c.decision_lr, betas=(0.5, 0.999))
    run_phase("search", net, c.epochs.search, t.lr * c.search_lr_scale, search_step, extra_opt=decision_opt,
              extra_state=objective, weight_params=decisions.weight_parameters(),
              replicated=lambda: [torch.tensor([m.value for m in objective.multipliers.values()], dtype=torch.float64)])
    _load_if_exists(net, ctx, "search.pt")

    # 3. harden ---------------------------------------------------------------------------------
    decisions.model.cpu()  # hardening is cheap and runs where the tables and the graph's indices live
    final, trail = harden(decisions, example, calibration, cost_model, constraints)
    # every rank hardens the same (bit-identical) decisions; rank 0's model is the one all ranks fine-tune,
    # and a rank whose architecture came out different stops the run instead of training a mismatch
    distributed.broadcast_module(final, what="hardened model")
    final.to(device)
    ctx.write_json("decisions.json", trail)

    # 4. fine-tune ------------------------------------------------------------------------------
    def finetune_step(x, y):
        logits = final(x)
        return task_loss(logits, x, y)

    run_phase("finetune", final, c.epochs.finetune, t.lr * c.finetune_lr_scale, finetune_step)
    _load_if_exists(final, ctx, "finetune.pt")

    # 5. report ---------------------------------------------------------------------------------
    from pluto.optimizer.report import final_report

    if not distributed.is_main():  # measurement and report: once, on rank 0 (pluto.train broadcasts the result)
        return {}, final
    result = final_report(final, trail, decisions, cost_model, constraints, objective, test_loader, spec, cfg, ctx,
                          device, minimum, start)
    return result, final
