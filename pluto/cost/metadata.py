"""The schema of a latency table's ``metadata.json`` and of its entries' values, checked on load.

Predictions read the metadata (calibration coefficients, batch, threads, device, runtime), so it is
validated like the entries: types and ranges of every key pluto reads, each failure a
:class:`~pluto.errors.TableError` that names the key and the fix. Keys pluto does not know are
accepted untouched (newer tables may carry more); optional keys may be absent.

``metadata_sha256`` covers the values predictions depend on (:func:`metadata_digest`), so an edited
calibration offset or batch is caught like an edited entries.csv. Calibration coefficients come from
a non-negative least-squares fit (the signed per-group terms are bounded, and a prediction that uses them is
floored), the price of a precision change is non-negative, and entries are non-negative and finite, so a table
that passes cannot predict a negative, infinite or NaN cost.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluto.errors import TableError

SCHEMA_VERSION = 1  # the version this schema describes (pluto.cost.table.SCHEMA_VERSION)
DEVICE_TYPES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
METRICS = ("latency_ms", "energy_mj")
COEFFICIENTS = ("scale", "offset", "per_mb", "per_op")
SIGNED_TERMS = ("per_act_mb", "per_op_group")  # per op group, signed
BOUNDARY_COEFFICIENTS = ("per_edge", "per_mb")  # the price of a precision change between layers
MAX_COEFFICIENT = 1e6
# plausible ranges of entry columns: beyond them a value is a typo or an edit, not a measurement
INT_RANGES = {"kernel": (1, 64), "stride": (1, 64), "hw": (1, 1 << 16), "cin": (1, 1 << 20), "cout": (1, 1 << 20),
              "n_samples": (0, 1 << 31)}
VALUE_RANGES = {"latency_ms": 1e6, "latency_iqr_ms": 1e6, "energy_mj": 1e9}


def _fail(path: Path, key: str, problem: str) -> TableError:
    return TableError(f"{path}: {key} {problem}; the metadata was edited or damaged. Restore it from git or "
                      "re-run the `pluto profile` command that made the table.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _str_list(path: Path, meta: dict, key: str, allowed: tuple[str, ...]) -> None:
    value = meta[key]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _fail(path, key, f"must be a non-empty list of names, got {value!r}")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise _fail(path, key, f"holds {unknown}, not among {list(allowed)}")


def validate_metadata(metadata: Any, path: Path) -> dict:
    """Check the keys pluto reads; returns ``metadata`` unchanged. TableError on the first problem."""
    path = Path(path)
    if not isinstance(metadata, dict):
        raise TableError(f"{path} holds a {type(metadata).__name__}, not a metadata object; restore it from git or "
                         "re-run `pluto profile`.")
    if metadata.get("schema_version") != SCHEMA_VERSION:
        return metadata  # another schema: LatencyTable.load says so and how to re-profile
    # presence of the required keys is checked by LatencyTable.load; types of those present here
    if "device" in metadata:
        device = metadata["device"]
        if not isinstance(device, dict):
            raise _fail(path, "device", f"must be an object with 'type' and 'name', got {device!r}")
        if device.get("type") not in DEVICE_TYPES:
            raise _fail(path, "device.type", f"must be one of {list(DEVICE_TYPES)}, got {device.get('type')!r}")
        if not isinstance(device.get("name"), str) or not device["name"]:
            raise _fail(path, "device.name", f"must be the chip's name, got {device.get('name')!r}")
    if "runtime" in metadata:
        runtime = metadata["runtime"]
        if not isinstance(runtime, dict) or not isinstance(runtime.get("name"), str) or not runtime["name"]:
            raise _fail(path, "runtime", f"must be an object with a 'name', got {runtime!r}")
    if "precisions" in metadata:
        _str_list(path, metadata, "precisions", PRECISIONS)
    if "metrics" in metadata:
        _str_list(path, metadata, "metrics", METRICS)
        if "latency_ms" not in metadata["metrics"]:
            raise _fail(path, "metrics", "must include latency_ms")
    if "batch" in metadata and not (_is_int(metadata["batch"]) and 1 <= metadata["batch"] <= 1 << 16):
        raise _fail(path, "batch", f"must be a whole number >= 1, got {metadata['batch']!r}")
    if "threads" in metadata and metadata["threads"] is not None and \
            not (_is_int(metadata["threads"]) and 1 <= metadata["threads"] <= 4096):
        raise _fail(path, "threads", f"must be a whole number >= 1 or null, got {metadata['threads']!r}")
    for key in ("created", "command", "name"):
        if key in metadata and not isinstance(metadata[key], str):
            raise _fail(path, key, f"must be a string, got {metadata[key]!r}")
    if "method" in metadata and not isinstance(metadata["method"], (dict, str)):
        raise _fail(path, "method", f"must be an object or a string, got {metadata['method']!r}")
    for key in ("complete", "unaligned"):
        if key in metadata and not isinstance(metadata[key], bool):
            raise _fail(path, key, f"must be true or false, got {metadata[key]!r}")
    if "align" in metadata and not (_is_int(metadata["align"]) and 1 <= metadata["align"] <= 1024):
        raise _fail(path, "align", f"must be a whole number >= 1, got {metadata['align']!r}")
    if "n_entries" in metadata and not (_is_int(metadata["n_entries"]) and metadata["n_entries"] >= 0):
        raise _fail(path, "n_entries", f"must be a whole number >= 0, got {metadata['n_entries']!r}")
    for key in ("sha256", "metadata_sha256"):
        value = metadata.get(key)
        if key in metadata and not (isinstance(value, str) and len(value) == 64
                                    and all(c in "0123456789abcdef" for c in value)):
            raise _fail(path, key, f"must be a 64-digit hex SHA-256, got {value!r}")
    for key in ("space", "energy", "settings", "calibration", "overhead_ms"):  # read with .get(key, {}).get(...)
        if key in metadata and not isinstance(metadata[key], dict):
            raise _fail(path, key, f"must be an object, got {metadata[key]!r}")
    overhead = metadata.get("overhead_ms")
    if overhead is not None:
        if not isinstance(overhead, dict) or not all(_is_number(v) and v >= 0 for v in overhead.values()):
            raise _fail(path, "overhead_ms", f"must map precisions to times >= 0 ms, got {overhead!r}")
    _validate_calibration(metadata.get("calibration"), path)
    _validate_boundaries(metadata.get("calibration_boundary"), path)
    expected = metadata.get("metadata_sha256")
    if expected is not None and expected != metadata_digest(metadata):
        raise TableError(f"{path} does not match its metadata_sha256: a value predictions depend on (calibration, "
                         "batch, threads, device, runtime, precisions, metrics or the entries checksum) was edited. "
                         f"Restore it from git or re-run: {metadata.get('command')}")
    return metadata


def _validate_calibration(calibration: Any, path: Path) -> None:
    if calibration is None:
        return
    if not isinstance(calibration, dict):
        raise _fail(path, "calibration", f"must be an object per precision, got {type(calibration).__name__}")
    for precision, per_metric in calibration.items():
        if not isinstance(per_metric, dict):
            raise _fail(path, f"calibration.{precision}", f"must be an object per metric, got {per_metric!r}")
        for metric in METRICS:
            fit = per_metric.get(metric)
            if fit is None:
                continue
            key = f"calibration.{precision}.{metric}"
            if not isinstance(fit, dict):
                raise _fail(path, key, f"must be an object of fit coefficients, got {fit!r}")
            if "offset" not in fit:
                raise _fail(path, f"{key}.offset", "is missing")
            for name in COEFFICIENTS:
                if name in fit and not (_is_number(fit[name]) and 0 <= fit[name] <= MAX_COEFFICIENT):
                    raise _fail(path, f"{key}.{name}", f"must be a finite number in [0, {MAX_COEFFICIENT:g}] (the fit "
                                f"is non-negative), got {fit[name]!r}")
            scales = fit.get("scales")
            if scales is not None:
                if not isinstance(scales, dict) or not all(
                        isinstance(g, str) and _is_number(v) and 0 <= v <= MAX_COEFFICIENT for g, v in scales.items()):
                    raise _fail(path, f"{key}.scales", "must map groups to finite numbers in "
                                f"[0, {MAX_COEFFICIENT:g}], got {scales!r}")
            for name in SIGNED_TERMS:  # per group, signed (ridged towards 0 by the fit)
                terms = fit.get(name)
                if terms is not None and (not isinstance(terms, dict) or not all(
                        isinstance(g, str) and _is_number(v) and abs(v) <= MAX_COEFFICIENT for g, v in terms.items())):
                    raise _fail(path, f"{key}.{name}", "must map groups to finite numbers in "
                                f"[-{MAX_COEFFICIENT:g}, {MAX_COEFFICIENT:g}], got {terms!r}")


def _validate_boundaries(boundary: Any, path: Path) -> None:
    """``calibration_boundary.<metric>``: the price of a precision change, non-negative like the fit that made it."""
    if boundary is None:
        return
    if not isinstance(boundary, dict):
        raise _fail(path, "calibration_boundary", f"must be an object per metric, got {type(boundary).__name__}")
    for metric, fit in boundary.items():
        key = f"calibration_boundary.{metric}"
        if not isinstance(fit, dict):
            raise _fail(path, key, f"must be an object of fit coefficients, got {fit!r}")
        for name in BOUNDARY_COEFFICIENTS:
            if not (_is_number(fit.get(name)) and 0 <= fit[name] <= MAX_COEFFICIENT):
                raise _fail(path, f"{key}.{name}", f"must be a finite number in [0, {MAX_COEFFICIENT:g}] (the fit is "
                            f"non-negative), got {fit.get(name)!r}")


def metadata_digest(metadata: dict) -> str:
    """SHA-256 of the metadata values predictions and verdicts read (keys added later do not change it)."""
    device = metadata.get("device") if isinstance(metadata.get("device"), dict) else {}
    runtime = metadata.get("runtime") if isinstance(metadata.get("runtime"), dict) else {}
    calibration = {}
    given = metadata.get("calibration")
    for precision, per_metric in (given.items() if isinstance(given, dict) else ()):
        if isinstance(per_metric, dict):
            calibration[precision] = {
                metric: {k: per_metric[metric][k] for k in (*COEFFICIENTS, "scales", *SIGNED_TERMS)
                         if k in per_metric[metric] and per_metric[metric][k] is not None}
                for metric in METRICS if isinstance(per_metric.get(metric), dict)}
    covered = {"schema_version": metadata.get("schema_version"), "device": [device.get("type"), device.get("name")],
               "runtime": runtime.get("name"), "precisions": metadata.get("precisions"),
               "metrics": metadata.get("metrics"), "batch": metadata.get("batch"), "threads": metadata.get("threads"),
               "align": metadata.get("align"), "unaligned": metadata.get("unaligned"),
               "sha256": metadata.get("sha256"), "n_entries": metadata.get("n_entries"),
               "overhead_ms": metadata.get("overhead_ms"), "calibration": calibration}
    boundary = metadata.get("calibration_boundary")
    if isinstance(boundary, dict) and boundary:  # covered when present (tables without it keep their digest)
        covered["calibration_boundary"] = {m: {k: f.get(k) for k in BOUNDARY_COEFFICIENTS}
                                           for m, f in boundary.items() if isinstance(f, dict)}
    return hashlib.sha256(json.dumps(covered, sort_keys=True, default=str).encode()).hexdigest()


def check_entry_text(path: Path, int_columns: tuple[str, ...]) -> None:
    """Integer key columns must hold whole numbers in range (pandas would truncate 3.5 to 3 or overflow)."""
    try:
        raw = pd.read_csv(path, usecols=lambda c: c in int_columns, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise TableError(f"{path} is corrupt ({exc}); delete the table and re-run `pluto profile`.") from exc
    for column in raw.columns:
        text = raw[column].str.strip()
        bad = ~text.str.fullmatch(r"-?\d{1,12}")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise TableError(f"{path}: column {column} row {row + 2} holds {raw[column].iloc[row]!r}, not a whole "
                             "number; the table was edited or damaged. Restore it from git or re-run `pluto profile`.")


def validate_entries(frame: pd.DataFrame, path: Path, metadata: dict) -> None:
    """Every value finite, non-negative and in a plausible range; precisions those the metadata declares."""
    for column, (lo, hi) in INT_RANGES.items():
        values = frame[column].to_numpy()
        bad = (values < lo) | (values > hi)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise TableError(f"{path}: {column}={values[row]} in row {row + 2} is outside [{lo}, {hi}]; the table was "
                             "edited or damaged. Restore it from git or re-run `pluto profile`.")
    for column, hi in VALUE_RANGES.items():
        values = frame[column].to_numpy(dtype=np.float64)
        present = ~np.isnan(values) if column != "latency_ms" else np.ones(len(values), dtype=bool)
        bad = present & ~((values >= 0) & (values <= hi))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise TableError(f"{path}: {column}={values[row]} in row {row + 2} is not a cost in [0, {hi:g}]; the table "
                             "was edited or damaged. Restore it from git or re-run `pluto profile`.")
    precisions = metadata.get("precisions") or []
    unknown = sorted(set(frame["precision"]) - set(precisions))
    if unknown:
        raise TableError(f"{path} has entries at precision(s) {unknown} that metadata.json does not declare "
                         f"({precisions}); restore the table or re-run `pluto profile`.")
