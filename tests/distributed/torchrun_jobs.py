"""Launch real ``torchrun`` jobs (gloo, CPU, 2 processes) and single-process twins of them."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def torchrun(args: list[str], run_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m pluto.train ARGS`` into ``run_dir``; fails the test with its log on error."""
    proc = subprocess.run([*TORCHRUN, "-m", "pluto.train", *args, f"hydra.run.dir={run_dir}"], env=env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def single(args: list[str], run_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pluto.train", *args, f"hydra.run.dir={run_dir}"], env=env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"pluto.train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def kill_torchrun_after_checkpoint(args: list[str], run_dir: Path, timeout: float = 120, phase: str | None = None) -> None:
    """Start a 2-process run; SIGKILL both workers and the launcher once ``last.pt`` exists (in ``phase``, if given)."""
    proc = subprocess.Popen([*TORCHRUN, "-m", "pluto.train", *args, f"hydra.run.dir={run_dir}"], env=env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "last.pt").exists() and (phase is None or _phase_of(run_dir / "last.pt") == phase):
            break
        time.sleep(0.05)
    if phase is None:
        time.sleep(0.3)
    for pid in _children(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _phase_of(path: Path) -> str | None:
    from pluto.engine.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)["state"]["phase"]
    except Exception:  # being replaced right now
        return None


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def max_weight_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from pluto.engine.checkpoint import load_checkpoint

    payload = load_checkpoint(path)
    return payload["model"] if "model" in payload else payload
