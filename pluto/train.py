"""Hydra entry point: ``python -m pluto.train [recipe=<name>] [overrides...]``.

Config groups live in ``configs/`` (model, data, trainer, hw, constraints, compress, logger);
ready recipes in ``recipes/`` (reachable as the ``recipe`` group). Each run writes to
``outputs/<run_name>/``: the resolved config, TensorBoard scalars, ``metrics.jsonl``,
checkpoints, and (for compression runs) the report.

Data-parallel on N devices (one process each; ``trainer.batch_size`` is per process, the global
batch is N times it; rank 0 writes the run folder)::

    torchrun --standalone --nproc_per_node=N -m pluto.train [overrides...]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from pluto.errors import PlutoError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def run(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict[str, float]:
    """Run one job described by ``cfg``; returns its final metrics (accuracy, cost, ...)."""
    return execute(cfg, run_dir)[0]


def execute(cfg: DictConfig, run_dir: str | os.PathLike | None = None, model: torch.nn.Module | None = None,
            datasets: tuple | None = None) -> tuple[dict[str, float], torch.nn.Module]:
    """Like :func:`run`, optionally with a model and ``(train, test)`` datasets given as objects; also returns the model."""
    from pluto.engine import distributed
    from pluto.engine.run import pick_device

    torch.manual_seed(cfg.seed)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    run_dir = Path(run_dir or hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    joined = distributed.launched_by_torchrun() and not distributed.is_distributed()
    device = distributed.init_from_env(pick_device(cfg.trainer.device))
    try:
        return _execute(cfg, distributed.broadcast_object(run_dir), device, model, datasets)  # rank 0's folder
    finally:
        if joined:
            distributed.shutdown()


def _execute(cfg: DictConfig, run_dir: Path, device: torch.device, model: torch.nn.Module | None,
             datasets: tuple | None) -> tuple[dict[str, float], torch.nn.Module]:
    from pluto.data import build_datasets
    from pluto.engine import distributed
    from pluto.engine.plain import fit_plain
    from pluto.engine.run import RunContext
    from pluto.models import create_model
    from torch.utils.data import DataLoader

    dkw = {k: v for k, v in cfg.data.items() if k not in ("name", "root", "train_limit", "test_limit")}
    if datasets is None:
        train_set, test_set, spec = build_datasets(cfg.data.name, cfg.data.get("root"), cfg.data.get("train_limit"),
                                                   cfg.data.get("test_limit"), **dkw)
    else:
        from pluto.data import infer_spec

        train_set, test_set = datasets
        spec = infer_spec(train_set)
    test_loader = DataLoader(test_set, batch_size=512, shuffle=False, generator=torch.Generator())
    mkw = {k: v for k, v in cfg.model.items() if k != "name"}
    if model is None:
        model = create_model(cfg.model.name, spec.num_classes, spec.in_channels, spec.input_size, **mkw)
    ctx = RunContext(run_dir, cfg, resume=cfg.trainer.resume, tensorboard=cfg.logger.tensorboard)
    distributed.barrier()  # every rank has checked the folder before rank 0 writes a checkpoint into it
    try:
        if cfg.compress.name == "none":
            metrics = fit_plain(model, train_set, test_loader, cfg.trainer, ctx, device, cfg.seed)
        else:
            from pluto.optimizer.pipeline import compress_run

            metrics, model = compress_run(model, train_set, test_loader, spec, cfg, ctx, device)
        metrics = distributed.broadcast_object(metrics)  # what rank 0 measured and reported
        ctx.write_json("metrics.json", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    finally:
        ctx.close()
    if not distributed.is_main():
        return metrics, model
    print(f"run dir: {run_dir}")
    print("final: " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))))
    return metrics, model


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The resolved config for ``overrides`` without starting a Hydra app (tests, notebooks, sweeps)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides or []))


def run_with_overrides(overrides: list[str], run_dir: str | os.PathLike) -> dict[str, float]:
    """Compose the config for ``overrides`` and run it into ``run_dir`` (used by ``pluto sweep`` and the Python API)."""
    return run(compose(overrides), run_dir=run_dir)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        metrics = run(cfg)
    except PlutoError as exc:
        print(f"pluto: error: {exc}", file=sys.stderr)
        sys.exit(2)
    return float(metrics.get("objective", metrics.get("accuracy", 0.0)))


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
