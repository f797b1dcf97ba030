"""``profile``: measure every entry of a space on this machine into a resumable latency table.

Order of work: check/resume the output folder, write provisional metadata (``complete: false``),
measure the runtime's fixed per-call overhead, then every (precision, op) entry not yet in
``entries.csv``, appending each row as soon as it is measured (a killed run resumes where it
stopped), then time whole calibration networks, fit ``end_to_end = scale * sum(entries) + offset``
per precision and metric, and seal the table (row count + SHA-256 in the metadata).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import datetime as dt
import json
import math
import os
import random
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pluto.cost import energy as energy_mod
from pluto.cost.machine import cpu_facts, fingerprint
from pluto.cost.ops import OpSpec, extract_ops
from pluto.cost.table import weight_bytes
from pluto.cost.runtimes import Prepared, Runtime, device_info, export_onnx, time_call
from pluto.cost.space import Network, ProfileSpace
from pluto.cost.table import ENTRIES, KEY_COLUMNS, METADATA, SCHEMA_VERSION, VALUE_COLUMNS, LatencyTable, \
    entry_key, op_of_key, read_entries
from pluto.cost.units import Identity, build_unit
from pluto.errors import ConfigError, TableError

COLUMNS = (*KEY_COLUMNS, *VALUE_COLUMNS)

# Fixed kernels timed in every profiling round and by `pluto table calibrate`: their ratio between two machines (or
# two moments) says whether a table still describes the machine at hand (HELP-style device embedding, by kernels).
REFERENCE_KERNELS: tuple[tuple[str, OpSpec], ...] = (
    ("conv3x3_64_28", OpSpec("conv", "ref_conv3x3", 64, 64, 3, 1, 1, 28, "relu", True)),
    ("conv1x1_128_14", OpSpec("conv", "ref_conv1x1", 128, 128, 1, 1, 1, 14, "relu", True)),
    ("dwconv3x3_96_28", OpSpec("dwconv", "ref_dw3x3", 96, 96, 3, 1, 96, 28, "relu6", True)),
    ("linear_512", OpSpec("linear", "ref_linear", 512, 512)),
    ("add_64_28", OpSpec("add", "ref_add", 64, 64, hw=28, act="relu")),
)


def reference_workloads(rt: Runtime, precision: str, batch: int, unroll: int = 1) -> list[tuple[str, Prepared]]:
    """(name, prepared workload) of each reference kernel on ``rt`` at ``precision`` and ``batch``."""
    return [(name, rt.prepare(*build_unit(op, batch), precision, unroll)) for name, op in REFERENCE_KERNELS]


class _ReferenceKernels:
    """The reference kernels prepared once and timed at the start of every round (per precision)."""

    def __init__(self, rt: Runtime, precisions, batch: int, unroll: int):
        self.rt = rt
        self.works = {(p, name): work for p in precisions for name, work in reference_workloads(rt, p, batch, unroll)}
        self.times: dict[tuple[str, str], list[float]] = {k: [] for k in self.works}

    def time_all(self, samples: int, min_sample_s: float) -> dict[tuple[str, str], float]:
        out = {}
        for key, work in self.works.items():
            out[key] = time_call(work, samples=samples, min_sample_s=min_sample_s, clock=self.rt.clock).median_ms
            self.times[key].append(out[key])
        return out

    def summary(self, old: dict | None = None) -> dict:
        """``{precision: {kernel: {median_ms, drift_pct, n}}}``: drift = (p90 - p10) / median over the profile."""
        out = {p: dict(v) for p, v in (old or {}).items() if isinstance(v, dict)}
        for (p, name), values in self.times.items():
            if not values:
                continue
            arr = np.asarray(values)
            med = float(np.median(arr))
            out.setdefault(p, {})[name] = {"median_ms": med, "n": int(arr.size),
                                           "drift_pct": float((np.percentile(arr, 90) - np.percentile(arr, 10))
                                                              / med * 100)}
        return out


# How far this run's reference kernels may sit from those stored with a table's existing entries before extending it
# is reported: cpu_ort_xeon_amx's 6,030 entries of 2026-12-05 and the 12,775 unaligned ones added on 2026-12-07 were
# measured with the reference kernels 1.33-1.9x apart (conv3x3_64_28 0.284 -> 0.377 ms, dwconv3x3_96_28 0.044 ->
# 0.081 ms), and an hour later they ran 0.58-0.87x their stored times (docs/results/entry_drift_2026-12-07_*.txt).
# Whether re-timing helps is the user's call: on that VM the table re-timed in one sitting (17:09-17:41,
# latency_tables/cpu_ort_xeon_amx_retimed) predicted held-out networks worse than the mixed one (59.1-62.5 % vs
# 63.6-71.6 % within +-10 % at the oracle level, scripts/fidelity_level.py), because the state moves again before
# anything is predicted.
RESUME_TOLERANCE = 0.2
STALE_PREFIX = "entries.stale-"  # rows set aside by `pluto profile --refresh`, re-timed into entries.csv


def stale_reference(stored: dict, here: dict[tuple[str, str], float], tolerance: float = RESUME_TOLERANCE) -> dict:
    """``{precision: {kernel: here / stored}}`` for each precision whose reference kernels moved since a table's
    existing entries were measured (``stored``: its ``metadata['reference']``): their geometric mean by more than
    ``tolerance``, or one kernel by more than twice that; empty if none moved. A loaded machine's noise (a few %
    to ~15 % on one kernel) stays under both."""
    ratios: dict = {}
    for (precision, name), ms in here.items():
        then = ((stored.get(precision) or {}).get(name) or {}).get("median_ms")
        if then and ms:
            ratios.setdefault(precision, {})[name] = ms / then
    return {p: r for p, r in ratios.items()
            if abs(math.exp(np.mean(np.log(list(r.values())))) - 1) > tolerance
            or max(abs(v - 1) for v in r.values()) > 2 * tolerance}


def _stale_note(out: Path, moved: dict, n_rows: int) -> dict:
    """Say (one line on stderr) that the machine moved since ``out``'s existing entries were measured; the record
    kept in the metadata (``resumed_off_level``)."""
    ratios = [r for v in moved.values() for r in v.values()]
    detail = "; ".join(f"{p}: " + ", ".join(f"{k} {r:.2f}x" for k, r in v.items()) for p, v in moved.items())
    print(f"warning: the reference kernels run {min(ratios):.2f}-{max(ratios):.2f}x their times when the {n_rows} "
          f"entries of {out} were measured ({detail}): the new entries describe another machine state; to re-time "
          "the existing ones too, stop and re-run with --refresh (they are kept as entries.stale-<date>.csv)",
          file=sys.stderr)
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "entries_before": n_rows,
            "kernel_ratio": moved}


@contextlib.contextmanager
def _pinned(enabled: bool):
    """Pin this process to one core while single-threaded profiling runs (where the OS allows it)."""
    if not enabled or not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {max(before)})
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, before)


def _read_intact_rows(path: Path) -> list[list[str]]:
    """Rows of an entries CSV that a kill left intact (a half-written last line is dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise TableError(f"{path} is not an entries file of table schema {SCHEMA_VERSION}; delete it or choose "
                         "another --out.")
    good = []
    for row in rows[1:]:
        try:
            if len(row) == len(COLUMNS) and math.isfinite(float(row[COLUMNS.index("latency_ms")])):
                good.append(row)
        except ValueError:
            continue
    return good


def _check_resumable(meta_path: Path, settings: dict) -> dict:
    if not meta_path.exists():
        return {}
    try:
        old = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise TableError(f"{meta_path} is corrupt ({exc}); delete the folder or choose another --out.") from exc
    for key, value in settings.items():
        if old.get("settings", {}).get(key) != value:
            raise TableError(f"{meta_path.parent} holds a table made with {key}={old.get('settings', {}).get(key)!r}, "
                             f"not {value!r}; resuming would mix measurements. Choose another --out or delete it.")
    return old


def measure(runtime: Runtime, work: Prepared, meter=None, samples: int = 30, min_sample_s: float = 0.002,
            energy_window_s: float = 0.3) -> tuple[float, float, int, float]:
    """(median ms, IQR ms, kept samples, mJ per inference or NaN) of one prepared workload."""
    timing = time_call(work, samples=samples, min_sample_s=min_sample_s, clock=runtime.clock)
    mj = float("nan")
    if meter is not None:
        mj = energy_mod.measure_energy(meter, work, timing.median_ms / 1e3, energy_window_s)
    return timing.median_ms, timing.iqr_ms, timing.n, mj


def probe_alignment(rt: Runtime, hw: int = 14) -> tuple[int, dict]:
    """Measure the channel multiple the runtime's fast conv kernels need (ORT's NCHWc block: 8 on AVX2, 16 on AVX-512).

    3x3 convs at c = 48, 56, 64 (multiples of 16 and of 8 only) and 40, 44 (multiple of 8 and of 4 only): a
    width whose time per MAC is > 12 % above its aligned neighbours' runs on slower kernels."""
    from pluto.cost.units import build_unit

    widths = (40, 44, 48, 56, 64)
    works = [rt.prepare(*build_unit(OpSpec("conv", f"probe{c}", c, c, 3, 1, 1, hw, "relu", True), 1), "fp32")
             for c in widths]
    times = measure_interleaved(rt, works, rounds=5, samples=25, min_sample_s=0.001)
    per_mac = {c: t / (c * c) for c, (t, _) in zip(widths, times)}
    slow16 = per_mac[56] > 1.12 * min(per_mac[48], per_mac[64])
    slow8 = per_mac[44] > 1.12 * min(per_mac[40], per_mac[48])
    align = 16 if slow16 else 8 if slow8 else 4
    return align, {"conv3x3_hw": hw, "ms": {str(c): t for c, (t, _) in zip(widths, times)},
                   "per_mac_rel": {str(c): per_mac[c] / min(per_mac.values()) for c in widths},
                   "rule": "16 if c=56 is >12 % slower per MAC than 48/64; else 8 if 44 vs 40/48; else 4"}


def probe_near_align(rt: Runtime, align: int, precisions=("fp32",), hw: int = 14) -> tuple[int | None, dict]:
    """Measure whether channel counts that are multiples of a smaller number (align / 4, align / 2, ... down to 2)
    run nearly as fast as aligned ones, while the others do not (:attr:`LatencyTable.near_align`).

    For each candidate m, 3x3 convs and depthwise 3x3s at c = 6 * align (aligned), c + m (a multiple of m only) and
    c + 1, c + m - 1 (neither) are timed in interleaved rounds; m is near-aligned when, over both kernels and every
    precision, the multiple of m sits closer to the aligned time than to the unaligned ones (log-ratio under half
    of theirs). The smallest such m is returned (None: none is). On the AMX Xeon VM (ORT, 1 thread, 2026-12-07) at
    fp32: 3x3 conv on 100 channels 1.28x the 96-channel one, on 97-99 / 101-103 channels 1.8-2.0x; depthwise 1.05x
    against 4.9-5.1x (``scripts/channel_residues.py``)."""
    from pluto.cost.units import build_unit

    if align < 4:
        return None, {"rule": "align < 4: no smaller multiple to probe"}
    base = 6 * align
    candidates = [m for m in (align // 4, align // 2) if m >= 2 and align % m == 0]
    widths = sorted({base} | {base + d for m in candidates for d in (m, 1, m - 1) if d})
    ops = [(kind, c, OpSpec(kind, f"probe_{kind}{c}", c, c, 3, 1, c if kind == "dwconv" else 1, hw, "relu", True))
           for kind in ("conv", "dwconv") for c in widths]
    works = [(precision, kind, c, rt.prepare(*build_unit(op, 1), precision)) for precision in precisions
             for kind, c, op in ops]
    times = measure_interleaved(rt, [w for *_, w in works], rounds=5, samples=15, min_sample_s=0.001)
    ms = {(p, k, c): t for (p, k, c, _), (t, _) in zip(works, times)}
    verdict: dict[str, dict] = {}
    near = None
    for m in candidates:
        near_log, off_log = [], []
        for p in precisions:
            for k in ("conv", "dwconv"):
                aligned = ms[(p, k, base)]
                near_log.append(abs(math.log(ms[(p, k, base + m)] / aligned)))
                off = [ms[(p, k, base + d)] for d in (1, m - 1) if d]
                off_log.append(abs(math.log(float(np.median(off)) / aligned)))
        ok = float(np.mean(near_log)) < 0.5 * float(np.mean(off_log))
        verdict[str(m)] = {"mean_abs_log_ratio_multiple": float(np.mean(near_log)),
                           "mean_abs_log_ratio_other": float(np.mean(off_log)), "near": ok}
        if ok and near is None:
            near = m
    return near, {"hw": hw, "base": base, "precisions": list(precisions), "verdict": verdict,
                  "ms": {f"{p}/{k}/{c}": t for (p, k, c), t in ms.items()},
                  "rule": "smallest m whose multiples are closer to the aligned time than to the others "
                          "(mean |log ratio| under half)"}


def interleaved_rounds(rt: Runtime, works: list[Prepared], rounds: int = 3, samples: int = 30,
                       min_sample_s: float = 0.002, seed: int = 0, progress: bool = False,
                       desc: str = "measure") -> tuple[list[list[float]], list[list[float]]]:
    """Round medians and round IQRs (ms) per workload, timed in ``rounds`` rounds of shuffled order
    (``samples / rounds`` samples per round, at least 3).

    Randomized interleaving: what is compared is measured under the same load, so drift on a shared
    machine moves all of them alike instead of whichever happened to run during a noisy spell."""
    rng = random.Random(seed)
    per_round = max(3, samples // rounds)
    medians: list[list[float]] = [[] for _ in works]
    iqrs: list[list[float]] = [[] for _ in works]
    bar = tqdm(total=rounds * len(works), desc=desc, disable=not progress)
    for r in range(rounds):
        for i in rng.sample(range(len(works)), len(works)):
            t = time_call(works[i], samples=per_round, min_sample_s=min_sample_s, clock=rt.clock,
                          warmup_s=0.02 if r else 0.05)
            medians[i].append(t.median_ms)
            iqrs[i].append(t.iqr_ms)
            bar.update(1)
    bar.close()
    return medians, iqrs


def split_halves(round_ms: list[list[float]]) -> dict | None:
    """How well the measurement agrees with itself: per network, the median of its even rounds against the median of
    its odd rounds (the same interleaved timing, split in two). ``sigma_log``: the spread of a full measurement,
    std(log(even / odd)) / 2 (each half has twice the variance of the whole; the difference of two halves twice a
    half's). ``ceiling_within_10pct``: the share of networks a *perfect* predictor would put within +-10 % of such
    a measurement, if its noise were normal with that spread; on a shared VM this, not the table, can be what
    bounds the headline figure. None below 4 rounds (halves of fewer than 2 rounds say little)."""
    if not round_ms or min(len(r) for r in round_ms) < 4:
        return None
    from scipy.stats import norm

    diff = np.array([np.log(np.median(r[0::2]) / np.median(r[1::2])) for r in round_ms])
    sigma = float(np.std(diff) / 2)
    return {"rounds": len(round_ms[0]), "halves_within_10pct": float(np.mean(np.abs(np.expm1(diff)) <= 0.10) * 100),
            "sigma_log": sigma,
            # a perfect prediction p of a measurement p * exp(e) is within +-10 % when -log 1.1 <= e <= -log 0.9
            "ceiling_within_10pct": float((norm.cdf(-np.log(0.9) / sigma) - norm.cdf(-np.log(1.1) / sigma)) * 100)
            if sigma > 0 else 100.0}


def net_of_overhead(median_ms: float, overhead_ms: float) -> float:
    """A unit's entry from its timed median: the runtime's per-call overhead subtracted, floored at 5 % of the median
    (a unit faster than the noise of the overhead is not priced at zero)."""
    return max(median_ms - overhead_ms, 0.05 * median_ms)


def measure_interleaved(rt: Runtime, works: list[Prepared], rounds: int = 3, samples: int = 30,
                        min_sample_s: float = 0.002, seed: int = 0, progress: bool = False,
                        desc: str = "measure") -> list[tuple[float, float]]:
    """(median of round medians ms, median IQR ms) per workload (see :func:`interleaved_rounds`)."""
    medians, iqrs = interleaved_rounds(rt, works, rounds, samples, min_sample_s, seed, progress, desc)
    return [(float(np.median(m)), float(np.median(q))) for m, q in zip(medians, iqrs)]


def as_trained(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm still at its initial state (mean 0, var 1, weight 1, bias 0) statistics and affine
    parameters like a trained network's, in place; trained BatchNorms are left alone.

    Timing stands in for a deployed (trained) network. An untrained one folds every BN into the same all-zero conv
    bias; the ONNX exporter merges identical initializers into one shared tensor, and onnxruntime then cannot fuse
    DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv (a fused node needs its own bias): the int8 network runs
    fp32 convs between Q/DQ pairs, 2-5x slower than trained (``scripts/int8_networks.py`` on the AMX Xeon, 1 thread,
    2026-12-06: ResNet-18 10.37 vs 2.09 ms, ResNet-20 1.26 vs 0.25 ms, small_cnn 0.61 vs 0.13 ms). Seeded per layer."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or m.running_mean is None:
                continue
            n = m.num_features
            fresh = (not m.running_mean.any() and bool((m.running_var == 1).all())
                     and (m.weight is None or bool((m.weight == 1).all())) and (m.bias is None or not m.bias.any()))
            if not fresh:
                continue
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.weight is not None:
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
    return model


def network_onnx(model: torch.nn.Module, x: torch.Tensor, precision: str, bits: dict[str, int] | None = None) -> bytes:
    """ONNX bytes of a whole network as pluto deploys it on onnxruntime: exported with BatchNorms as a trained
    network has them (:func:`as_trained`, on a copy); int8 through pluto's own path (``ptq`` W8A8, then
    ``pluto.materialize.export.export_onnx`` with the chip's weight type), so a table's whole-network
    measurements describe the files a compression run writes (onnxruntime's own ``quantize_static`` also
    quantizes residual adds, pooling and the classifier, which pluto's export keeps in fp32: ResNet-20 0.250 vs
    0.293 ms, ResNet-18 2.09 vs 2.25 ms, ``scripts/int8_networks.py`` on the AMX Xeon, 2026-12-06)."""
    import tempfile

    from pluto.decisions.bits import ptq
    from pluto.materialize.export import export_onnx as export_deployed

    model = as_trained(copy.deepcopy(model).cpu().eval())
    if precision != "int8" and not (bits and any(b <= 8 for b in bits.values())):
        return export_onnx(model, (x,))
    # ``bits``: layer -> 8 or 32 (a mixed-precision network), else every layer int8
    qmodel = ptq(model, torch.randn(8, *x.shape[1:]), bits=dict(bits) if bits else 8, batches=1, method="minmax")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        return export_deployed(qmodel, x, Path(tmp) / "model.int8.onnx", int8=True).read_bytes()


def prepare_network(runtime: Runtime, model: torch.nn.Module, shape: tuple[int, ...], precision: str,
                    batch: int = 1) -> Prepared:
    """A whole network as the runtime would deploy it (ORT: :func:`network_onnx`; GPU: one graph)."""
    x = torch.randn(batch, *shape[-3:])
    if runtime.name == "onnxruntime":
        return runtime.prepare_onnx(network_onnx(model, x, precision), (x,))
    return runtime.prepare(copy.deepcopy(model), (x,), precision)  # the runtime moves/casts it; callers keep theirs


def mape_pct(predicted, measured) -> float:
    """Mean absolute percentage error of ``predicted`` against ``measured`` (arrays or lists), in %."""
    predicted, measured = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(predicted - measured) / measured) * 100)


def fit_calibration(points: list[tuple], prior: float = 0.05, prior_fit: dict | None = None,
                    per_op_groups: bool | None = None) -> dict:
    """Fit ``measured = sum_g (scale_g * summed_g + per_act_mb_g * act_g + per_op_group_g * count_g) + per_mb * weight_mb
    + per_op * n_ops + offset``.

    ``points``: (entry sums per calibration group, weight megabytes, op count, measured cost[, activation
    megabytes per group[, op count per group]]) per whole network. ``per_op`` is per-unit dispatch overhead the
    isolated timings miss (eager PyTorch's Python module calls, ORT's per-node scheduling). ``per_act_mb_g`` (fitted
    when the points carry activation megabytes) is *signed*: an op timed alone pays layout reorders and cold-cache
    activation traffic that its neighbours in a network share (negative), or the network pays traffic the
    unit did not (positive). On 79 zoo networks and 88 held-out ones (cpu_ort_xeon_amx, 2026-12-05) this
    term halved the held-out MAPE (23 % -> 12 %) and raised Spearman from 0.935 to 0.983.
    ``per_op_group_g`` (fitted when the points carry op counts per group; it then replaces the global ``per_op``,
    which stays 0) is a *signed* per-unit term of each group: an isolated entry keeps per-call time a unit does not
    pay inside a network (small elementwise and depthwise units: negative) or lacks what it does pay (positive).
    On cpu_ort_xeon_amx (fit on its 237 fp32 / 164 int8 calibration networks, 2026-12-07) it raised the held-out
    networks within +-10 % from 67.0 to 73.9 % (fp32, MAPE 9.1 -> 7.6 %) and 80.0 to 81.7 % (int8, MAPE 6.6 -> 5.0 %).
    **Opt-in** (``per_op_groups=True``; None: as ``prior_fit`` does): on the same table its eltwise term came out
    negative (-0.011 ms per add at int8), so a network without some residual blocks was predicted *slower* per
    removed add: ResNet-20 int8 predicted/measured 1.04x at full depth, 1.27x with 6 of 9 blocks dropped, 1.47x with 7
    (``scripts/depth_latency.py``, 2026-12-07; 0.93x / 0.96x / 0.96x without the term): a fit that prices away the
    decisions the optimizer makes is not shipped by default.
    Bounded least squares on *relative* errors (rows scaled by 1 / measured, so small and large networks
    count alike; group scales, ``per_mb``, ``per_op``, ``offset`` >= 0), with a pull of weight ``prior``
    towards ``prior_fit`` (an earlier fit, e.g. the one made where the table was profiled: few-shot
    adaptation transfers it) or, without one, of every group scale towards 1 (and activation and per-group op
    terms lightly towards 0), so a group the networks barely exercise keeps its measured entries. Records
    before/after MAPE (%).
    """
    from scipy.optimize import lsq_linear

    with_act = all(len(p) > 4 and p[4] is not None for p in points) and bool(points)
    if per_op_groups is None:
        per_op_groups = bool((prior_fit or {}).get("per_op_group"))
    with_counts = per_op_groups and with_act and all(len(p) > 5 and p[5] is not None for p in points)
    prior_act = (prior_fit or {}).get("per_act_mb") or {}
    prior_counts = (prior_fit or {}).get("per_op_group") or {}
    groups = sorted({g for point in points for g in point[0]} | set((prior_fit or {}).get("scales", {})))
    act_groups = sorted({g for point in points for g in point[4]} | set(prior_act)) if with_act else []
    count_groups = sorted({g for point in points for g in point[5]} | set(prior_counts)) if with_counts else []
    meas = np.array([p[3] for p in points], dtype=float)
    sums = np.array([[p[0].get(g, 0.0) for g in groups] for p in points], dtype=float)
    acts = np.array([[p[4].get(g, 0.0) for g in act_groups] for p in points], dtype=float).reshape(len(points), -1)
    counts = np.array([[p[5].get(g, 0.0) for g in count_groups] for p in points],
                      dtype=float).reshape(len(points), -1)
    mbs = np.array([p[1] for p in points], dtype=float)
    n_ops = np.array([p[2] for p in points], dtype=float) * (0.0 if with_counts else 1.0)  # per group instead
    raw = np.concatenate([sums, acts, counts, mbs[:, None], n_ops[:, None], np.ones((len(points), 1))], axis=1)
    design = raw / meas[:, None]
    target = np.ones(len(points))
    k, a, c = len(groups), len(act_groups), len(count_groups)
    lower = np.zeros(raw.shape[1])
    lower[k:k + a + c] = -np.inf
    weight = math.sqrt(prior * len(points))
    share = np.abs(design).mean(axis=0)  # relative contribution of one unit of each coefficient, floored: a group
    # the networks barely run (a few-shot adaptation on a busy machine) is otherwise unregularized and its scale
    # drifts to ~1e8 with no effect on the fit, and the table is then refused at load as damaged
    share = np.maximum(share, 1e-4 * float(share.max()) + 1e-12)
    if prior_fit:  # transfer: every coefficient pulled towards the earlier fit, in units of its typical share
        base = np.array([prior_fit.get("scales", {}).get(g, prior_fit.get("scale", 1.0)) for g in groups]
                        + [prior_act.get(g, 0.0) for g in act_groups]
                        + [prior_counts.get(g, prior_fit.get("per_op", 0.0)) for g in count_groups]
                        + [prior_fit.get("per_mb", 0.0), prior_fit.get("per_op", 0.0) if not c else 0.0,
                           prior_fit.get("offset", 0.0)])
        reg = np.diag(share) * weight
        reg_target = reg @ base
    else:
        reg = np.zeros((k + a + c, raw.shape[1]))
        reg[:k, :k] = np.eye(k) * weight
        reg[k:, k:k + a + c] = np.diag(share[k:k + a + c]) * weight * 0.05  # activation and op terms: a light pull to 0
        reg_target = np.concatenate([np.full(k, weight), np.zeros(a + c)])
    coef = lsq_linear(np.concatenate([design, reg]), np.concatenate([target, reg_target]),
                      bounds=(lower, np.full(raw.shape[1], np.inf))).x
    scales, act_coef, count_coef = coef[:k], coef[k:k + a], coef[k + a:k + a + c]
    per_mb, per_op, offset = coef[k + a + c], 0.0 if c else coef[k + a + c + 1], coef[k + a + c + 2]
    coef[k + a + c + 1] = per_op
    summed = sums.sum(axis=1)
    fitted = np.maximum(raw @ coef, 0.1 * summed) if a else raw @ coef
    fit = {"scales": {g: float(v) for g, v in zip(groups, scales)}, "per_mb": float(per_mb), "per_op": float(per_op),
           "offset": float(offset), "n_models": len(points), "mape_uncalibrated_pct": mape_pct(summed, meas),
           "mape_calibrated_pct": mape_pct(fitted, meas), "prior": prior, "transfer": bool(prior_fit)}
    if a:
        fit["per_act_mb"] = {g: float(v) for g, v in zip(act_groups, act_coef)}
    if c:
        fit["per_op_group"] = {g: float(v) for g, v in zip(count_groups, count_coef)}
    return fit


def calibration_networks(table: LatencyTable) -> list[Network]:
    """The whole networks a table's calibration is fitted on: ``reference: N`` in the space's calibration section
    means N pruned members of its families at each precision (:func:`pluto.cost.adapt.reference_networks`), else
    the space's own calibration networks."""
    n = (table.metadata.get("space", {}).get("calibration") or {}).get("reference")
    if n:
        from pluto.cost.adapt import reference_networks

        nets = {}
        for precision in table.precisions:
            for label, _, model, shape in reference_networks(table, int(n), precision=precision):
                nets.setdefault(label, (label, model, shape))
        return list(nets.values())
    return ProfileSpace.from_dict(table.metadata["space"]).calibration_networks()


def refit(table: LatencyTable, networks: list[Network] | None = None, per_op_groups: bool = False) -> None:
    """(Re-)fit the calibration from the whole-network *measurements* stored in the metadata.

    The networks are rebuilt from the table's space (they are seeded), their entry sums recomputed
    with the current lookup, and the fit redone (per precision, then the price of precision changes on the
    stored mixed-precision networks); nothing is re-measured, so this runs anywhere. ``per_op_groups``: fit a signed
    per-op term per op group (see :func:`fit_calibration`)."""
    if networks is None:
        networks = calibration_networks(table)
    by_label = {label: (model, shape) for label, model, shape in networks}
    _refit_precisions(table, by_label, per_op_groups)
    for metric, fit in list((table.metadata.get("calibration_boundary") or {}).items()):
        if fit.get("networks") and all(r["model"] in by_label for r in fit["networks"]):
            fit_boundaries(table, fit["networks"], by_label)


def _refit_precisions(table: LatencyTable, by_label: dict, per_op_groups: bool = False) -> None:
    for precision, cal in table.metadata.get("calibration", {}).items():
        for record in cal.get("networks", []):
            model, shape = by_label[record["model"]]
            ops = extract_ops(model, shape)
            record["weight_bytes"] = weight_bytes(ops, precision)
            record["n_ops"] = len(ops)
            for metric in table.metrics:
                if f"measured_{metric}" in record:
                    parts = {g: float(v) for g, v in table.summed(ops, metric, precision).items()}
                    record[f"summed_{metric}"] = sum(parts.values())
                    record[f"summed_{metric}_groups"] = parts
            record["act_mb_groups"] = table.activations(ops)
            record["n_ops_groups"] = table.counts(ops)
        for metric in table.metrics:
            points = [(r[f"summed_{metric}_groups"], r["weight_bytes"] / 1e6, r["n_ops"], r[f"measured_{metric}"],
                       r["act_mb_groups"], r.get("n_ops_groups"))
                      for r in cal.get("networks", []) if f"measured_{metric}" in r]
            if points:
                cal[metric] = fit_calibration(points, per_op_groups=per_op_groups)


def profile(space: ProfileSpace, out: str | Path, device: str = "cpu", runtime: str = "onnxruntime",
            precisions: tuple[str, ...] = ("fp32",), batch: int = 1, threads: int = 1, energy: str = "auto",
            samples: int = 24, min_sample_s: float = 0.001, energy_window_s: float = 0.3, unroll: int = 10,
            command: str | None = None, progress: bool = True, limit: int | None = None, rounds: int = 3,
            chunk: int = 64, seed: int = 0, pin: bool = True,
            precision_spaces: dict[str, ProfileSpace] | None = None, refresh: bool = False) -> LatencyTable:
    """Measure ``space`` on this machine into table folder ``out`` and return the sealed table.

    ``threads``: intra-op threads (CPU); ``energy``: 'auto' | 'nvml' | 'rapl' | 'none';
    ``unroll``: unit copies per CUDA graph (amortises the graph launch); ``limit``: stop after that
    many new entries (the table stays incomplete; re-run to resume); ``rounds``/``chunk``: randomized
    interleaving (each entry timed in ``rounds`` shuffled rounds of ``samples / rounds`` samples while its
    chunk of ``chunk`` units stays prepared); ``pin``: pin single-threaded CPU profiling to one core;
    ``precision_spaces``: a smaller space for some precisions (e.g. int8 only for the int8 recipes' families).

    Resuming or extending a table first times the reference kernels: if they moved by more than
    ``RESUME_TOLERANCE`` since its entries were measured, it says so and records it (``resumed_off_level``);
    ``refresh`` re-times every existing entry too, keeping the old rows as ``entries.stale-<date>.csv`` (a killed
    refresh resumes them).
    """
    if batch < 1 or threads < 1 or samples < 3 or rounds < 1 or chunk < 1:
        raise ConfigError(f"profile needs batch >= 1, threads >= 1, samples >= 3, rounds >= 1, chunk >= 1 (got batch "
                          f"{batch}, threads {threads}, samples {samples}, rounds {rounds}, chunk {chunk})")
    rt = Runtime(runtime, device, threads)
    for precision in precisions:
        rt.check_precision(precision)
    meter = energy_mod.open_meter(energy, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path, entries_path = out / METADATA, out / ENTRIES
    dev = device_info(device)
    settings = {"device_type": device, "device_name": dev["name"], "runtime": runtime, "batch": batch,
                "threads": threads if device == "cpu" else None}
    if device == "cpu":  # a table grows only on the kind of machine that started it (flags, cores, versions)
        settings["fingerprint"] = fingerprint()
    old = _check_resumable(meta_path, settings)
    rows = _read_intact_rows(entries_path)
    if refresh and rows:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        stale = out / f"{STALE_PREFIX}{stamp}.csv"
        entries_path.rename(stale)
        print(f"--refresh: {len(rows)} entries kept in {stale}; every entry is timed again", file=sys.stderr)
        rows = []
    # entries set aside by --refresh (this run's or a killed one's) are timed again even where the space lacks them
    stale_keys = {tuple(r[:len(KEY_COLUMNS)]) for path in sorted(out.glob(f"{STALE_PREFIX}*.csv"))
                  for r in _read_intact_rows(path) if r[0] in precisions}
    off_level = old.get("resumed_off_level", [])
    if rows and old.get("reference"):  # resuming: is this still the machine state the entries describe?
        kernels = _ReferenceKernels(rt, precisions, batch, unroll)
        for _ in range(3):
            kernels.time_all(max(3, samples // rounds), min_sample_s)
        moved = stale_reference(old["reference"], {k: float(np.median(v)) for k, v in kernels.times.items()})
        if moved:
            off_level = [*old.get("resumed_off_level", []), _stale_note(out, moved, len(rows))]
    with open(entries_path, "w", newline="") as f:  # rewrite without a torn last line
        csv.writer(f).writerows([COLUMNS, *rows])
    done = {tuple(r[:len(KEY_COLUMNS)]) for r in rows}

    all_precisions = sorted(set(old.get("precisions", [])) | set(precisions))
    metrics = ["latency_ms", "energy_mj"] if meter is not None or "energy_mj" in old.get("metrics", []) else ["latency_ms"]
    metadata = {
        "schema_version": SCHEMA_VERSION, "name": out.name, "complete": False, "settings": settings,
        "device": dev, "runtime": rt.describe(), "precisions": all_precisions, "metrics": metrics,
        "batch": batch, "threads": threads if device == "cpu" else None, "align": space.align, "unaligned": space.unaligned,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "commands": [*[c for c in old.get("commands", [old["command"]] if old.get("command") else [])
                       if c != (command or " ".join(shlex.quote(a) for a in sys.argv))],
                     command or " ".join(shlex.quote(a) for a in sys.argv)],
        "method": {
            "warmup": ">= 0.05 s and >= 3 runs", "samples": samples, "min_sample_s": min_sample_s,
            "statistic": "median of per-run time over samples; IQR as spread",
            "clock": "CPU time of the calling thread (single-threaded CPU inference runs on it; excludes time "
                     "slices taken by other processes on a shared machine)" if rt.clock == "thread" else
                     "wall clock (perf_counter) around synchronised runs",
            "outliers": "Tukey fences (samples outside [Q1 - 1.5 IQR, Q3 + 1.5 IQR] dropped)",
            "overhead": "the runtime's per-call time of an empty unit is subtracted from each entry "
                        "(floored at 5% of the raw time); none for cudagraph (launch amortised over unrolled "
                        "copies, one launch per network left to the calibration offset)",
            "unroll": unroll if runtime == "cudagraph" else 1,
            "energy": (f"{meter.name} counter, tick-aligned sustained loop >= {energy_window_s} s per entry, total "
                       "(not idle-subtracted) energy per inference" if meter else "none: no readable meter"),
            "noise": "CPU tables were measured on a shared 2-core VM: medians of many repetitions, expect a few % "
                     "noise" if device == "cpu" else "dedicated GPU",
        },
        "space": space.source, "overhead_ms": old.get("overhead_ms", {}), "calibration": old.get("calibration", {}),
        "machine": {**cpu_facts(), "fingerprint": fingerprint()} if device == "cpu" else dev,
        "reference": old.get("reference", {}), "calibration_groups": "fine",
    }
    if off_level:
        metadata["resumed_off_level"] = off_level
    metadata["method"].update(rounds=rounds, chunk=chunk, samples_per_round=max(3, samples // rounds),
                              interleaving="shuffled entries, chunks prepared once, shuffled rounds; entry = median of "
                                           "round medians", reference_kernels=[k for k, _ in REFERENCE_KERNELS],
                              pinned=bool(pin and device == "cpu" and threads == 1 and hasattr(os, "sched_setaffinity")))
    if meter is not None:
        metadata["energy"] = {"meter": meter.name, "idle_power_w": energy_mod.idle_power_w(meter)}
    elif "energy" in old:
        metadata["energy"] = old["energy"]
    meta_path.write_text(json.dumps(metadata, indent=2, default=str) + "\n")

    for precision in precisions:  # a CUDA graph of `unroll` copies amortises its launch: nothing to subtract
        work = rt.prepare(Identity(), (torch.randn(batch, 8, 8, 8),), precision, unroll)
        metadata["overhead_ms"][precision] = 0.0 if runtime == "cudagraph" else \
            time_call(work, samples=samples, min_sample_s=min_sample_s, clock=rt.clock).median_ms

    precision_spaces = dict(precision_spaces or {})
    ops_for = {p: (precision_spaces.get(p) or space).unit_ops() for p in precisions}
    if precision_spaces:
        metadata["precision_spaces"] = {**old.get("precision_spaces", {}),
                                        **{p: sp.source for p, sp in precision_spaces.items()}}
    if device == "cpu" and runtime == "onnxruntime" and "align_probe" not in old:
        metadata["align"], metadata["align_probe"] = probe_alignment(rt)
    elif "align_probe" in old:
        metadata["align"], metadata["align_probe"] = old["align"], old["align_probe"]
    if device == "cpu" and runtime == "onnxruntime" and space.unaligned and "near_align_probe" not in old:
        metadata["near_align"], metadata["near_align_probe"] = probe_near_align(rt, int(metadata["align"] or 1),
                                                                                precisions)
    elif "near_align_probe" in old:
        metadata["near_align"], metadata["near_align_probe"] = old.get("near_align"), old["near_align_probe"]
    todo = [(p, op) for p in precisions for op in ops_for[p] if tuple(map(str, entry_key(op, p))) not in done]
    planned = done | {tuple(map(str, entry_key(op, p))) for p, op in todo}
    todo += [op_of_key(key) for key in sorted(stale_keys - planned)]
    if limit is not None:
        todo = todo[:limit]
    # Randomized interleaving (Google Benchmark's random interleaving): entries are taken in a shuffled order, in
    # chunks whose units stay prepared while every unit is timed in `rounds` rounds of shuffled order; an entry is the
    # median of its round medians, so load drift hits the entries of a chunk alike instead of whole op families.
    # Reference kernels are timed in every round; their spread over the profile is the drift it saw.
    order = random.Random(seed).sample(todo, len(todo))
    reference = _ReferenceKernels(rt, precisions, batch, unroll)
    per_round = max(3, samples // rounds)
    with open(entries_path, "a", newline="") as f, _pinned(pin and device == "cpu" and threads == 1):
        writer = csv.writer(f)
        bar = tqdm(total=len(order), desc=f"profile {out.name}", unit="op", disable=not progress)
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            works = [rt.prepare(*build_unit(op, batch), precision, unroll) for precision, op in part]
            times: list[list[float]] = [[] for _ in part]
            iqrs: list[list[float]] = [[] for _ in part]
            mjs = [math.nan] * len(part)
            for r in range(rounds):
                reference.time_all(per_round, min_sample_s)
                for i in random.Random(seed * 7919 + start * 31 + r).sample(range(len(part)), len(part)):
                    t = time_call(works[i], samples=per_round, min_sample_s=min_sample_s, clock=rt.clock,
                                  warmup_s=0.02 if r else 0.05)
                    times[i].append(t.median_ms)
                    iqrs[i].append(t.iqr_ms)
            if meter is not None:
                for i, work in enumerate(works):
                    mjs[i] = energy_mod.measure_energy(meter, work, float(np.median(times[i])) / 1e3,
                                                       energy_window_s)
            for i, (precision, op) in enumerate(part):
                median = float(np.median(times[i]))
                latency = net_of_overhead(median, metadata["overhead_ms"][precision])
                writer.writerow([*map(str, entry_key(op, precision)), f"{latency:.6g}",
                                 f"{float(np.median(iqrs[i])):.6g}", "" if math.isnan(mjs[i]) else f"{mjs[i]:.6g}",
                                 rounds * per_round])
            f.flush()
            metadata["reference"] = reference.summary(old.get("reference"))
            meta_path.write_text(json.dumps(metadata, indent=2, default=str) + "\n")
            bar.update(len(part))
            del works
        bar.close()
    meta_path.write_text(json.dumps(metadata, indent=2, default=str) + "\n")
    measured = {tuple(r[:len(KEY_COLUMNS)]) for r in _read_intact_rows(entries_path)}
    remaining = [1 for p in precisions for op in ops_for[p] if tuple(map(str, entry_key(op, p))) not in measured]
    remaining += [1 for key in stale_keys if key not in measured]
    if remaining:
        return LatencyTable.load(out, allow_incomplete=True)

    table = LatencyTable(read_entries(entries_path), metadata)
    table.metadata["calibration_groups"] = "fine"
    calibrate(table, rt, calibration_networks(table), all_precisions, meter, samples, min_sample_s, energy_window_s,
              progress)
    table.save(out)
    return table


def calibrate(table: LatencyTable, rt: Runtime, networks: list[Network], precisions, meter=None, samples: int = 30,
              min_sample_s: float = 0.002, energy_window_s: float = 0.3, progress: bool = True) -> None:
    """Time whole ``networks`` end to end, store the measurements and fit the calibration (``refit``)."""
    batch = table.metadata["batch"]
    for precision in precisions:
        nets = [(label, model, shape) for label, model, shape in networks if priceable(table, model, shape, precision)]
        works = [prepare_network(rt, model, shape, precision, batch) for _, model, shape in nets]
        kernels = reference_workloads(rt, precision, batch)
        timed = measure_interleaved(rt, works + [w for _, w in kernels], rounds=3, samples=samples,
                                    min_sample_s=min_sample_s, progress=progress, desc=f"calibrate {precision}")
        timed, kernel_ms = timed[:len(works)], {name: t for (name, _), (t, _) in zip(kernels, timed[len(works):])}
        records = []
        for (label, _, _), work, (median, _) in zip(nets, works, timed):
            record = {"model": label, "measured_latency_ms": median}
            if meter is not None and "energy_mj" in table.metrics:
                record["measured_energy_mj"] = energy_mod.measure_energy(meter, work, median / 1e3, energy_window_s)
            records.append(record)
        del works, kernels
        # the machine's level while the calibration was measured (see pluto.cost.adapt.machine_level)
        table.metadata.setdefault("calibration", {})[precision] = {"networks": records, "kernel_ms": kernel_ms}
    refit(table, networks)
    if "int8" in precisions:
        calibrate_boundaries(table, rt, networks, samples, min_sample_s, progress)


def calibrate_boundaries(table: LatencyTable, rt: Runtime, networks: list[Network], samples: int = 30,
                         min_sample_s: float = 0.002, progress: bool = True) -> None:
    """Time :func:`mixed_networks` as pluto deploys them and fit the price of a precision change
    (:func:`fit_boundaries`); tables without both fp32 and int8 (or not on onnxruntime) have none to price.

    The int8 reference kernels are timed in the same rounds: each record keeps the machine's *level* against the
    int8 calibration (:func:`pluto.cost.adapt.machine_level`), so the boundaries can be re-timed alone later
    (``pluto table remeasure TABLE --boundaries``) without the machine's drift since then read as a price."""
    from pluto.cost.adapt import machine_level

    if not {"fp32", "int8"} <= set(table.precisions) or rt.name != "onnxruntime":
        return
    batch = table.metadata["batch"]
    mixed = mixed_networks(table, networks)
    works = [rt.prepare_onnx(network_onnx(model, x, "int8", bits), (x,))
             for _, model, shape, bits in mixed for x in [torch.randn(batch, *shape[-3:])]]
    kernels = reference_workloads(rt, "int8", batch)
    timed = measure_interleaved(rt, works + [w for _, w in kernels], rounds=3, samples=samples,
                                min_sample_s=min_sample_s, progress=progress, desc="calibrate mixed precision")
    kernel_ms = {name: t for (name, _), (t, _) in zip(kernels, timed[len(works):])}
    level = machine_level(table, "int8", kernel_ms)
    del works
    records = [{"model": label, "bits": bits, "measured_latency_ms": ms, **({"level": level} if level else {})}
               for (label, _, _, bits), (ms, _) in zip(mixed, timed[:len(mixed)])]
    fit_boundaries(table, records, {label: (model, shape) for label, model, shape in networks})


MIXED_NETWORKS = 24  # mixed-precision networks timed to fit the price of a precision change


def mixed_networks(table: LatencyTable, networks: list[Network], n: int = MIXED_NETWORKS,
                   seed: int = 0) -> list[tuple[str, torch.nn.Module, tuple, dict[str, int]]]:
    """``n`` of the int8-priceable calibration networks with per-layer bits (int8 / fp32) in the patterns a search
    produces, in turn: the first layer fp32 and the rest int8 (a sensitive stem kept in float), one contiguous int8
    run with fp32 before or after it, and each layer independently int8 with a seeded probability (runs and
    alternations)."""
    from pluto.decisions.bits.prepare import quantizable_layers

    rng = random.Random(seed)
    nets = [net for net in networks if priceable(table, net[1], net[2], "int8")
            and priceable(table, net[1], net[2], "fp32")]
    out = []
    for i, (label, model, shape) in enumerate(rng.sample(nets, min(n, len(nets)))):
        layers = quantizable_layers(model)
        if i % 3 == 0:
            bits = {name: 32 if j == 0 else 8 for j, name in enumerate(layers)}
        elif i % 3 == 1:
            cut = rng.randint(1, max(1, len(layers) - 1))
            first = rng.choice((8, 32))
            bits = {name: first if j < cut else 40 - first for j, name in enumerate(layers)}
        else:
            share = rng.uniform(0.2, 0.8)
            bits = {name: 8 if rng.random() < share else 32 for name in layers}
        out.append((label, model, shape, bits))
    return out


def mixed_prediction(table: LatencyTable, model, shape, bits: dict[str, int], metric: str = "latency_ms",
                     boundaries: bool = True) -> tuple[float, float, float]:
    """(prediction, expected precision changes, megabytes crossing them) of a mixed-precision network; without
    ``boundaries`` the prediction leaves the changes unpriced (what the boundary fit explains)."""
    from pluto.cost.expected import boundary_terms, expected_cost, precision_key

    ops = extract_ops(model, shape)
    precisions = {name: {precision_key(b): torch.tensor(1.0, dtype=torch.float64)} for name, b in bits.items()}
    with torch.no_grad():
        value = float(expected_cost(table, ops, metric, precisions=precisions, default_precision="int8"))
    layer = [{"int8" if bits[op.name] <= 8 else "fp32": torch.tensor(1.0, dtype=torch.float64)}
             if op.name in bits else None for op in ops]
    edges, mb = (float(v) for v in boundary_terms(ops, layer, [torch.tensor(float(op.cout), dtype=torch.float64)
                                                               for op in ops]))
    if not boundaries:  # the price of the changes is additive: take it out
        per_edge, per_mb = table.boundary_coefficients(metric)
        value -= per_edge * edges + per_mb * mb
    return value, edges, mb


def fit_boundaries(table: LatencyTable, records: list[dict], by_label: dict) -> None:
    """Fit ``measured = prediction without boundaries + per_edge * changes + per_mb * crossing MB`` (both >= 0,
    relative least squares) on timed mixed-precision networks; stored in ``metadata['calibration_boundary']``.
    A record's ``level`` (the machine's speed when it was timed relative to the calibration, see
    :func:`calibrate_boundaries`) divides its measurement."""
    from scipy.optimize import lsq_linear

    for metric in table.metrics:
        rows = [r for r in records if f"measured_{metric}" in r]
        if len(rows) < 3:
            continue
        base, design, meas = [], [], []
        for r in rows:
            model, shape = by_label[r["model"]]
            value, edges, mb = mixed_prediction(table, model, shape, r["bits"], metric, boundaries=False)
            base.append(value)
            design.append((edges, mb))
            meas.append(r[f"measured_{metric}"] / (r.get("level") or 1.0))
        base, design, meas = np.array(base), np.array(design), np.array(meas)
        coef = lsq_linear(design / meas[:, None], (meas - base) / meas, bounds=(0.0, np.inf)).x
        after = base + design @ coef
        table.metadata.setdefault("calibration_boundary", {})[metric] = {
            "per_edge": float(coef[0]), "per_mb": float(coef[1]), "n_models": len(rows),
            "mape_without_pct": mape_pct(base, meas), "mape_with_pct": mape_pct(after, meas), "networks": rows}


def priceable(table: LatencyTable, model, shape, precision: str) -> bool:
    """Whether every op of ``model`` has entries at ``precision`` (int8 may cover fewer families than fp32)."""
    try:
        table.summed(extract_ops(model, shape), "latency_ms", precision)
        return True
    except TableError:
        return False
