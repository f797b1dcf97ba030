"""Few-shot adaptation of a table to the machine at hand (``pluto table calibrate``), and the machine check.

Two VMs of one instance type differ by 40-60 %, and a table profiled on one is a *prior* on the
other (LitePred, HELP). Re-profiling thousands of entries takes many minutes; adapting takes under a
minute: time the reference kernels and <= 20 diverse whole *reference networks* (pruned members of
the model families the table covers, at their input sizes) here, and refit the table's whole-network
calibration to them (:func:`pluto.cost.profiler.fit_calibration`), pulled towards the table's own fit
so that families the reference set covers thinly keep their shape. The entries (the ranking of
widths, kernels and ops) are kept; what moves is the level per op group, the per-op overhead and the
offset, which is what changes between machines of one kind.

The machine check (:func:`check`) times only the reference kernels (~2 s) and compares them with the
table's: more than 10 % apart means the table does not describe this machine.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import time
from pathlib import Path

import numpy as np
from torch import nn

from pluto.cost.machine import cpu_facts, describe, fingerprint
from pluto.cost.table import LatencyTable
from pluto.errors import TableError

# The families `pluto profile --model` covers for the shipped CPU tables and `scripts/fidelity.py --families zoo` checks.
ZOO_FAMILIES = ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                "efficientnet_b0", "shufflenet_v2_x1_0", "regnet_x_400mf", "mnasnet0_5", "small_cnn"]
KERNEL_TOLERANCE = 0.10

Sample = tuple[str, str, nn.Module, tuple[int, ...]]  # (label, family, model, input shape C,H,W)


def family_networks(families: list[str], shapes: list[tuple[int, ...]], n: int, seed: int, align: int = 8,
                    min_width: float = 0.25) -> list[Sample]:
    """``n`` pruned networks spread round-robin over ``families`` x ``shapes`` (see :func:`pair_networks`)."""
    return pair_networks([(f, tuple(s)) for f in families for s in shapes], n, seed, align, min_width)


def pair_networks(pairs: list[tuple[str, tuple[int, ...]]], n: int, seed: int, align: int = 8,
                  min_width: float = 0.25) -> list[Sample]:
    """``n`` pruned networks spread round-robin over (family, input shape) ``pairs``; every other round is rounded to
    ``align`` (what the materializer makes by default), the rest keep any width (unrounded pruning)."""
    from pluto.cost.samples import PrunedFamily

    rng = random.Random(seed)
    cache: dict[tuple, PrunedFamily] = {}
    out = []
    for i in range(n):
        family, shape = pairs[i % len(pairs)]
        if (family, shape) not in cache:
            cache[(family, shape)] = PrunedFamily(family, shape)
        rounded = (i + i // len(pairs)) % 2 == 0  # alternate, and swap each round over the pairs
        model = cache[(family, shape)].sample(rng, min_width, align if rounded else 1)
        out.append((f"{family}@{'x'.join(map(str, shape))}#{i}{'r' if rounded else 'u'}", family, model, shape))
    return out


SPACE_PATTERN = "mrmrmsmrmrmsmrmrmsmr"  # m: MBConv subnet, r: pruned ResNet-18, s: small CNN (10 : 7 : 3)


def space_networks(table: LatencyTable, n: int, seed: int) -> list[Sample]:
    """Networks drawn from a table's own profiling space (MBConv subnets, pruned ResNet-18s, small CNNs), in the
    proportions 10 : 7 : 3 of every 20, interleaved (:data:`SPACE_PATTERN`) so that *any* first ``n`` mixes the
    kinds: the reference set takes a first 10, and in blocks of ten MBConvs then seven ResNets it held no ResNet at
    all, so adapting the H100 table never saw the launch-bound pruned ResNet-18s that were its held-out misses."""
    from pluto.cost.samples import MBConvSpace, random_mbconv, random_resnet
    from pluto.cost.space import ProfileSpace
    from pluto.models import create_model

    space = ProfileSpace.from_dict(table.metadata["space"])
    rng = random.Random(seed)
    mb = [MBConvSpace.from_dict({"min_width": space.min_width, **s}) for s in space.mbconv]
    res = [(s.get("in_channels", 1), s.get("input_size", 28)) for s in space.resnet]
    out: list[Sample] = []
    for i in range(n):
        kind = SPACE_PATTERN[i % len(SPACE_PATTERN)]  # a space without MBConvs gives their slots to ResNets
        if kind == "m" and mb:
            sp = mb[i % len(mb)]
            out.append((f"mbconv_{i}", "mbconv", random_mbconv(rng, sp, prune=True, align=space.align if i % 2 else 1),
                        (sp.in_channels, sp.input_size, sp.input_size)))
        elif kind in "mr" and res:
            c, hw = res[i % len(res)]
            out.append((f"resnet18_pruned_{i}@{hw}", "resnet18_pruned",
                        random_resnet(rng, c, space.min_width, space.align if i % 2 else 1), (c, hw, hw)))
        else:
            w = max(8, round(32 * rng.uniform(space.min_width, 1.0) / 8) * 8) / 32
            out.append((f"small_cnn_w{w:.2f}_{i}", "small_cnn", create_model("small_cnn", width=w), (1, 28, 28)))
    return [(a, b, m.eval(), s) for a, b, m, s in out]


def table_families(table: LatencyTable, precision: str | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(registry family, input shape) pairs a table was profiled for at ``precision`` (its space's ``models``)."""
    from pluto.models import list_models

    space = (table.metadata.get("precision_spaces") or {}).get(precision) or table.metadata.get("space", {})
    models = space.get("models") or []
    return sorted({(m["name"], tuple(m.get("input_shape", (1, 28, 28)))) for m in models
                   if m.get("name") in list_models()})


