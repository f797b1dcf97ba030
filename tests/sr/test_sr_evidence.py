"""scripts/sr_evidence.py: the equal-latency comparison maths and the resumable train stage (no training here)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("evidence_sr", REPO / "scripts" / "sr_evidence.py")
sr_evidence = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = sr_evidence
spec.loader.exec_module(sr_evidence)


def test_baseline_psnr_is_read_at_the_joint_models_measured_latency():
    ladder = pd.DataFrame({"latency_ms": [0.3, 0.1, 0.2], "psnr": [21.0, 19.0, 20.0]})
    assert sr_evidence.psnr_at(ladder, 0.15) == (pytest.approx(19.5), True)
    assert sr_evidence.psnr_at(ladder, 0.05) == (pytest.approx(19.0), False)  # outside: nearest point, flagged


def test_compare_gives_reductions_against_the_cheaper_dense_deployment():
    nan = float("nan")
    rows = [{"seed": 0, "config": "dense", "method": "dense", "psnr": 22.0, "psnr_int8": 21.0, "macs": 100.0,
             "latency_fp32_ms": 0.5, "latency_int8_ms": 0.4},
            {"seed": 0, "config": "joint", "method": "joint", "psnr": 21.78, "psnr_int8": nan, "macs": 10.0,
             "latency_fp32_ms": 0.2, "latency_int8_ms": nan},
            {"seed": 0, "config": "width_w8", "method": "width", "psnr": 21.0, "psnr_int8": 20.0, "macs": 8.0,
             "latency_fp32_ms": 0.1, "latency_int8_ms": 0.15},
            {"seed": 0, "config": "width_w16", "method": "width", "psnr": 21.9, "psnr_int8": 21.5, "macs": 20.0,
             "latency_fp32_ms": 0.35, "latency_int8_ms": 0.3}]
    frame = sr_evidence.deployed(pd.DataFrame(rows)).set_index("config")
    assert frame["deployed"].to_dict() == {"dense": "int8 PTQ", "joint": "as searched", "width_w8": "fp32",
                                           "width_w16": "int8 PTQ"}
    assert frame.loc["dense", "psnr"] == 22.0 and frame.loc["width_w16", "psnr"] == 21.5  # dense keeps fp32 PSNR
    out = sr_evidence.compare(frame.reset_index()).set_index("method")
    assert out.loc["joint", "latency_reduction_pct"] == pytest.approx(50.0)  # vs int8 dense, 0.4 ms
    assert out.loc["joint", "macs_reduction_pct"] == pytest.approx(90.0)
    assert out.loc["joint", "psnr_drop_pct"] == pytest.approx(1.0)
    assert out.loc["width", "psnr"] == pytest.approx(21.25) and out.loc["width", "macs_reduction_pct"] == pytest.approx(86.0)
    assert bool(out.loc["width", "bracketed"]) and "magnitude" not in out.index


def test_train_config_skips_finished_configs_and_restarts_partial_ones(tmp_path):
    args = sr_evidence.parse(["--out", str(tmp_path), "--tiny"])
    t = type("T", (), {"args": args})()
    finished = tmp_path / "seed0" / "dense"
    finished.mkdir(parents=True)
    (finished / "result.json").write_text(json.dumps({"psnr": 20.0}))
    assert sr_evidence.train_config(t, 0, "dense", lambda folder: pytest.fail("retrained")) == {"psnr": 20.0}
    partial = tmp_path / "seed0" / "joint"
    (partial / "run").mkdir(parents=True)
    (partial / "run" / "last.pt").write_text("killed here")

    def joint(folder: Path) -> dict:
        assert not (folder / "run").exists()  # the killed attempt was cleared
        return {"psnr": 19.0, "macs": 1e6, "predicted_latency_ms": 0.1}

    row = sr_evidence.train_config(t, 0, "joint", joint)
    assert row["method"] == "joint" and json.loads((partial / "result.json").read_text())["psnr"] == 19.0
    assert sr_evidence.train_config(t, 0, "width_w4", lambda folder: 1 / 0) is None
    assert "ZeroDivisionError" in (tmp_path / "seed0" / "width_w4" / "error.txt").read_text()
