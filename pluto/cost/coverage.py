"""Whether a table measured what it is asked to price: predictions outside its profiled ranges are extrapolations.

``LatencyTable.lookup`` extends the measured grid linearly in channels and scales the nearest measured
resolution by pixel count; that is a guess, not a measurement. :func:`check_coverage` names every op priced
that way, warns (``PredictionRangeWarning``), or refuses with ``strict=True`` (``pluto predict --strict``).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from pluto.cost.ops import MATRIX_KINDS, OpSpec
from pluto.errors import TableError

if TYPE_CHECKING:
    from pluto.cost.table import LatencyTable


class PredictionRangeWarning(UserWarning):
    """A prediction extrapolates beyond the resolutions or channel counts the table measured."""


def out_of_range(table: "LatencyTable", ops: list[OpSpec], precision: str) -> list[str]:
    """One line per op whose resolution or channel count lies outside what ``table`` measured for its kind."""
    from pluto.cost.table import entry_key

    frame = table.entries
    frame = frame[frame["precision"] == precision]
    ranges: dict[tuple, tuple[int, int, int, int, int, int]] = {}
    for key, sub in frame.groupby(["kind", "kernel", "stride", "act", "bn", "variant"]):
        ranges[key] = (sub["hw"].min(), sub["hw"].max(), sub["cin"].min(), sub["cin"].max(), sub["cout"].min(),
                       sub["cout"].max())
    problems = []
    for op in ops:
        key = entry_key(op, precision)
        found = ranges.get((key[1], key[2], key[3], key[5], key[6], key[7]))
        if found is None:
            continue  # no entry at all: lookup itself raises a TableError naming the op
        hw_lo, hw_hi, cin_lo, cin_hi, cout_lo, cout_hi = (int(v) for v in found)
        cin, cout = key[8], key[9]
        parts = []
        if not hw_lo <= op.hw <= hw_hi:
            parts.append(f"resolution {op.hw} outside the measured {hw_lo}..{hw_hi}")
        if op.kind in MATRIX_KINDS and not cin_lo <= cin <= cin_hi:
            parts.append(f"{cin} input channels outside {cin_lo}..{cin_hi}")
        if not cout_lo <= cout <= cout_hi:
            parts.append(f"{cout} output channels outside {cout_lo}..{cout_hi}")
        if parts:
            problems.append(f"{op.name} ({op.kind} k={op.kernel}): {', '.join(parts)}")
    return problems


def check_coverage(table: "LatencyTable", ops: list[OpSpec], precision: str, strict: bool = False) -> list[str]:
    """Warn (or, with ``strict``, raise TableError) when pricing ``ops`` extrapolates beyond the table's ranges."""
    problems = out_of_range(table, ops, precision)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        message = (f"table {table.metadata.get('name', table.path)} did not measure {len(problems)} of {len(ops)} ops "
                   f"at this size, so their cost is extrapolated: {shown}. Profile a space with these shapes "
                   "(`pluto profile --space ...` resumes and adds them) for a measured prediction")
        if strict:
            raise TableError(message + " (refused: --strict).")
        warnings.warn(message + ".", PredictionRangeWarning, stacklevel=2)
    return problems