def reference_networks(table: LatencyTable, n: int = 20, seed: int = 0, precision: str | None = None) -> list[Sample]:
    """The fixed, diverse reference set of a table: ``n`` pruned members of its families at ``precision`` (seed 0;
    held-out checks use other seeds)."""
    pairs = table_families(table, precision)
    space = table.metadata.get("space", {})
    if not pairs:
        return space_networks(table, n, seed)
    if (space.get("mbconv") or space.get("resnet")) and len(pairs) < 4:  # few registry families: mix in the space's
        k = n // 2
        return pair_networks(pairs, n - k, seed, table.align or 8) + space_networks(table, k, seed)
    return pair_networks(pairs, n, seed, table.align or 8)


# ---- the reference kernels ---------------------------------------------------------------------
def kernel_workloads(table: LatencyTable, precision: str) -> list[tuple[str, object]]:
    """(name, prepared workload) of each reference kernel with the table's runtime, threads and batch."""
    from pluto.cost.profiler import reference_workloads
    from pluto.cost.runtimes import Runtime

    rt = Runtime(table.runtime, table.device.get("type", "cpu"), int(table.metadata.get("threads") or 1))
    return reference_workloads(rt, precision, int(table.metadata.get("batch") or 1))


def time_kernels(table: LatencyTable, precision: str, rounds: int = 3, samples: int = 24) -> dict[str, float]:
    """Median ms of each reference kernel on this machine, with the table's runtime, threads and batch."""
    from pluto.cost.profiler import measure_interleaved
    from pluto.cost.runtimes import Runtime

    rt = Runtime(table.runtime, table.device.get("type", "cpu"), int(table.metadata.get("threads") or 1))
    named = kernel_workloads(table, precision)
    times = measure_interleaved(rt, [w for _, w in named], rounds, samples, min_sample_s=0.001)
    return {name: t for (name, _), (t, _) in zip(named, times)}


