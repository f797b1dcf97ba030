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
    run_dir.mkdir(parents=True, exist_ok=True)
    args = ["compress=joint", "constraints=none", "logger=tensorboard"]
    if isinstance(model, str):  # its config group when there is one (its constructor defaults), else just the name
        from pluto.train import CONFIG_DIR

        args.append(f"model={model}" if (CONFIG_DIR / "model" / f"{model}.yaml").exists() else f"model.name={model}")
    if isinstance(data, str):
        args.append(f"data={data}")
    args.append(f"task={task or _task_of(data)}")
    table_path = _table_path(table, run_dir)
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
    cfg = compose([*args, *overrides])
    if not isinstance(model, (str, nn.Module)):
        raise ConfigError(f"model must be an nn.Module or a registry name, got {type(model).__name__}")
    metrics, final = execute(cfg, run_dir, model=None if isinstance(model, str) else model,
                             datasets=None if isinstance(data, str) else tuple(data))
    report_file = run_dir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return CompressionResult(final, metrics, run_dir, report)
