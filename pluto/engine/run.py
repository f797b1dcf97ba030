"""A run's folder: resolved config, checkpoints, logs. Refuses to clobber a finished, running or interrupted run.

Guarantees, checked before anything in the folder is written:

- one run at a time: an exclusive ``fcntl.flock`` on ``<run_dir>/.lock`` (released by the OS if the
  process dies), so a second run into a busy folder is refused instead of mixing ``metrics.jsonl``;
- no silent re-use: a folder that holds a run's records (checkpoints, metrics) is continued only with
  ``trainer.resume=true``;
- resume means the same run: the config's fingerprint (SHA-256 of the resolved config without the
  keys that only say where and how it runs, :data:`pluto.config.RESUME_SAFE_KEYS`) must match the
  stored one, else the differing keys are listed; ``trainer.resume_allow_changes=[key, ...]`` accepts
  named changes, which are recorded in ``run.json``.

In a data-parallel run only the main process (rank 0) takes the lock and writes: on the other ranks
``save``, ``write_json`` and the logger do nothing, while ``load`` reads the same ``last.pt``.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from pluto.engine.checkpoint import LAST, load_checkpoint, save_checkpoint
from pluto.engine.logger import RunLogger
from pluto.errors import ConfigError

LOCK, RECORD = ".lock", "run.json"
# files that mean the folder holds a run's results or progress (a bare config.yaml from a failed start does not)
PROGRESS = ("*.pt", "metrics.json", "report.json", "decisions.json")


def config_fingerprint(config: dict[str, Any]) -> str:
    """SHA-256 of the resolved config without the keys that may change on resume."""
    from pluto.config import RESUME_SAFE_KEYS

    def strip(d: Any, prefix: str = "") -> Any:
        if not isinstance(d, dict):
            return d
        return {k: strip(v, f"{prefix}{k}.") for k, v in sorted(d.items()) if f"{prefix}{k}" not in RESUME_SAFE_KEYS}
    return hashlib.sha256(json.dumps(strip(config), sort_keys=True, default=str).encode()).hexdigest()


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run's checkpoints or results (or logged steps)."""
    if not folder.is_dir():
        return False
    if any(any(folder.glob(pattern)) for pattern in PROGRESS):
        return True
    log = folder / "metrics.jsonl"
    return log.is_file() and log.stat().st_size > 0


class RunContext:
    def __init__(self, run_dir: str | os.PathLike, cfg: DictConfig, resume: bool = False, tensorboard: bool = True,
                 *, allow_changes: tuple[str, ...] = (), lock: bool = True, writer: bool | None = None):
        from pluto.engine import distributed

        self.writer = distributed.is_main() if writer is None else writer  # False: a rank that must not write
        self.dir = Path(run_dir)
        self.cfg = cfg
        self.last = self.dir / LAST
        if not self.writer:  # rank 0 guards and writes the folder; the others only read its checkpoint
            self.resumed = resume and self.last.exists()
            self._lock, self._checkpoint = None, None
            self.logger = _SilentLogger()
            return
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"run folder {self.dir} is a file; choose another run_name=... or output folder")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire() if lock else None
        try:
            config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
            history = self._check_folder(config, resume, tuple(allow_changes))
            self.resumed = resume and self.last.exists()
            # a corrupt checkpoint is reported before any record is rewritten
            self._checkpoint = load_checkpoint(self.last) if self.resumed else None
            # validation passed: only now are the folder's records (re)written
            (self.dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
            record = {"fingerprint": config_fingerprint(config), "history": history}
            (self.dir / RECORD).write_text(json.dumps(record, indent=2) + "\n")
            self.logger = RunLogger(self.dir, tensorboard=tensorboard)
        except BaseException:
            self._release()
            raise

    # ---- the folder's guards ----------------------------------------------------------------
    def _acquire(self):
        handle = open(self.dir / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(f"{self.dir} is in use by a running job ({owner}); wait for it to finish, or start this "
                              "one elsewhere with a different run_name=... (two runs in one folder mix their records)")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        handle.flush()
        return handle

    def _release(self) -> None:
        if getattr(self, "_lock", None) is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _check_folder(self, config: dict[str, Any], resume: bool, allow: tuple[str, ...]) -> list:
        """Refuse a re-used folder without resume, or a resume whose config differs; returns the change history."""
        from pluto.config import RESUME_SAFE_KEYS, config_diff

        history: list = []
        record = self.dir / RECORD
        if record.is_file():
            try:
                history = list(json.loads(record.read_text()).get("history", []))
            except (ValueError, AttributeError, TypeError):
                history = []
        if not holds_run(self.dir):
            return history
        if not resume:
            raise ConfigError(
                f"{self.dir} already holds a run ({self.last if self.last.exists() else 'its results'}). Continue it "
                "with trainer.resume=true, or start a new one with a different run_name=... (nothing is overwritten)")
        stored = self.dir / "config.yaml"
        if not stored.is_file():
            raise ConfigError(f"{self.dir} holds checkpoints but no config.yaml, so a resume cannot be checked; "
                              "restore config.yaml or start a new run with a different run_name=...")
        try:
            old = yaml.safe_load(stored.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{stored} is corrupt ({str(exc).splitlines()[0]}); restore it or start a new run "
                              "with a different run_name=...") from exc
        if not isinstance(old, dict):
            raise ConfigError(f"{stored} is not a run config; restore it or start a new run with another run_name")
        changed = config_diff(old, config, ignore=RESUME_SAFE_KEYS)
        refused = [k for k in changed if not any(k == a or k.startswith(a + ".") for a in allow)]
        if refused:
            shown = "; ".join(f"{k}: {_lookup(old, k)!r} -> {_lookup(config, k)!r}" for k in refused[:12])
            more = f" (+{len(refused) - 12} more)" if len(refused) > 12 else ""
            raise ConfigError(
                f"trainer.resume=true but the config differs from the run in {self.dir}: {shown}{more}. Resume with "
                "the original values, start a new run with a different run_name=..., or accept the change with "
                f"trainer.resume_allow_changes=[{','.join(refused[:3])}] if you know it is safe")
        if changed:
            history.append({"resumed": datetime.now(timezone.utc).isoformat(timespec="seconds"), "changed": {
                k: [_lookup(old, k), _lookup(config, k)] for k in changed}})
            print(f"resuming {self.dir} with allowed config changes: {', '.join(changed)}")
        return history

    # ---- checkpoints and records --------------------------------------------------------------
    def load(self) -> dict[str, Any] | None:
        """The checkpoint to resume from (``last.pt``, read once at start), or None for a fresh run."""
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is None and self.resumed:
            checkpoint = load_checkpoint(self.last)
        return checkpoint

    def save(self, payload: dict[str, Any], name: str = LAST) -> Path:
        return save_checkpoint(self.dir / name, payload) if self.writer else self.dir / name

    def write_json(self, name: str, data: dict) -> Path:
        path = self.dir / name
        if self.writer:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(data, indent=2, default=float))
            os.replace(tmp, path)
        return path

    def close(self) -> None:
        if getattr(self, "logger", None) is not None:
            self.logger.close()
        self._release()


def _lookup(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return "<absent>"
        d = d[part]
    return d


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
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"trainer.device={name!r} is not a device torch knows; use auto, cpu, cuda or "
                          "cuda:N") from exc
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={name} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                          "use cuda:0 .. cuda:N-1 or auto")
    return device
