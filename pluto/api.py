"""The Python front end: ``pluto.compress(model, table, constraints, data)`` in one call.

It composes the same Hydra config a ``python -m pluto.train`` run would use (so notebooks and
recipes behave identically), then runs the joint compression into ``run_dir``.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn
from torch.utils.data import Dataset

from pluto.cost.table import LatencyTable
from pluto.engine.run import holds_run
from pluto.errors import ConfigError


@dataclass
class CompressionResult:
    """The compressed model, its metrics and the run's report (``report.json``: verdict per constraint)."""

    model: nn.Module
    metrics: dict[str, Any]
    run_dir: Path
    report: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = {k: round(v, 4) for k, v in self.metrics.items() if isinstance(v, float)}
        return f"CompressionResult(run_dir={str(self.run_dir)!r}, {shown})"


def check_model_output(model: nn.Module, spec) -> None:
    """ConfigError unless ``model`` maps a batch of ``spec``'s images to a ``(batch, num_classes)`` logits tensor.

    Checked once before training (in eval mode, with the RNG state restored) so that a model returning a dict,
    a tuple or the wrong number of classes is named up front instead of failing deep inside the loss."""
    import torch

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module or a registry name, got {type(model).__name__}")
    x = torch.zeros((2, *spec.input_shape[1:]))
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model.eval()
        try:
            out = model(x.to(device))
        except Exception as exc:
            raise ConfigError(f"{type(model).__name__} fails on a batch of the data's images {tuple(x.shape)} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); check that "
                              "it accepts that input shape") from exc
        finally:
            model.train(was_training)
    if not isinstance(out, torch.Tensor):
        kind = type(out).__name__
        raise ConfigError(f"{type(model).__name__} returns a {kind}, but pluto trains on a logits tensor of shape "
                          f"(batch, {spec.num_classes}); wrap it so forward returns the logits (e.g. "
                          "out['logits'] or out[0])")
    if spec.task != "classification":  # dense prediction: the output is an image of the target's shape
        expected = (2, *spec.target_shape[1:])
        if tuple(out.shape) != expected:
            raise ConfigError(f"{type(model).__name__} returns shape {tuple(out.shape)} for a batch of 2 images, but "
                              f"the {spec.task} targets are {expected[1:]}: expected {expected} (for super-resolution, "
                              f"build the model with scale={spec.scale})")
    elif out.dim() != 2 or out.shape[0] != 2 or out.shape[1] != spec.num_classes:
        raise ConfigError(f"{type(model).__name__} returns shape {tuple(out.shape)} for a batch of 2 images, but the "
                          f"data has {spec.num_classes} classes: expected (2, {spec.num_classes}); set the model's "
                          "number of outputs to the class count")
    if not out.dtype.is_floating_point:
        raise ConfigError(f"{type(model).__name__} returns {out.dtype} values; logits must be floating point")


def _table_path(table: LatencyTable | str | Path | None, run_dir: Path) -> str | None:
    if table is None or isinstance(table, (str, Path)):
        return None if table is None else str(table)
    path = run_dir / "table"
    table.save(path)
    return str(path)


def _task_of(data: str | tuple[Dataset, Dataset]) -> str:
    """The task a dataset implies: image targets (super-resolution pairs) -> 'sr', else 'classification'."""
    if isinstance(data, str):
        return "sr" if data.endswith("_sr") else "classification"
    from pluto.data import infer_spec

    return infer_spec(data[0], num_classes=1).task


def compress(
    model: nn.Module | str,
    table: LatencyTable | str | Path | None = None,
    constraints: Mapping[str, float] | None = None,
    data: str | tuple[Dataset, Dataset] = "fashion_mnist",
    teacher: str | None = "self",
    run_dir: str | Path | None = None,
    epochs: Mapping[str, int] | None = None,
    precision: str | None = None,
    task: str | None = None,
    overrides: Sequence[str] = (),
    **compress_options: Any,
) -> CompressionResult:
    """Compress ``model`` so that each ``constraints`` target (latency_ms, energy_mj, size_bytes, macs) holds on ``table``'s chip.

    ``model``: an ``nn.Module`` or a registry name; ``data``: a dataset name (fashion_mnist, cifar10,
    synthetic, ...) or ``(train, test)`` datasets of image tensors; ``teacher``: ``'self'`` (the
    warmed-up model), a registry name, a checkpoint path, or None for no distillation;
    ``task``: ``'classification'`` or ``'sr'`` (super-resolution: L1 loss, output KD, PSNR); None picks it
    from the data (``fashion_mnist_sr`` / ``imagefolder_sr`` or ``(input, target image)`` pairs -> ``'sr'``);
    ``compress_options``: any ``compress.*`` key (prune, quantize, bits, decision_lr, ...).
    """
    from pluto.train import compose, execute

    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="pluto-"))
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} is a file; pass a folder for the run's records")
    run_dir.mkdir(parents=True, exist_ok=True)
    args = ["compress=joint", "constraints=none", "logger=tensorboard"]
    if isinstance(model, str):  # its config group when there is one (its constructor defaults), else just the name
        from pluto.train import CONFIG_DIR

        args.append(f"model={model}" if (CONFIG_DIR / "model" / f"{model}.yaml").exists() else f"model.name={model}")
    if isinstance(data, str):
        args.append(f"data={data}")
    task = task or _task_of(data)
    if task != "classification":  # the default task; naming it is left to configs/train.yaml
        args.append(f"task={task}")
    table_path = None if table is None else str(table) if isinstance(table, (str, Path)) else str(run_dir / "table")
    args.append(f"hw.table={table_path if table_path else 'null'}")
    if precision:
        args.append(f"hw.precision={precision}")
    for metric, target in (constraints or {}).items():
        args.append(f"constraints.{metric}={'null' if target is None else target}")
    if teacher is None:
        args.append("compress.distill=false")
    else:
        args.append(f"compress.teacher={teacher}")
    for phase, n in (epochs or {}).items():
        args.append(f"compress.epochs.{phase}={n}")
    for key, value in compress_options.items():
        args.append(f"compress.{key}={json.dumps(value) if isinstance(value, (list, tuple)) else value}")
    if not isinstance(model, (str, nn.Module)):
        raise ConfigError(f"model must be an nn.Module or a registry name, got {type(model).__name__}")
    cfg = compose([*args, *overrides], validate=False)
    if not cfg.trainer.resume and holds_run(run_dir):  # checked before the table is written into the folder
        raise ConfigError(f"{run_dir} already holds a run; pass another run_dir, or overrides=['trainer.resume=true'] "
                          "to continue it")
    if isinstance(table, LatencyTable) and not (cfg.trainer.resume and (run_dir / "table").exists()):
        _table_path(table, run_dir)
    metrics, final = execute(cfg, run_dir, model=None if isinstance(model, str) else model,
                             datasets=None if isinstance(data, str) else tuple(data))
    report_file = run_dir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return CompressionResult(final, metrics, run_dir, report)