def machine_level(table: LatencyTable, precision: str, here_ms: dict[str, float]) -> float | None:
    """How fast this machine runs *now* relative to when the table's calibration was measured: the geometric mean
    over the reference kernels of (time here / the table's: those timed with its calibration networks, else the
    profile's); None if the table stored none.

    A shared VM drifts (neighbours' memory traffic, clocks): the same networks measured minutes apart moved 8-15 %
    on the AMX Xeon (2026-12-06). Kernels timed in the same interleaved rounds as the networks tell that level
    apart from the table's model error."""
    stored = ((table.metadata.get("calibration") or {}).get(precision) or {}).get("kernel_ms") or \
        {k: v.get("median_ms") for k, v in ((table.metadata.get("reference") or {}).get(precision) or {}).items()
         if isinstance(v, dict)}
    ratios = [here_ms[k] / v for k, v in stored.items() if k in here_ms and v]
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else None


def _stored_networks(table: LatencyTable, precision: str) -> dict[str, float]:
    """Calibration network -> its stored latency (ms) at ``precision`` when the current fit was made: an adapted
    table's reference networks (:func:`adapt` refits to them), else the profile's calibration networks. (Reading the
    profile's after an adaptation double-counted the level: the adapted fit already carries it, and at 2026-12-07
    18:13 the held-out figure "at the networks' level" read 2.3 % instead of the kernels' 71.6 %.)"""
    cal = (table.metadata.get("calibration") or {}).get(precision) or {}
    records = cal.get("reference_networks") or cal.get("networks", [])
    return {r["model"]: float(r["measured_latency_ms"]) for r in records if (r.get("measured_latency_ms") or 0) > 0}


