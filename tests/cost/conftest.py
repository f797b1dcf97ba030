"""Shared fixtures: a tiny space and a synthetic table whose entries follow MACs exactly."""
from __future__ import annotations

import pandas as pd
import pytest

from pluto.cost.profiler import COLUMNS
from pluto.cost.space import ProfileSpace
from pluto.cost.table import SCHEMA_VERSION, LatencyTable, entry_key

TINY_SPACE = {
    "name": "tiny",
    "channel_grid": [4, 8, 16, 32, 64],
    "min_width": 0.25,
    "models": [{"name": "small_cnn", "input_shape": [1, 28, 28], "kwargs": {"width": 0.5}}],
    "calibration": {"mbconv": 0, "resnet": 0, "models": True},
}


def synthetic_value(op, precision: str) -> float:
    """1 us per unit + 1 ns per MAC (+ 1 ns per output element); int8 twice as fast."""
    elems = op.cout * op.hw_out ** 2
    value = 1e-3 + op.macs * 1e-6 + elems * 1e-6
    return value / 2 if precision == "int8" else value


@pytest.fixture
def tiny_space() -> ProfileSpace:
    return ProfileSpace.from_dict(TINY_SPACE)


def make_table(space: ProfileSpace, precisions=("fp32", "int8"), energy: bool = True) -> LatencyTable:
    rows = []
    for precision in precisions:
        for op in space.unit_ops():
            value = synthetic_value(op, precision)
            rows.append([*entry_key(op, precision), value, value * 0.01, value * 5 if energy else None, 30])
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    metadata = {"schema_version": SCHEMA_VERSION, "name": "synthetic", "device": {"type": "cpu", "name": "Test CPU"},
                "runtime": {"name": "onnxruntime"}, "precisions": list(precisions),
                "metrics": ["latency_ms", "energy_mj"] if energy else ["latency_ms"], "batch": 1, "threads": 1,
                "created": "2026-01-01", "command": "synthetic", "method": {}, "align": 1, "space": space.source}
    return LatencyTable(frame, metadata)


@pytest.fixture
def table(tiny_space) -> LatencyTable:
    return make_table(tiny_space)
