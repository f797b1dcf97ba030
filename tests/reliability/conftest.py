"""Fixtures of the reliability tests: a tiny saved table (with calibration) that small_cnn can be priced on."""
from __future__ import annotations

import pandas as pd
import pytest

from pluto.cost.ops import extract_ops
from pluto.cost.profiler import COLUMNS
from pluto.cost.space import ProfileSpace
from pluto.cost.table import SCHEMA_VERSION, LatencyTable, entry_key
from pluto.models import create_model

SPACE = {"name": "tiny", "channel_grid": [4, 8, 16, 32, 64], "min_width": 0.25,
         "models": [{"name": "small_cnn", "input_shape": [1, 28, 28], "kwargs": {"width": 0.5}}],
         "calibration": {"mbconv": 0, "resnet": 0, "models": True}}
INPUT = (1, 1, 28, 28)


def build_table() -> LatencyTable:
    space = ProfileSpace.from_dict(SPACE)
    rows = []
    for precision in ("fp32", "int8"):
        for op in space.unit_ops():
            value = 1e-3 + op.macs * 1e-6
            value = value / 2 if precision == "int8" else value
            rows.append([*entry_key(op, precision), value, value * 0.01, value * 5, 30])
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    fit = {"offset": 0.01, "per_mb": 0.02, "per_op": 0.001, "scales": {"conv_kxk": 1.1, "other": 0.9},
           "mape_calibrated_pct": 5.0, "mape_uncalibrated_pct": 20.0, "n_models": 3}
    metadata = {"schema_version": SCHEMA_VERSION, "name": "tiny", "device": {"type": "cpu", "name": "Test CPU"},
                "runtime": {"name": "onnxruntime"}, "precisions": ["fp32", "int8"],
                "metrics": ["latency_ms", "energy_mj"], "batch": 1, "threads": 1, "created": "2026-01-01",
                "command": "synthetic", "method": {}, "align": 1, "space": space.source,
                "overhead_ms": {"fp32": 0.01, "int8": 0.01},
                "calibration": {p: {"latency_ms": dict(fit), "energy_mj": dict(fit), "networks": []}
                                for p in ("fp32", "int8")}}
    return LatencyTable(frame, metadata)


@pytest.fixture(scope="session")
def tiny_table_files(tmp_path_factory) -> dict[str, bytes]:
    """The two files of a valid tiny table, as bytes (tests write mutated copies)."""
    folder = tmp_path_factory.mktemp("tiny_table")
    build_table().save(folder)
    return {name: (folder / name).read_bytes() for name in ("entries.csv", "metadata.json")}


@pytest.fixture(scope="session")
def small_cnn_ops():
    return extract_ops(create_model("small_cnn", width=0.5), INPUT)
