"""Energy meters: NVIDIA NVML's total-energy counter and Intel/AMD RAPL through Linux powercap.

Both are cumulative counters in (milli/micro)joules that the hardware updates in steps (NVML about
every 20-100 ms), far slower than one batch-1 op. ``measure_energy`` therefore runs the workload in
a sustained loop and reads the counter only at *tick boundaries*: it waits for the counter to
change, counts the inferences until it has changed again after at least ``window_s``, and divides.
Because both ends sit on a tick, the quantisation error of the counter vanishes; the residual error
is the sync granularity (~1 ms in a window of >= 0.3 s).

The energy is the chip's *total* energy over the window (static + dynamic): what a battery or a
power budget pays. The chip's idle power is recorded in the table's metadata (``idle_power_w``) so a
user who wants dynamic energy can subtract ``idle_power_w * latency``.
"""
from __future__ import annotations

import time
from pathlib import Path

from pluto.cost.runtimes import Prepared
from pluto.errors import ConfigError

POWERCAP = Path("/sys/class/powercap")


class NvmlMeter:
    """GPU ``index``'s cumulative energy in mJ (``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer)."""

    name = "nvml"

    def __init__(self, index: int = 0):
        try:
            import pynvml
        except ImportError as exc:
            raise ConfigError("NVML energy needs the nvidia-ml-py package (import pynvml); pip install "
                              "nvidia-ml-py, or profile with --energy none") from exc
        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        try:
            self.read_mj()
        except pynvml.NVMLError as exc:
            raise ConfigError(f"this GPU does not expose NVML's energy counter ({exc}); use --energy none") from exc

    def read_mj(self) -> float:
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))


class RaplMeter:
    """CPU package energy from ``/sys/class/powercap/intel-rapl:*/energy_uj`` (AMD exposes the same files)."""

    name = "rapl"

    def __init__(self):
        zones = sorted(POWERCAP.glob("intel-rapl:[0-9]")) if POWERCAP.exists() else []
        if not zones:
            raise ConfigError(
                f"no RAPL energy counters: {POWERCAP} has no intel-rapl zones on this machine (virtual machines and "
                "containers usually hide them). Profile with --energy none and add an external power meter's "
                "readings with `pluto table import`.")
        self._files = [z / "energy_uj" for z in zones]
        self._max = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        try:
            self._last = [int(f.read_text()) for f in self._files]
        except PermissionError as exc:
            raise ConfigError(f"RAPL counters exist but are not readable ({exc}); run as root or "
                              "`sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`") from exc
        self._total_uj = 0.0

    def read_mj(self) -> float:
        for i, f in enumerate(self._files):
            now = int(f.read_text())
            delta = now - self._last[i]
            self._total_uj += delta if delta >= 0 else delta + self._max[i]  # counter wrapped
            self._last[i] = now
        return self._total_uj / 1e3


def open_meter(kind: str, device: str):
    """'auto' (NVML on cuda, RAPL on cpu if readable, else None), 'nvml', 'rapl' or 'none'."""
    if kind == "none":
        return None
    if kind == "auto":
        try:
            return NvmlMeter() if device == "cuda" else RaplMeter()
        except ConfigError:
            return None
    if kind == "nvml":
        return NvmlMeter()
    if kind == "rapl":
        return RaplMeter()
    raise ConfigError(f"unknown energy meter {kind!r}; use auto, nvml, rapl or none")


def _wait_tick(meter, work: Prepared | None, check_every: int, timeout_s: float = 1.0) -> tuple[float, int]:
    """Run ``work`` until the counter changes; return (new reading, runs done)."""
    first = meter.read_mj()
    runs, start = 0, time.perf_counter()
    while True:
        if work is None:
            time.sleep(0.0005)
        else:
            for _ in range(check_every):
                work.run()
            runs += check_every
            work.sync()
        reading = meter.read_mj()
        if reading != first or time.perf_counter() - start > timeout_s:
            return reading, runs


def measure_energy(meter, work: Prepared, per_run_s: float, window_s: float = 0.3) -> float:
    """Energy of one inference of ``work`` in mJ, from a tick-aligned sustained loop of >= ``window_s``."""
    check_every = max(1, int(0.001 / max(per_run_s * work.calls, 1e-7)))  # read the counter every ~1 ms
    start_mj, _ = _wait_tick(meter, work, check_every)
    t0, runs = time.perf_counter(), 0
    while time.perf_counter() - t0 < window_s:
        for _ in range(check_every):
            work.run()
        runs += check_every
    work.sync()
    end_mj, more = _wait_tick(meter, work, check_every)
    runs += more
    return (end_mj - start_mj) / (runs * work.calls)


def idle_power_w(meter, window_s: float = 1.0) -> float:
    """Average power in W with nothing running, over tick-aligned ``window_s``."""
    start_mj, _ = _wait_tick(meter, None, 1)
    t0 = time.perf_counter()
    time.sleep(window_s)
    end_mj, _ = _wait_tick(meter, None, 1)
    return (end_mj - start_mj) / 1e3 / (time.perf_counter() - t0)