def level_networks(table: LatencyTable, precision: str, k: int = 12) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """``k`` of the table's own calibration networks whose calibration-time measurement at ``precision`` is stored
    (spread over the list, so over its families): timed again beside what is predicted, they read the machine's
    level the way the table was fitted (:func:`network_level`)."""
    from pluto.cost.profiler import calibration_networks

    stored = _stored_networks(table, precision)
    nets = [net for net in calibration_networks(table) if net[0] in stored]
    if not nets or k <= 0:
        return []
    step = max(1, len(nets) // k)
    return nets[::step][:k]


def network_level(table: LatencyTable, precision: str, here_ms: dict[str, float]) -> float | None:
    """How fast this machine runs now relative to the table's calibration, read from whole networks: the median
    over :func:`level_networks` of (time here / their stored calibration-time time); None without any.

    Whole networks, not the five reference kernels: on the AMX Xeon (2026-12-07 15:18) the kernels read 1.145x their
    calibration-time level while the same 88 held-out networks ran 1.093x their time of 7 minutes earlier."""
    stored = _stored_networks(table, precision)
    ratios = [here_ms[name] / stored[name] for name in here_ms if name in stored]
    return float(np.exp(np.median(np.log(ratios)))) if ratios else None


def check(table: LatencyTable, precision: str | None = None) -> dict:
    """Time the reference kernels here and compare with the table's: ``{ratios, max_deviation, agrees, message}``."""
    precision = precision or ("fp32" if "fp32" in table.precisions else table.precisions[0])
    stored = (table.metadata.get("reference") or {}).get(precision) or {}
    if not stored:
        return {"agrees": None, "ratios": {}, "max_deviation": None,
                "message": f"table {table.metadata.get('name')} has no reference kernels (made before pluto recorded "
                           "them): it cannot be checked here; adapt it with `pluto table calibrate`"}
    here = time_kernels(table, precision)
    ratios = {k: here[k] / v["median_ms"] for k, v in stored.items() if k in here and v.get("median_ms")}
    dev = max(abs(r - 1) for r in ratios.values()) if ratios else None
    agrees = dev is not None and dev <= KERNEL_TOLERANCE
    message = (f"reference kernels agree with table {table.metadata.get('name')} within {dev * 100:.0f} %" if agrees
               else f"reference kernels run {min(ratios.values()):.2f}-{max(ratios.values()):.2f}x the table's "
                    f"{table.metadata.get('name')} here ({describe()}): it does not describe this machine; adapt it: "
                    f"pluto table calibrate {table.path or '<table>'} --out <dir>")
    return {"agrees": agrees, "ratios": ratios, "max_deviation": dev, "message": message, "here_ms": here}


def entry_drift(table: LatencyTable, precision: str = "fp32", per_group: int = 6, seed: int = 0, rounds: int = 3,
                samples: int = 18, min_ms: float = 0.005) -> dict[str, dict]:
    """Re-time ``per_group`` of the table's own entries of each calibration group here (seeded sample of entries
    >= ``min_ms``, interleaved rounds, the table's overhead subtracted as the profiler did): ``{group: {ratio, n,
    min, max}}`` with ratio = median(time here / entry).

    The reference kernels are five aligned ops; a machine can move its kernel classes apart. On the AMX Xeon VM at
    2026-12-07 18:06, against cpu_ort_xeon_amx, aligned convs (entries of 2026-12-05) ran 0.93x their entries and
    unaligned ones (2026-12-07) 0.63-0.75x; against the table re-timed an hour earlier every group ran 0.45-0.72x
    (docs/results/entry_drift_2026-12-07_intel-xeon-amx.txt). One ratio per group shows which classes moved, and by
    how much, against the entries themselves."""
    from pluto.cost.profiler import measure_interleaved, net_of_overhead
    from pluto.cost.runtimes import Runtime
    from pluto.cost.table import KEY_COLUMNS, op_of_key
    from pluto.cost.units import build_unit

    rows = table.entries[(table.entries["precision"] == precision) & (table.entries["latency_ms"] >= min_ms)]
    by_group: dict[str, list] = {}
    for (_, row), key in zip(rows.iterrows(), rows[list(KEY_COLUMNS)].itertuples(index=False)):
        _, op = op_of_key(tuple(key))
        by_group.setdefault(table.group_of(op), []).append((float(row["latency_ms"]), op))
    rng = random.Random(seed)
    picked = [(g, ms, op) for g, items in sorted(by_group.items()) for ms, op in rng.sample(items, min(per_group, len(items)))]
    rt = Runtime(table.runtime, table.device.get("type", "cpu"), int(table.metadata.get("threads") or 1))
    batch = int(table.metadata.get("batch") or 1)
    works = [rt.prepare(*build_unit(op, batch), precision) for _, _, op in picked]
    times = measure_interleaved(rt, works, rounds, samples, min_sample_s=0.001)
    overhead = float((table.metadata.get("overhead_ms") or {}).get(precision) or 0.0)
    ratios: dict[str, list[float]] = {}
    for (group, entry_ms, _), (ms, _) in zip(picked, times):
        ratios.setdefault(group, []).append(net_of_overhead(ms, overhead) / entry_ms)
    return {g: {"ratio": float(np.median(r)), "n": len(r), "min": float(min(r)), "max": float(max(r))}
            for g, r in ratios.items()}


# ---- adaptation ---------------------------------------------------------------------------------
def adapt(table: LatencyTable, n: int = 20, rounds: int = 3, samples: int = 24, seed: int = 0,
          prior: float | None = None, progress: bool = True, energy_window_s: float | None = None) -> dict:
    """Measure the reference kernels and ``n`` reference networks here and refit the table's calibration to them.

    CPU tables and GPU tables alike (run it on the machine to describe). Every metric the table prices from
    measurements is refitted: latency, and energy where the table has it and this machine has a meter
    (NVML on GPUs, RAPL on CPUs): a fresh card's idle power, clocks and temperature move energy more than
    latency, so the energy level is re-fitted from the same reference networks (each timed in a
    tick-aligned sustained loop) and this machine's idle power is recorded.

    The table object is changed in place (its ``metadata['calibration']``, ``reference`` and ``machine``
    now describe this machine); returns the summary also stored as ``metadata['adapted']``.
    """
    from pluto.cost import energy as energy_mod
    from pluto.cost.profiler import measure_interleaved, prepare_network, priceable
    from pluto.cost.runtimes import Runtime, device_info

    start = time.perf_counter()
    device = table.device.get("type", "cpu")
    rt = Runtime(table.runtime, device, int(table.metadata.get("threads") or 1))
    batch = int(table.metadata.get("batch") or 1)
    meter = None
    if "energy_mj" in table.metrics:
        try:
            meter = energy_mod.open_meter("auto", device)
        except Exception:  # noqa: BLE001 - no meter here: energy keeps the table's fit, and the summary says so
            meter = None
    window = energy_window_s or energy_window(table)
    here = describe() if device == "cpu" else f"{device_info(device)['name']} on {describe()}"
    summary: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": here,
                     "fingerprint": fingerprint(), "networks": n, "precisions": {},
                     "energy": (f"refitted ({meter.name})" if meter else
                                "not adapted: no energy meter readable here" if "energy_mj" in table.metrics else None)}
    if meter is not None:
        idle = energy_mod.idle_power_w(meter)
        summary["idle_power_w"] = idle
        summary["idle_power_w_table"] = (table.metadata.get("energy") or {}).get("idle_power_w")
    if device == "cpu" and "int8" in table.precisions:  # its int8 networks are timed with this chip's weight type
        from pluto.cost.machine import int8_weights_mismatch

        note = int8_weights_mismatch(table.metadata)
        if note:
            summary["int8_weights"] = note
    old_reference = table.metadata.get("reference") or {}
    new_reference: dict = {}
    for precision in table.precisions:
        nets = reference_networks(table, n, seed, precision)  # int8 may cover fewer families than fp32
        nets_p = [net for net in nets if priceable(table, net[2], net[3], precision)]
        named = kernel_workloads(table, precision)
        if len(nets_p) < 3:
            kernels = time_kernels(table, precision, rounds, samples)
            new_reference[precision] = {k: {"median_ms": v, "n": rounds} for k, v in kernels.items()}
            summary["precisions"][precision] = {"skipped": f"only {len(nets_p)} reference networks priceable"}
            continue
        works = [prepare_network(rt, model, shape, precision, batch) for _, _, model, shape in nets_p]
        # kernels in the same shuffled rounds as the networks: the level they record is the networks' level
        measured = measure_interleaved(rt, works + [w for _, w in named], rounds, samples, progress=progress,
                                       desc=f"adapt {precision}")
        kernels = {name: t for (name, _), (t, _) in zip(named, measured[len(works):])}
        measured = measured[:len(works)]
        new_reference[precision] = {k: {"median_ms": v, "n": rounds} for k, v in kernels.items()}
        energies = ([energy_mod.measure_energy(meter, work, ms / 1e3, window) for work, (ms, _) in zip(works, measured)]
                    if meter is not None else None)
        del works
        cal = table.metadata.setdefault("calibration", {}).setdefault(precision, {})
        records = [{"model": label, "family": family, "measured_latency_ms": ms}
                   for (label, family, _, _), (ms, _) in zip(nets_p, measured)]
        result = {"kernel_ratio": {k: v / (old_reference.get(precision, {}).get(k, {}).get("median_ms") or float("nan"))
                                   for k, v in kernels.items()}}
        for metric, values in (("latency_ms", [ms for ms, _ in measured]), ("energy_mj", energies)):
            if values is None:
                continue
            err_before = _mape(table, nets_p, values, precision, metric)
            refit_to(table, precision, nets_p, values, metric, prior)
            suffix = "" if metric == "latency_ms" else "_energy"
            result[f"mape_before_pct{suffix}"] = err_before
            result[f"mape_after_pct{suffix}"] = cal[metric]["mape_calibrated_pct"]
            result[f"adaptation{suffix}"] = cal[metric].get("adaptation")
        if energies is not None:
            for record, mj in zip(records, energies):
                record["measured_energy_mj"] = mj
        cal["reference_networks"] = records
        cal["kernel_ms"] = kernels
        summary["precisions"][precision] = result
    table.metadata["reference"] = new_reference
    table.metadata["machine"] = {**cpu_facts(), "fingerprint": fingerprint()}
    if device != "cpu":
        table.metadata["device_adapted"] = device_info(device)
    if meter is not None:
        table.metadata.setdefault("energy", {})["idle_power_w_adapted"] = summary["idle_power_w"]
    summary["seconds"] = round(time.perf_counter() - start, 1)
    table.metadata["adapted"] = summary
    return summary


