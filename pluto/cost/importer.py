"""``pluto table import``: energy from an external power meter, for chips with no readable counter.

The meter's readings arrive as a CSV with the table's key columns (``precision, kind, kernel,
stride, hw, act, bn, variant, cin, cout``) and ``energy_mj`` (mJ per inference of that unit,
e.g. from a sustained loop of the unit while the meter logs, divided by the loop's inference
count). Every entry of the table must get a reading; a partial import is refused rather than
leaving a table that prices some ops' energy as missing.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pluto.cost.table import KEY_COLUMNS, LatencyTable
from pluto.errors import TableError


def import_energy(table: LatencyTable, csv_path: str | Path, meter: str = "external") -> LatencyTable:
    """A copy of ``table`` with ``energy_mj`` from ``csv_path``; TableError if readings are missing or bad."""
    try:
        readings = pd.read_csv(csv_path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise TableError(f"cannot read power-meter CSV {csv_path}: {exc}") from exc
    missing = [c for c in (*KEY_COLUMNS, "energy_mj") if c not in readings.columns]
    if missing:
        raise TableError(f"{csv_path} lacks columns {missing}; it needs the table's key columns "
                         f"{list(KEY_COLUMNS)} and energy_mj (mJ per inference).")
    if readings["energy_mj"].isna().any() or (readings["energy_mj"] <= 0).any():
        raise TableError(f"{csv_path} has missing or non-positive energy_mj values; fix the meter log.")
    readings = readings.astype({"bn": bool, "variant": str}).fillna({"variant": ""})
    readings["variant"] = readings["variant"].replace("nan", "")
    entries = table.entries.drop(columns=["energy_mj"]).merge(
        readings[list(KEY_COLUMNS) + ["energy_mj"]], on=list(KEY_COLUMNS), how="left")
    absent = entries["energy_mj"].isna().sum()
    if absent:
        first = entries[entries["energy_mj"].isna()].iloc[0]
        raise TableError(f"{csv_path} has no reading for {absent} of {len(entries)} entries (first: "
                         f"{dict(first[list(KEY_COLUMNS)])}); measure those units too.")
    metadata = {**table.metadata, "metrics": ["latency_ms", "energy_mj"],
                "energy": {"meter": meter, "source": str(csv_path)}}
    return LatencyTable(entries, metadata)
