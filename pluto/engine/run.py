"""A run's folder: resolved config, checkpoints, logs. Refuses to clobber a finished or interrupted run.

Resume semantics: ``trainer.resume=true`` continues from ``<run_dir>/last.pt``; without it a
folder that already holds a checkpoint is an error (nothing a user trained is lost by a re-run).

In a data-parallel run only the main process (rank 0) writes: on the other ranks ``save``,
``write_json`` and the logger do nothing, while ``load`` reads the same ``last.pt``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pluto.engine.checkpoint import LAST, load_checkpoint, save_checkpoint
from pluto.engine.logger import RunLogger
from pluto.errors import ConfigError


class RunContext:
    def __init__(self, run_dir: str | os.PathLike, cfg: DictConfig, resume: bool = False, tensorboard: bool = True,
                 *, writer: bool | None = None):
        from pluto.engine import distributed

        self.writer = distributed.is_main() if writer is None else writer  # False: a rank that must not write
        self.dir = Path(run_dir)
        self.cfg = cfg
        self.last = self.dir / LAST
        if self.last.exists() and not resume:
            raise ConfigError(
                f"{self.dir} already holds a run ({self.last}). Continue it with trainer.resume=true, "
                "or start a new one with a different run_name=..."
            )
        self.resumed = resume and self.last.exists()
        if self.writer:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        self.logger = RunLogger(self.dir, tensorboard=tensorboard) if self.writer else _SilentLogger()

    def load(self) -> dict[str, Any] | None:
        return load_checkpoint(self.last) if self.resumed else None

    def save(self, payload: dict[str, Any], name: str = LAST) -> Path:
        return save_checkpoint(self.dir / name, payload) if self.writer else self.dir / name

    def write_json(self, name: str, data: dict) -> Path:
        path = self.dir / name
        if self.writer:
            path.write_text(json.dumps(data, indent=2, default=float))
        return path

    def close(self) -> None:
        self.logger.close()


class _SilentLogger:
    """The logger of a rank that does not write (see :class:`RunContext`)."""

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def figure(self, tag: str, figure, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA device is visible; use trainer.device=cpu or auto.")
    return torch.device(name)