# An adaptation refits the op-group terms only when its references cover each (family, input shape) they come from at
# least this many times; fewer, and it sets the table's level alone (see refit_to).
REFS_PER_PAIR_TO_REFIT = 2.0
REFIT_PRIOR = 0.3


@contextlib.contextmanager
def _with_fit(table: LatencyTable, precision: str, metric: str, fit: dict):
    """``table`` priced with ``fit`` as its ``metric`` calibration at ``precision`` for the duration."""
    cal = table.metadata.setdefault("calibration", {}).setdefault(precision, {})
    had, old = metric in cal, cal.get(metric)
    cal[metric] = fit
    try:
        yield table
    finally:
        if had:
            cal[metric] = old
        else:
            cal.pop(metric, None)


def _predict_points(table: LatencyTable, precision: str, metric: str, fit: dict, points: list[tuple]) -> np.ndarray:
    with _with_fit(table, precision, metric, fit):
        return np.array([float(table.calibrate(p[0], metric, precision, p[1] * 1e6, p[2], p[4], p[5]))
                         for p in points])


def levelled_fit(table: LatencyTable, precision: str, metric: str, fit: dict, points: list[tuple]) -> dict:
    """``fit`` with every coefficient times one factor: the median of measured / predicted over ``points``."""
    measured = np.array([p[3] for p in points], dtype=float)
    level = float(np.median(measured / _predict_points(table, precision, metric, fit, points)))
    out = {**fit, "scales": {g: v * level for g, v in (fit.get("scales") or {}).items()}}
    for key in ("per_act_mb", "per_op_group"):
        if fit.get(key):
            out[key] = {g: v * level for g, v in fit[key].items()}
    for key in ("per_mb", "per_op", "offset"):
        out[key] = float(fit.get(key, 0.0)) * level
    if "scale" in fit:
        out["scale"] = float(fit["scale"]) * level
    out["level"] = level
    return out


