"""Measurer.measure_many: several ONNX files timed against each other, interleaved round-robin."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pluto.cost.measure import Measurer
from pluto.cost.table import LatencyTable
from pluto.errors import ConfigError, TableError
from pluto.materialize.export import export_onnx
from pluto.models import create_model

REPO = Path(__file__).resolve().parents[2]


def _table(name: str) -> LatencyTable:
    try:
        return LatencyTable.load(REPO / "latency_tables" / name)
    except TableError as exc:  # the shipped table is being re-profiled in this checkout
        pytest.skip(f"latency_tables/{name} not loadable: {exc}")


def test_measure_many_times_every_file_interleaved(tmp_path):
    measurer = Measurer(_table("cpu_ort"), samples=6, rounds=2)
    if not measurer.reachable()[0]:
        pytest.skip(measurer.where())
    x = torch.randn(1, 1, 28, 28)
    files = [export_onnx(create_model("small_cnn", width=w).eval(), x, tmp_path / f"w{w}.onnx", int8=False)
             for w in (0.25, 1.0)]
    small, large = measurer.measure_many(files, (1, 1, 28, 28))
    assert small.latency_ms > 0 and large.latency_ms > 0 and small.energy_mj is None
    assert "2 files interleaved" in small.method and "median of 2 round medians" in small.method


def test_measure_many_refuses_a_table_it_cannot_time_as_onnx(tmp_path):
    runner = Measurer(_table("h100_cudagraph"), runner="bench {onnx}")  # a remote chip: timed one file at a time
    with pytest.raises(ConfigError, match="call measure"):
        runner.measure_many([tmp_path / "a.onnx"], (1, 1, 28, 28))
