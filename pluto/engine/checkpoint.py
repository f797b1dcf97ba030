"""Checkpoints that survive a kill: written atomically, loaded with ``weights_only=True``.

A checkpoint holds tensors and plain Python values only (model/optimizer/scheduler state
dicts, counters, RNG states, the chosen decisions), so loading never executes code.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pluto.errors import PlutoError


class CheckpointError(PlutoError):
    """A checkpoint is missing, empty, corrupt or unsafe to load."""


LAST = "last.pt"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` via a temp file + rename, so a kill mid-write never corrupts the last good checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


PHASE_FILES = ("finetune.pt", "search.pt", "warmup.pt")  # a compression run's finished phases, latest first


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely; CheckpointError says what is wrong and the least destructive way on."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or start without trainer.resume.")
    size = path.stat().st_size
    if size == 0:
        problem = "is empty (0 bytes): its write was cut off or the file was truncated"
    else:
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt/unsafe files
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
            problem = (f"cannot be loaded safely ({detail[:300]}); it is corrupt or was saved with non-tensor "
                       "objects (loading those would run code)")
        else:
            if isinstance(payload, dict):
                return payload
            problem = f"holds a {type(payload).__name__}, not a checkpoint dictionary"
    raise CheckpointError(f"checkpoint {path} {problem}. {recovery_advice(path)}")


def recovery_advice(path: Path) -> str:
    """The least destructive fix for an unreadable checkpoint: resume from the latest intact phase file if any."""
    if path.name != LAST:
        return "Replace it with an intact copy, or pass another checkpoint."
    for name in PHASE_FILES:
        phase_file = path.parent / name
        if phase_file.is_file() and phase_file.stat().st_size > 0 and _readable(phase_file):
            return (f"The finished phase file {phase_file} is intact: keep the rest of the run with "
                    f"`cp {phase_file} {path}` and run again with trainer.resume=true (the run continues after the "
                    f"{name[:-3]} phase; only the interrupted phase is redone).")
    return (f"No intact earlier checkpoint is in {path.parent}: delete {path} and run again with "
            "trainer.resume=true to start this run over, or start elsewhere with a different run_name=...")


def _readable(path: Path) -> bool:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(payload, dict) and "model" in payload and "state" in payload


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
