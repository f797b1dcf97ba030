"""Table metadata under a schema and a checksum; entries finite and in range; no negative or NaN cost."""
from __future__ import annotations

import json
import math

import pytest

from pluto.cost.metadata import metadata_digest
from pluto.cost.table import LatencyTable, file_sha256
from pluto.errors import TableError


ORIGINAL = object()


def write(folder, files, meta=ORIGINAL, entries=None, reseal=True):
    """Write a table folder; ``reseal`` recomputes both checksums so the schema checks behind them are reached."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "entries.csv").write_bytes(entries if entries is not None else files["entries.csv"])
    if meta is ORIGINAL:
        meta = json.loads(files["metadata.json"])
    if reseal and isinstance(meta, dict):
        meta["sha256"] = file_sha256(folder / "entries.csv")
        meta["n_entries"] = len((folder / "entries.csv").read_text().strip().splitlines()) - 1
        meta["metadata_sha256"] = metadata_digest(meta)
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def meta_of(files):
    return json.loads(files["metadata.json"])


def test_saved_table_carries_metadata_checksum_and_loads(tmp_path, tiny_table_files, small_cnn_ops):
    meta = meta_of(tiny_table_files)
    assert meta["metadata_sha256"] == metadata_digest(meta)
    table = LatencyTable.load(write(tmp_path / "t", tiny_table_files, reseal=False))
    value = table.predict_ops(small_cnn_ops, "latency_ms", "fp32")
    assert math.isfinite(value) and value > 0


@pytest.mark.parametrize("name", ["cpu_ort_xeon_amx", "cpu_ort_epyc", "cpu_ort", "cpu_torch", "h100_cudagraph"])
def test_shipped_tables_pass_the_schema_and_checksum(repo_root, name):
    table = LatencyTable.load(f"{repo_root}/latency_tables/{name}")
    assert table.metadata["metadata_sha256"] == metadata_digest(table.metadata)


def test_edited_calibration_is_caught_by_the_metadata_checksum(tmp_path, tiny_table_files):
    meta = meta_of(tiny_table_files)
    meta["calibration"]["fp32"]["latency_ms"]["offset"] = 5.0  # a plausible but edited value
    with pytest.raises(TableError, match="metadata_sha256"):
        LatencyTable.load(write(tmp_path / "t", tiny_table_files, meta, reseal=False))


def test_unknown_extra_keys_and_absent_optional_keys_are_accepted(tmp_path, tiny_table_files, small_cnn_ops):
    meta = meta_of(tiny_table_files)
    meta["reference"] = {"anything": [1, 2]}
    meta["fingerprint"] = "abc"
    meta["calibration"]["fp32"]["latency_ms"]["per_network"] = [{"model": "x", "error": -3.0}]
    for key in ("overhead_ms", "align", "space", "name"):
        del meta[key]
    table = LatencyTable.load(write(tmp_path / "t", tiny_table_files, meta))
    assert table.predict_ops(small_cnn_ops, "latency_ms", "fp32") > 0


BAD_METADATA = [
    ("a list", lambda m: [m], "not a metadata object"),
    ("null", lambda m: None, "not a metadata object"),
    ("string device", lambda m: {**m, "device": "cpu"}, "device"),
    ("device type", lambda m: {**m, "device": {"type": "tpu", "name": "x"}}, "device.type"),
    ("negative offset", lambda m: _cal(m, "offset", -1.0), "offset"),
    ("nan scale", lambda m: _cal(m, "scales", {"conv_kxk": float("nan")}), "scales"),
    ("inf per_mb", lambda m: _cal(m, "per_mb", float("inf")), "per_mb"),
    ("string offset", lambda m: _cal(m, "offset", "0.1"), "offset"),
    ("missing offset", lambda m: _cal(m, "offset", None, delete=True), "offset"),
    ("threads string", lambda m: {**m, "threads": "two"}, "threads"),
    ("threads zero", lambda m: {**m, "threads": 0}, "threads"),
    ("batch zero", lambda m: {**m, "batch": 0}, "batch"),
    ("batch bool", lambda m: {**m, "batch": True}, "batch"),
    ("precisions str", lambda m: {**m, "precisions": "fp32"}, "precisions"),
    ("unknown precision", lambda m: {**m, "precisions": ["fp32", "int8", "fp7"]}, "precisions"),
    ("metrics without latency", lambda m: {**m, "metrics": ["energy_mj"]}, "metrics"),
    ("runtime string", lambda m: {**m, "runtime": "onnxruntime"}, "runtime"),
    ("calibration list", lambda m: {**m, "calibration": [1]}, "calibration"),
    ("complete string", lambda m: {**m, "complete": "yes"}, "complete"),
    ("overhead negative", lambda m: {**m, "overhead_ms": {"fp32": -1}}, "overhead_ms"),
]


def _cal(meta, key, value, delete=False):
    fit = meta["calibration"]["fp32"]["latency_ms"]
    if delete:
        del fit[key]
    else:
        fit[key] = value
    return meta


@pytest.mark.parametrize("name,mutate,match", BAD_METADATA, ids=[b[0] for b in BAD_METADATA])
def test_bad_metadata_is_a_table_error(tmp_path, tiny_table_files, name, mutate, match):
    meta = mutate(meta_of(tiny_table_files))
    with pytest.raises(TableError, match=match):
        LatencyTable.load(write(tmp_path / "t", tiny_table_files, meta))


def _edit_cell(text: bytes, column: str, value: str) -> bytes:
    lines = text.decode().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index(column)] = value
    lines[1] = ",".join(row)
    return ("\n".join(lines) + "\n").encode()


BAD_CELLS = [("latency_ms", "inf"), ("latency_ms", "-0.5"), ("latency_ms", "1e400"), ("latency_ms", "nan"),
             ("latency_ms", "99999999999999999999"), ("energy_mj", "-1"), ("energy_mj", "inf"),
             ("kernel", "3.5"), ("kernel", "99999999999999999999"), ("cin", "0"), ("hw", "-28"), ("stride", "x"),
             ("cout", "1e3"), ("precision", "fp16"), ("latency_iqr_ms", "-1")]


@pytest.mark.parametrize("column,value", BAD_CELLS)
def test_bad_entry_values_are_table_errors(tmp_path, tiny_table_files, column, value):
    entries = _edit_cell(tiny_table_files["entries.csv"], column, value)
    with pytest.raises(TableError):
        LatencyTable.load(write(tmp_path / "t", tiny_table_files, entries=entries))


def test_metadata_that_is_not_json_or_too_deep(tmp_path, tiny_table_files):
    folder = write(tmp_path / "t", tiny_table_files)
    for text in ("{", "[" * 100_000, "1" * 5000, "\xff"):
        (folder / "metadata.json").write_text(text, encoding="latin-1")
        with pytest.raises(TableError):
            LatencyTable.load(folder)
