"""Who is measuring: a fingerprint of this machine by the facts that change kernel speed.

Cloud VMs of one instance type differ by 40-60 %, and every 2-core VM here calls itself the same
name while one has AVX2 only and another AVX-512 with VNNI and AMX. So a machine is identified by
its *instruction-set flags* (and core count, governor, runtime versions), never by its name; a
table records the fingerprint of the machine that made it, and a run records the one that measured.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import lru_cache

# Flags that select different onnxruntime / oneDNN / MLAS kernels on x86 (and their Arm counterparts).
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
                "asimd", "asimddp", "i8mm", "sve", "bf16")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() not in info:
                    info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


@lru_cache(maxsize=1)
def cpu_facts() -> dict:
    """CPU model, kernel-relevant flags, logical cores, frequency governor (if readable), library versions."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    facts = {
        "machine": platform.machine(),
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "flags": [f for f in KERNEL_FLAGS if f in flags],
        "logical_cpus": os.cpu_count(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "max_mhz": _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"),
    }
    try:
        import onnxruntime

        facts["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    import torch

    facts["torch"] = torch.__version__.split("+")[0]
    return facts


def fingerprint(facts: dict | None = None) -> str:
    """Short stable id of a machine kind: hash of arch, flags, core count and runtime versions (not the name)."""
    facts = facts or cpu_facts()
    key = {k: facts.get(k) for k in ("machine", "flags", "logical_cpus", "onnxruntime", "torch")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def has_vnni(facts: dict | None = None) -> bool:
    """Whether int8 dot products run on VNNI (AVX512-VNNI / AVX-VNNI / AMX): U8S8 kernels are then exact and fast."""
    flags = set((facts or cpu_facts())["flags"])
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def describe(facts: dict | None = None) -> str:
    facts = facts or cpu_facts()
    isa = "AMX" if "amx_int8" in facts["flags"] else "AVX-512 VNNI" if "avx512_vnni" in facts["flags"] else \
        "AVX-512" if "avx512f" in facts["flags"] else "AVX2" if "avx2" in facts["flags"] else facts["machine"]
    return f"{facts['cpu_model']} ({isa}, {facts['logical_cpus']} cpus) [{fingerprint(facts)}]"


def mismatch(table_metadata: dict) -> str | None:
    """One line saying that a CPU table was made on another kind of machine (by fingerprint, else by name), or None.

    A mismatched table is a prior, not this machine's truth: ``pluto table calibrate`` adapts it here.
    """
    device = table_metadata.get("device", {}) if isinstance(table_metadata, dict) else {}
    if not isinstance(device, dict) or device.get("type", "cpu") != "cpu":
        return None
    made = table_metadata.get("machine") if isinstance(table_metadata.get("machine"), dict) else None
    here = cpu_facts()
    if made and made.get("fingerprint") == fingerprint(here):
        return None
    if made is None and device.get("name") == here["cpu_model"] and not table_metadata.get("reference"):
        return None  # an old table without a fingerprint, made on a CPU of this name: nothing to compare
    name = table_metadata.get("name", "?")
    made_desc = f"'{device.get('name')}'" + (f" [{made.get('fingerprint')}] flags {','.join(made.get('flags', []))}"
                                              if made else " (no fingerprint recorded)")
    return (f"table {name} was made on {made_desc}; this machine is {describe(here)}: its predictions are a prior "
            f"here. Adapt it: pluto table calibrate {table_metadata.get('path', '<table>')} --out <dir>")