def refit_to(table: LatencyTable, precision: str, nets: list[Sample], values, metric: str = "latency_ms",
             prior: float | str | None = None) -> dict:
    """Adapt the table's whole-network ``metric`` calibration at ``precision`` to ``nets`` measured as ``values`` here;
    the table is changed in place and the new fit returned. The step :func:`adapt` runs after timing its reference
    networks, and ``scripts/fidelity.py --adapt-beside`` after timing them in the same rounds as what it predicts.

    First the level: every coefficient of the table's fit times the median measured / predicted ratio of the
    references; ``prior`` "level" stops there. With a number ``prior``, a refit of every term follows, pulled towards
    that levelled fit with weight ``prior`` (:func:`pluto.cost.profiler.fit_calibration`). With ``prior`` None the
    references decide: a refit with
    pull :data:`REFIT_PRIOR` when they hold at least :data:`REFS_PER_PAIR_TO_REFIT` networks per (family, input
    shape) they come from, else the level alone. Measured on the AMX Xeon VM (2026-12-07, held-out networks timed in
    the same rounds as the references, ``docs/results/fidelity_intel-xeon_onnxruntime_*_near_beside*``): fp32 from
    20 references over 20 pairs, refit 62.5 % within +-10 % (ShuffleNet +49 %: one network per pair cannot pin 12 op
    groups) against 75.0 % for the level alone; from 60 over 23 pairs, refit 86.4 % / 87.5 % (two measurements)
    against the level alone's 84.1 % / 78.4 %; int8 from 20 over 6 pairs, refit 83.3 % against 78.3 %. (A 5-fold
    cross-validation over the references chose wrongly in one of those four: its errors differ by less than their
    noise.) The choice is stored in the fit as ``adaptation``."""
    from pluto.cost.ops import extract_ops
    from pluto.cost.profiler import fit_calibration, mape_pct

    points = [calibration_point(table, extract_ops(model, shape), value, precision, metric)
              for (_, _, model, shape), value in zip(nets, values)]
    cal = table.metadata.setdefault("calibration", {}).setdefault(precision, {})
    base = {k: v for k, v in (cal.get(metric) or {}).items() if k != "adaptation"}
    pairs = len({(family, tuple(shape)) for _, family, _, shape in nets})
    per_pair = len(points) / max(pairs, 1)
    if not base:  # an uncalibrated table: nothing to transfer, fit the references alone
        fit = fit_calibration(points, prior=0.05 if prior in (None, "level") else float(prior))
        fit["adaptation"] = {"chosen": "fitted to the references alone (nothing to transfer)", "level": None,
                             "references": len(points), "family_shapes": pairs, "rule": "no fit in the table"}
        cal[metric] = fit
        return fit
    if prior == "level":
        choice = None
    elif prior is not None:
        choice = float(prior)
    else:
        choice = REFIT_PRIOR if per_pair >= REFS_PER_PAIR_TO_REFIT else None
    levelled = levelled_fit(table, precision, metric, base, points)
    if choice is None:
        measured = np.array([p[3] for p in points], dtype=float)
        predicted = _predict_points(table, precision, metric, levelled, points)
        summed = np.array([sum(p[0].values()) for p in points], dtype=float)
        fit = {**levelled, "n_models": len(points), "mape_uncalibrated_pct": mape_pct(summed, measured),
               "mape_calibrated_pct": mape_pct(predicted, measured), "prior": None, "transfer": True}
    else:
        fit = fit_calibration(points, prior=choice, prior_fit=levelled)
    fit["adaptation"] = {"chosen": "level only" if choice is None else f"refit, prior {choice:g}",
                         "level": levelled["level"], "references": len(points), "family_shapes": pairs,
                         "rule": "given" if prior is not None else
                                 f"refit when >= {REFS_PER_PAIR_TO_REFIT:g} references per (family, input shape)"}
    cal[metric] = fit
    return fit


