"""Run logging: TensorBoard scalars plus a ``metrics.jsonl`` a script can read without TensorBoard."""
from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.run_dir / "tb")) if tensorboard else None
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")

    def scalars(self, values: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in values.items()}
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()

    def figure(self, tag: str, figure, step: int) -> None:
        if self.writer:
            self.writer.add_figure(tag, figure, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        self._jsonl.close()
