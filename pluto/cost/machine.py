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

from pluto.errors import ConfigError

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


INT8_WEIGHT_TYPES = ("s8", "u8")
INT8_KERNELS = {"s8": "U8S8", "u8": "U8U8"}  # onnxruntime's kernel for uint8 activations x these weights
INT8_WEIGHTS_ENV = "PLUTO_INT8_WEIGHTS"


def int8_weight_type(override: str | None = None, facts: dict | None = None) -> str:
    """The int8 weight type that is exact and fastest on this CPU: ``'s8'`` (U8S8 kernels) or ``'u8'`` (U8U8).

    Without VNNI (AVX2 only), onnxruntime's U8S8 kernels sum pairs of u8 x s8 products in int16 and
    saturate (a trained small_cnn lost 3 points), so weights are uint8 there. With VNNI / AMX the U8S8
    kernels accumulate in int32 (exact) and are the fast ones (mobilenet_v2 0.49 ms U8S8 vs 0.69 ms U8U8).
    Precedence: ``override``, then the environment variable ``PLUTO_INT8_WEIGHTS``, then the CPU flags.
    """
    for value, where in ((override, "int8 weight type"), (os.environ.get(INT8_WEIGHTS_ENV) or None, INT8_WEIGHTS_ENV)):
        if value is None:
            continue
        value = {"int8": "s8", "uint8": "u8"}.get(str(value).lower(), str(value).lower())
        if value not in INT8_WEIGHT_TYPES:
            raise ConfigError(f"{where} {value!r} is not one of {', '.join(INT8_WEIGHT_TYPES)} (s8: int8 weights, "
                              "U8S8 kernels, exact with VNNI/AMX; u8: uint8 weights, U8U8 kernels, exact everywhere)")
        return value
    return "s8" if has_vnni(facts) else "u8"


def int8_weights_mismatch(table_metadata: dict, weight_type: str | None = None) -> str | None:
    """One line saying that a table's int8 entries were profiled with other int8 weights (hence other kernels)
    than this machine exports (``weight_type`` None: :func:`int8_weight_type`), or None (same, or not recorded)."""
    runtime = table_metadata.get("runtime", {}) if isinstance(table_metadata, dict) else {}
    made = runtime.get("int8_weights") if isinstance(runtime, dict) else None
    here = int8_weight_type(weight_type)
    if made is None or made == here or "int8" not in table_metadata.get("precisions", ["int8"]):
        return None
    head = (f"table {table_metadata.get('name', '?')} priced int8 with {made} weights ({INT8_KERNELS.get(made, '?')} "
            f"kernels); this machine exports {here} ({INT8_KERNELS[here]})")
    profile = "pluto profile --precision int8 ... --out <dir>"
    if made == "s8" and not has_vnni():  # the table's kernels would saturate here: never suggest deploying them
        return (f"{head}, because {INT8_KERNELS[made]} saturates without VNNI: `pluto table calibrate` rescales the "
                f"table's int8 entries to the {here} networks it times here, but their relative costs are another "
                f"chip's kernels; for this chip's, profile int8 here ({profile})")
    return f"{head}: set {INT8_WEIGHTS_ENV}={made} to deploy what the table priced, or profile int8 here ({profile})"


def machine_notes(table_metadata: dict) -> list[str]:
    """Every one-line note on how a table's machine differs from this one (:func:`mismatch`, then the int8 weight
    type, :func:`int8_weights_mismatch`); empty when the table describes this machine kind."""
    device = table_metadata.get("device", {}) if isinstance(table_metadata, dict) else {}
    if isinstance(device, dict) and device.get("type", "cpu") != "cpu":
        return []
    return [note for note in (mismatch(table_metadata), int8_weights_mismatch(table_metadata)) if note]


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