def calibration_point(table: LatencyTable, ops, value: float, precision: str, metric: str = "latency_ms",
                      price=None) -> tuple:
    """One whole network as :func:`pluto.cost.profiler.fit_calibration` takes it: (entry sums per calibration group,
    weight MB, op count, measured ``value``, activation MB per group, op count per group). ``price``: an optional
    op -> cost (None: the table's entry) to try other units with the same fit."""
    from pluto.cost.table import weight_bytes

    if price is None:
        parts = {g: float(v) for g, v in table.summed(ops, metric, precision).items()}
    else:
        parts: dict[str, float] = {}
        for op in ops:
            cost = price(op)
            group = table.group_of(op)
            parts[group] = parts.get(group, 0.0) + (float(table.lookup(op, metric, precision)) if cost is None else cost)
    return (parts, weight_bytes(ops, precision) / 1e6, len(ops), value, table.activations(ops), table.counts(ops))


def energy_window(table: LatencyTable) -> float:
    """The sustained-loop window the table's energy entries were measured with (from its method), else 0.3 s."""
    import re

    method = str((table.metadata.get("method") or {}).get("energy", ""))
    found = re.search(r">= ([0-9.]+) s", method)
    return float(found.group(1)) if found else 0.3


def _mape(table: LatencyTable, nets: list[Sample], measured, precision: str, metric: str = "latency_ms") -> float:
    from pluto.cost.ops import extract_ops
    from pluto.cost.profiler import mape_pct

    values = [m[0] if isinstance(m, tuple) else m for m in measured]
    return mape_pct([table.predict_ops(extract_ops(m, s), metric, precision) for _, _, m, s in nets], values)


def cache_dir() -> Path:
    import os

    return Path(os.environ.get("PLUTO_CACHE", Path.home() / ".cache" / "pluto")) / "adapted"


