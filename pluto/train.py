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
import re
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from pluto.errors import ConfigError, PlutoError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def run(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict[str, float]:
    """Run one job described by ``cfg``; returns its final metrics (accuracy, cost, ...)."""
    return execute(cfg, run_dir)[0]


def execute(cfg: DictConfig, run_dir: str | os.PathLike | None = None, model: torch.nn.Module | None = None,
            datasets: tuple | None = None) -> tuple[dict[str, float], torch.nn.Module]:
    """Like :func:`run`, optionally with a model and ``(train, test)`` datasets given as objects; also returns the model."""
    from pluto.config import validate_config
    from pluto.engine import distributed
    from pluto.engine.run import pick_device

    cfg = validate_config(cfg)  # every value typed and in range before any work starts
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
    from pluto.tasks import task_from_config
    from torch.utils.data import DataLoader

    dkw = {k: v for k, v in cfg.data.items() if k not in ("name", "root", "train_limit", "test_limit")}
    if datasets is None:
        train_set, test_set, spec = build_datasets(cfg.data.name, cfg.data.get("root"), cfg.data.get("train_limit"),
                                                   cfg.data.get("test_limit"), **dkw)
    else:
        from pluto.data import check_datasets, infer_spec

        train_set, test_set = check_datasets(datasets)
        spec = infer_spec(train_set)
    task = task_from_config(cfg, spec.task)
    test_loader = DataLoader(test_set, batch_size=512, shuffle=False, generator=torch.Generator())
    mkw = {k: v for k, v in cfg.model.items() if k != "name"}
    if model is None:
        model = create_model(cfg.model.name, spec.num_classes, spec.in_channels, spec.input_size, **mkw)
    else:
        from pluto.api import check_model_output

        check_model_output(model, spec)
    ctx = RunContext(run_dir, cfg, resume=cfg.trainer.resume, tensorboard=cfg.logger.tensorboard,
                     allow_changes=tuple(cfg.trainer.resume_allow_changes))
    distributed.barrier()  # every rank has checked the folder before rank 0 writes a checkpoint into it
    try:
        if cfg.compress.name == "none":
            if task.name != "classification":
                raise ConfigError(f"compress=none trains classifiers only; train a {task.name} model with "
                                  "compress=joint constraints=none compress.prune=false compress.quantize=false "
                                  "compress.distill=false")
            metrics = fit_plain(model, train_set, test_loader, cfg.trainer, ctx, device, cfg.seed)
        else:
            from pluto.optimizer.pipeline import compress_run

            metrics, model = compress_run(model, train_set, test_loader, spec, cfg, ctx, device, task)
        metrics = distributed.broadcast_object(metrics)  # what rank 0 measured and reported
        ctx.write_json("metrics.json", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    finally:
        ctx.close()
    if not distributed.is_main():
        return metrics, model
    print(f"run dir: {run_dir}")
    print("final: " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))))
    return metrics, model


def compose(overrides: list[str] | None = None, validate: bool = True) -> DictConfig:
    """The resolved config for ``overrides`` without starting a Hydra app (tests, notebooks, sweeps).

    ConfigError (not a Hydra stack trace) for an unknown key or group option, and, with ``validate``,
    for any value :func:`pluto.config.validate_config` rejects."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from pluto.config import check_overrides, validate_config

    overrides = list(overrides or [])
    check_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=overrides)
    except Exception as exc:  # composing only reads configs/: whatever fails here is the overrides' fault
        lines = [line for line in str(exc).splitlines() if line.strip()]
        match = re.search(r"Could not override '([^']+)'", str(exc))
        if match:
            from pluto.config import explain_unknown_key

            raise ConfigError(explain_unknown_key(match.group(1))) from exc
        raise ConfigError(f"the overrides {overrides} do not compose: {' '.join(lines[:2])}; check the keys "
                          "against configs/ (or pluto/config.py)") from exc
    return validate_config(cfg) if validate else cfg


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


def _precheck(argv: list[str]) -> None:
    """Unknown keys and group options as one line + exit 2, before Hydra prints its own stack trace."""
    from pluto.config import check_overrides

    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return  # Hydra's flags (multirun sweeps, --cfg, --help ...): let Hydra parse them
    try:
        check_overrides(argv)
    except PlutoError as exc:
        print(f"pluto: error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _precheck(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
