"""The cost metrics pluto knows: their units and where their truth comes from. The one home of these names.

===========  ======  ========  =====================================================
metric       unit    source    comes from
===========  ======  ========  =====================================================
latency_ms   ms      table     a measured latency table; verified by measuring on the chip
energy_mj    mJ      table     a table with energy entries (NVML / RAPL / power meter)
size_bytes   bytes   analytic  weights x bits / 8 (exact)
macs         MACs    analytic  multiply-accumulates per inference, batch 1 (exact)
===========  ======  ========  =====================================================
"""
from __future__ import annotations

UNITS: dict[str, str] = {"latency_ms": "ms", "energy_mj": "mJ", "size_bytes": "bytes", "macs": "MACs"}
SOURCES: dict[str, str] = {"latency_ms": "table", "energy_mj": "table", "size_bytes": "analytic", "macs": "analytic"}
METRICS = tuple(UNITS)
TABLE_METRICS = tuple(m for m, s in SOURCES.items() if s == "table")
ANALYTIC_METRICS = tuple(m for m, s in SOURCES.items() if s == "analytic")


def needs_table(metric: str) -> bool:
    """Whether ``metric`` is priced by a latency table (and verified by measurement) rather than counted."""
    return SOURCES.get(metric) == "table"