def sibling_for_this_machine(table: LatencyTable, covers=None) -> LatencyTable | None:
    """A complete table beside ``table`` (same folder of tables) that was profiled on *this* machine kind (same
    fingerprint: flags, cores, runtime versions) with the same runtime, batch and threads and at least its
    precisions, the newest first, and that ``covers(candidate)`` accepts (e.g. prices the model to compress); None
    when there is none. A table measured here describes this chip's kernels, which a table adapted from another
    chip only rescales (an AMX table's int8 entries on an AVX2 EPYC, say)."""
    if table.path is None or table.device.get("type", "cpu") != "cpu":
        return None
    here, settings = fingerprint(), table.metadata.get("settings") or {}
    found = []
    for meta_file in sorted(Path(table.path).parent.glob("*/metadata.json")):
        if meta_file.parent.resolve() == Path(table.path).resolve():
            continue
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        other = meta.get("settings") or {}
        if ((meta.get("machine") or {}).get("fingerprint") == here and meta.get("complete")
                and meta.get("runtime", {}).get("name") == table.runtime
                and all(other.get(k) == settings.get(k) for k in ("device_type", "batch", "threads"))
                and set(table.precisions) <= set(meta.get("precisions") or [])):
            found.append((str(meta.get("created", "")), meta_file.parent))
    for _, folder in sorted(found, reverse=True):
        candidate = LatencyTable.load(folder)
        if covers is None or covers(candidate):
            return candidate
    return None


def for_this_machine(table: LatencyTable, auto: bool = True, log=print, covers=None,
                     siblings: bool = True) -> tuple[LatencyTable, dict]:
    """The table as this machine sees it: itself when it was made (or adapted) here or its reference kernels agree;
    else (``siblings``) a table beside it that was profiled on this machine kind and ``covers`` what is needed
    (:func:`sibling_for_this_machine`); else a copy adapted here (cached per table and machine fingerprint under
    ``~/.cache/pluto/adapted``). A benchmark that compares named tables passes ``siblings=False``."""
    from pluto.cost.machine import int8_weights_mismatch, mismatch

    if table.device.get("type", "cpu") != "cpu":
        return table, {"status": "gpu table: not adapted on the CPU"}
    note = mismatch({**table.metadata, "path": str(table.path)})
    if note is None:
        return table, {"status": "table made on this machine kind"}
    sibling = sibling_for_this_machine(table, covers) if siblings else None
    if sibling is not None:
        log(f"using {sibling.path}: profiled on this machine kind ({fingerprint()}); {table.metadata.get('name')} "
            "was made on another")
        return sibling, {"status": "a table made on this machine kind", "path": str(sibling.path),
                         "instead_of": str(table.path)}
    weights = int8_weights_mismatch(table.metadata)
    if weights:
        log(f"note: {weights}")
    import hashlib

    calibration = hashlib.sha256(json.dumps(table.metadata.get("calibration", {}), sort_keys=True,
                                            default=str).encode()).hexdigest()[:6]
    cached = cache_dir() / (f"{table.metadata.get('name', 'table')}-{table.metadata.get('sha256', '')[:8]}{calibration}-"
                            f"{fingerprint()}")
    if (cached / "metadata.json").exists():
        adapted = LatencyTable.load(cached)
        log(f"using the table adapted to this machine earlier: {cached}")
        return adapted, {"status": "adapted (cached)", "path": str(cached), **adapted.metadata.get("adapted", {})}
    result = check(table)
    if result["agrees"]:
        log(result["message"])
        return table, {"status": "reference kernels agree", "max_deviation": result["max_deviation"]}
    log(result["message"])
    if not auto:
        return table, {"status": "mismatch, not adapted", "message": result["message"]}
    log(f"adapting {table.metadata.get('name')} to this machine (reference kernels + networks, < 1 min) ...")
    copy_ = LatencyTable(table.entries.copy(), json.loads(json.dumps(table.metadata, default=str)))
    summary = adapt(copy_, progress=False)
    copy_.metadata["adapted_from"] = str(table.path)
    copy_.save(cached)
    log(f"adapted in {summary['seconds']} s; cached at {cached}")
    return copy_, {"status": "adapted", "path": str(cached), **summary}


__all__ = ["ZOO_FAMILIES", "family_networks", "space_networks", "reference_networks", "time_kernels", "check",
           "adapt", "for_this_machine", "sibling_for_this_machine"]
